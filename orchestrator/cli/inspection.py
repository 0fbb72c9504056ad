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

    from orchestrator import UsageError, api

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
    from orchestrator import api

    from .runner import run

    project = opts.load()

    def show(record: api.EventRecord) -> None:
        sys.stdout.write(api.format_record(record, as_json=as_json) + "\n")
        sys.stdout.flush()

    if no_follow:
        for record in api.records(project, *vms, since=since):
            show(record)
        return

    async def follow() -> None:
        async with api.events(project, *vms, since=since) as records:
            async for record in records:
                show(record)

    run(follow)


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

    from .runner import run

    info = run(lambda: api.inspect(project, vm))
    if fmt == "json":
        import json

        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(api.format_inspect(info), nl=False)


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
    from orchestrator import api

    from .runner import run

    project = opts.load()
    sources = ("console", "journal") if source == "all" else (source,)
    run(lambda: api.logs(project, vm, follow=follow, lines=lines, sources=sources))


@click.command()
@click.argument("vm")
@click.pass_obj
def console(opts: GlobalOptions, vm: str) -> None:
    """Attach the terminal to VM's serial console; Ctrl+] detaches.

    Log in as the VM's user with the console password that `inspect VM` shows.
    """
    from orchestrator import api

    why = api.console(opts.load(), vm)
    click.echo(f"\r\nqemu-compose: {why}", err=True)
