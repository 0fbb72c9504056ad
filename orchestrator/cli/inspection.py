"""ps, inspect, logs, console, ssh, watch: looking at VMs and getting into them."""

from __future__ import annotations

import sys

import click

from .options import GlobalOptions


@click.command()
@click.argument("vms", nargs=-1)
@click.option(
    "-a", "--all", "all_vms", is_flag=True, help="Also VMs that are stopped or not created."
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_obj
def ps(opts: GlobalOptions, vms: tuple[str, ...], all_vms: bool, fmt: str) -> None:
    """List the VMs with their status, addresses, size and unit."""
    project = opts.load()
    from orchestrator import api

    from .runner import run
    from .tables import json_lines, vm_table

    every = all_vms or bool(vms) or fmt == "json"
    rows = run(lambda: api.ps(project, *vms, all_vms=every))
    sys.stdout.write(json_lines(rows) if fmt == "json" else vm_table(rows))


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("vm")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def ssh(opts: GlobalOptions, vm: str, command: tuple[str, ...]) -> None:
    """Log in to VM with the project's key, or run COMMAND there.

    The VM's host key is recorded on first contact (in .qemu-compose/ssh/known_hosts) and
    checked on every later one.
    """
    import os
    import shutil

    from orchestrator import api
    from orchestrator.errors import UsageError

    argv = api.ssh_argv(opts.load(), vm, command)
    binary = shutil.which("ssh")
    if binary is None:
        raise UsageError("the ssh client is not installed (apt-get install openssh-client)")
    os.execv(binary, argv)


@click.command()
@click.argument("vms", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line (see README).")
@click.option(
    "--since",
    metavar="WHEN",
    help="Replay from WHEN: 'all', '#N' (event N), a duration (10m) or a time "
    "(2026-11-27T10:00:00, or epoch seconds). [default: only new events]",
)
@click.option("--no-follow", is_flag=True, help="Print the events so far and exit.")
@click.pass_obj
def watch(
    opts: GlobalOptions, vms: tuple[str, ...], as_json: bool, since: str | None, no_follow: bool
) -> None:
    """Stream what the VMs do: QMP events, unit states, steps, probes, health, restarts.

    Any number of watchers may run at once; events are kept in the project's event log
    (.qemu-compose/events/) whether anyone watches or not, so --since can replay them.

    \b
    qemu-compose watch                    # new events of every VM, until Ctrl-C
    qemu-compose watch web --since 10m    # web's events of the last ten minutes, then new ones
    qemu-compose watch --json --since all --no-follow | jq .event
    """
    from orchestrator.config.topology import select
    from orchestrator.state.paths import ProjectPaths
    from orchestrator.supervisor.watch import parse_since
    from orchestrator.supervisor.watch import watch as follow_log

    from .runner import run

    project = opts.load()
    names = [i.name for i in select(project.model, vms, project=project.name)]
    start = parse_since(since)
    if no_follow and start.from_end:
        start = parse_since("all")
    events_dir = ProjectPaths(project.state_dir, project.name).events_dir
    run(lambda: follow_log(events_dir, names, start, as_json=as_json, follow=not no_follow))


@click.command()
@click.argument("vm")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.pass_obj
def inspect(opts: GlobalOptions, vm: str, fmt: str) -> None:
    """Show everything about VM: status, configuration, disk, networks, volumes, how to reach
    it (SSH, console with its password, logs)."""
    project = opts.load()
    from orchestrator import api
    from orchestrator.runtime.inspection import render_inspect

    from .runner import run

    info = run(lambda: api.inspect(project, vm))
    if fmt == "json":
        import json

        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(render_inspect(info), nl=False)


@click.command()
@click.argument("vm")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("-n", "--tail", "lines", type=click.IntRange(min=0), help="Only the last N lines.")
@click.option(
    "--source",
    type=click.Choice(["all", "console", "journal"]),
    default="all",
    show_default=True,
    help="The serial console, the unit's journal (marked 'unit |'), or both.",
)
@click.pass_obj
def logs(opts: GlobalOptions, vm: str, follow: bool, lines: int | None, source: str) -> None:
    """Print VM's serial console (everything since it was first powered on) and its unit's
    journal (QEMU's own messages)."""
    from orchestrator.api import journal_dir
    from orchestrator.config.topology import select_one
    from orchestrator.guest.logs import show_logs
    from orchestrator.state.paths import ProjectPaths, vm_unit

    from .runner import run

    project = opts.load()
    select_one(project.model, vm, project=project.name)
    sources = frozenset({"console", "journal"} if source == "all" else {source})
    run(
        lambda: show_logs(
            vm_unit(project.name, vm),
            ProjectPaths(project.state_dir, project.name).vm(vm).console_log,
            user=True,
            journal_dir=journal_dir(),
            follow=follow,
            lines=lines,
            sources=sources,
        )
    )


@click.command()
@click.argument("vm")
@click.pass_obj
def console(opts: GlobalOptions, vm: str) -> None:
    """Attach the terminal to VM's serial console; Ctrl+] detaches.

    Log in as the VM's user with the console password that `inspect VM` shows.
    """
    from orchestrator.config.topology import select_one
    from orchestrator.guest.console import attach
    from orchestrator.state.paths import ProjectPaths

    project = opts.load()
    select_one(project.model, vm, project=project.name)
    paths = ProjectPaths(project.state_dir, project.name).vm(vm)
    why = attach(paths.console_socket, vm)
    click.echo(f"\r\nqemu-compose: {why}", err=True)
