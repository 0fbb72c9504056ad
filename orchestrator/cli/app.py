"""Commands and global options of `qemu-compose`."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from orchestrator.config.project import Project
    from orchestrator.runtime import Settings
    from orchestrator.runtime.events import Reporter

T = TypeVar("T")

DISTRIBUTION = "qemu-compose-vm"


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    file: Path | None
    project_name: str | None
    project_directory: Path | None
    debug: bool

    def load(self) -> Project:
        from orchestrator.config.project import load_project

        return load_project(
            self.file, project_name=self.project_name, project_directory=self.project_directory
        )


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Run 'qemu-compose COMMAND --help' for more on a command.",
)
@click.option(
    "-f",
    "--file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="QEMU_COMPOSE_FILE",
    show_envvar=True,
    help="The compose file [default: qemu-compose.yaml or .yml here or in a parent directory].",
)
@click.option(
    "-p",
    "--project-name",
    envvar="QEMU_COMPOSE_PROJECT_NAME",
    show_envvar=True,
    help="The project name [default: name: in the file, else the directory's name].",
)
@click.option(
    "--project-directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where relative paths point and state lives [default: the compose file's directory].",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar="QEMU_COMPOSE_DEBUG",
    show_envvar=True,
    help="Log every step and show tracebacks.",
)
@click.version_option(None, "--version", "-V", package_name=DISTRIBUTION, prog_name="qemu-compose")
@click.pass_context
def cli(
    ctx: click.Context,
    file: Path | None,
    project_name: str | None,
    project_directory: Path | None,
    debug: bool,
) -> None:
    """Define QEMU virtual machines, their networks and volumes in one YAML file, and run them."""
    ctx.obj = GlobalOptions(file, project_name, project_directory, debug)


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Output format.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only validate: print nothing, exit 0 if valid.")
@click.option(
    "--services", "--vms", "list_vms", is_flag=True, help="Print the VM names, one a line."
)
@click.option("--networks", "list_networks", is_flag=True, help="Print the network names.")
@click.option("--volumes", "list_volumes", is_flag=True, help="Print the named volume names.")
@click.pass_obj
def config(
    opts: GlobalOptions,
    fmt: str,
    quiet: bool,
    list_vms: bool,
    list_networks: bool,
    list_volumes: bool,
) -> None:
    """Validate the compose file and print it fully resolved.

    Variables are interpolated, defaults filled in, short forms expanded and relative paths
    made absolute. Problems are reported all at once, each with file:line:column and the
    field; the exit status is then 2.
    """
    if sum((list_vms, list_networks, list_volumes)) > 1:
        raise click.UsageError("give only one of --services, --networks and --volumes")
    project = opts.load()
    if quiet:
        return
    if list_vms or list_networks or list_volumes:
        model = project.model
        table = model.vms if list_vms else model.networks if list_networks else model.volumes
        for name in table:
            click.echo(name)
        return
    from orchestrator.config.render import render_json, render_yaml

    sys.stdout.write(render_json(project) if fmt == "json" else render_yaml(project))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  qemu-compose completion bash > ~/.local/share/bash-completion/completions/qemu-compose
    zsh:   qemu-compose completion zsh > "${fpath[1]}/_qemu-compose"
    fish:  qemu-compose completion fish > ~/.config/fish/completions/qemu-compose.fish
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the choice above lists only shells click knows
    click.echo(completer(cli, {}, "qemu-compose", "_QEMU_COMPOSE_COMPLETE").source())


# -- the runtime's commands -----------------------------------------------------------------------

_progress = click.option(
    "--progress",
    type=click.Choice(["auto", "tty", "plain", "json", "quiet"]),
    default="auto",
    show_default=True,
    help="How to show progress: a live table, plain lines, JSON lines, or nothing.",
)
_wait_lock = click.option(
    "--wait-lock", is_flag=True, help="Wait for another qemu-compose on this project to finish."
)


def _settings(services: tuple[str, ...], **kwargs: object) -> Settings:
    """Settings of a command; QEMU_COMPOSE_JOURNAL_DIR names journald's files where the
    user manager's journal is not where journalctl --user looks (a private manager)."""
    import os

    from orchestrator.runtime import Settings

    journal = os.environ.get("QEMU_COMPOSE_JOURNAL_DIR")
    kwargs.setdefault("journal_dir", Path(journal) if journal else None)
    return Settings(services=services, **kwargs)  # type: ignore[arg-type]


async def _with_progress(mode: str, work: Callable[[Reporter], Awaitable[T]]) -> T:
    """Run ``work`` with a renderer consuming its events; the renderer ends after it."""
    import trio

    from orchestrator.runtime.events import Event, Reporter, renderer_for

    send, receive = trio.open_memory_channel[Event](10_000)
    render = renderer_for(mode)
    result: list[T] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(render, receive)
        async with send:
            result.append(await work(Reporter(send)))
    return result[0]


@cli.command()
@click.argument("vms", nargs=-1, shell_complete=None)
@click.option(
    "-d", "--detach", is_flag=True, help="Return once the VMs run (with --wait: once ready)."
)
@click.option("--wait", "wait_ready", is_flag=True, help="With -d: wait until every VM is ready.")
@click.option(
    "--wait-timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="Seconds a VM may take to be ready.",
)
@click.option("--parallel", type=click.IntRange(min=1), help="Start at most N VMs at once.")
@click.option("--no-recreate", is_flag=True, help="Keep VMs whose configuration changed.")
@click.option("--force-recreate", is_flag=True, help="Recreate VMs even when unchanged.")
@click.option("--remove-orphans", is_flag=True, help="Remove VMs no longer in the file.")
@click.option("--no-deps", is_flag=True, help="Start only the VMs named, not their dependencies.")
@click.option("--dry-run", is_flag=True, help="Print what would be done, do nothing.")
@_progress
@_wait_lock
@click.pass_obj
def up(
    opts: GlobalOptions,
    vms: tuple[str, ...],
    detach: bool,
    wait_ready: bool,
    wait_timeout: float,
    parallel: int | None,
    no_recreate: bool,
    force_recreate: bool,
    remove_orphans: bool,
    no_deps: bool,
    dry_run: bool,
    progress: str,
    wait_lock: bool,
) -> None:
    """Create and start the VMs (all, or those named and what they depend on).

    Without -d, waits until every VM is ready, then stays attached until Ctrl-C, which
    stops the VMs gracefully.
    """
    if no_recreate and force_recreate:
        raise click.UsageError("--no-recreate and --force-recreate exclude each other")
    project = opts.load()
    settings = _settings(
        vms,
        wait=wait_ready or not detach,
        ready_timeout=wait_timeout,
        parallel=parallel,
        no_recreate=no_recreate,
        force_recreate=force_recreate,
        remove_orphans=remove_orphans,
        no_deps=no_deps,
        wait_lock=wait_lock,
    )
    from orchestrator import runtime
    from orchestrator.runtime.events import Reporter
    from orchestrator.runtime.plan import render_plan

    from .runner import run

    if dry_run:
        result = run(lambda: runtime.up(project, settings, Reporter(), dry_run=True))
        click.echo(render_plan(result.actions), nl=False)
        return

    async def attached() -> None:
        import trio

        await _with_progress(progress, lambda report: runtime.up(project, settings, report))
        click.echo(f"qemu-compose: {project.name} is up; Ctrl-C stops it", err=True)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                click.echo("qemu-compose: stopping", err=True)
                await _with_progress(
                    progress, lambda report: runtime.stop(project, settings, report)
                )

    if detach:
        run(lambda: _with_progress(progress, lambda report: runtime.up(project, settings, report)))
    else:
        run(attached)


@cli.command()
@click.argument("vms", nargs=-1)
@click.option(
    "-t",
    "--timeout",
    type=float,
    help="Seconds of grace for every VM [default: its stop_grace_period].",
)
@_progress
@_wait_lock
@click.pass_obj
def stop(
    opts: GlobalOptions, vms: tuple[str, ...], timeout: float | None, progress: str, wait_lock: bool
) -> None:
    """Stop VMs gracefully: power button, grace period, then off. Disks are kept."""
    project = opts.load()
    settings = _settings(vms, wait_lock=wait_lock)
    from orchestrator import runtime

    from .runner import run

    run(
        lambda: _with_progress(
            progress, lambda r: runtime.stop(project, settings, r, timeout=timeout)
        )
    )


@cli.command()
@click.argument("vms", nargs=-1)
@click.option(
    "-v", "--volumes", is_flag=True, help="Also delete the named volumes (their data is lost)."
)
@_progress
@_wait_lock
@click.pass_obj
def destroy(
    opts: GlobalOptions, vms: tuple[str, ...], volumes: bool, progress: str, wait_lock: bool
) -> None:
    """Stop VMs and remove their disks and units; networks nobody uses go too.

    Named volumes are kept unless --volumes is given.
    """
    if volumes and vms:
        raise click.UsageError("--volumes removes the project's volumes: give no VM names with it")
    project = opts.load()
    settings = _settings(vms, wait_lock=wait_lock)
    from orchestrator import runtime

    from .runner import run

    run(
        lambda: _with_progress(
            progress, lambda r: runtime.destroy(project, settings, r, volumes=volumes)
        )
    )


@cli.command()
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
    settings = _settings(vms)
    from orchestrator import runtime

    from .runner import run

    rows = run(lambda: runtime.ps(project, settings, all_vms=all_vms or bool(vms) or fmt == "json"))
    if fmt == "json":
        import msgspec

        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return
    header = (
        f"{'NAME':<20} {'STATUS':<12} {'ADDRESSES':<24} {'SSH':<6} {'CPU':<4} {'MEMORY':<7} "
        f"{'DISK':<8} UNIT"
    )
    click.echo(header)
    for row in rows:
        addresses = ",".join(row.addresses.values()) or "-"
        click.echo(
            f"{row.name:<20} {row.status:<12} {addresses:<24} {row.ssh_port or '-'!s:<6} "
            f"{row.cpu or '-'!s:<4} {row.memory or '-'!s:<7} {row.disk or '-':<8} {row.unit}"
        )


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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

    from orchestrator.errors import UsageError
    from orchestrator.runtime.query import ssh_argv
    from orchestrator.state.files import StateDir

    project = opts.load()
    state = StateDir(project.state_dir).read_state(project.name)
    if vm not in state.vms:
        raise UsageError(f"VM {vm!r} is not created; run `qemu-compose up {vm}` first")
    argv = ssh_argv(project, vm, state, list(command))
    binary = shutil.which("ssh")
    if binary is None:
        raise UsageError("the ssh client is not installed (apt-get install openssh-client)")
    os.execv(binary, argv)


def _instances_named(project: Project, names: tuple[str, ...]) -> list[str]:
    """The instances NAMES mean (a VM, or every replica of one); an unknown name is an error."""
    from orchestrator.config.topology import select

    return [i.name for i in select(project.model, names, project=project.name)]


def _one_instance(project: Project, vm: str) -> None:
    """VM names one instance: not a definition with replicas, not an unknown name."""
    from orchestrator.config.topology import select_one

    select_one(project.model, vm, project=project.name)


@cli.command()
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
    from orchestrator.state.paths import ProjectPaths
    from orchestrator.supervisor.watch import parse_since
    from orchestrator.supervisor.watch import watch as follow_log

    from .runner import run

    project = opts.load()
    names = _instances_named(project, vms)
    start = parse_since(since)
    if no_follow and start.from_end:
        start = parse_since("all")
    events_dir = ProjectPaths(project.state_dir, project.name).events_dir
    run(lambda: follow_log(events_dir, names, start, as_json=as_json, follow=not no_follow))


@cli.command()
@click.argument("vm")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.pass_obj
def inspect(opts: GlobalOptions, vm: str, fmt: str) -> None:
    """Show everything about VM: status, configuration, disk, networks, volumes, how to reach
    it (SSH, console with its password, logs)."""
    project = opts.load()
    from orchestrator.runtime.inspection import inspect as gather
    from orchestrator.runtime.inspection import render_inspect

    from .runner import run

    info = run(lambda: gather(project, _settings((vm,)), vm))
    if fmt == "json":
        import json

        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(render_inspect(info), nl=False)


@cli.command()
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
    project = opts.load()
    _one_instance(project, vm)
    from orchestrator.guest.logs import show_logs
    from orchestrator.state.paths import ProjectPaths, vm_unit

    from .runner import run

    settings = _settings((vm,))
    sources = frozenset({"console", "journal"} if source == "all" else {source})
    run(
        lambda: show_logs(
            vm_unit(project.name, vm),
            ProjectPaths(project.state_dir, project.name).vm(vm).console_log,
            user=settings.bus != "system",
            journal_dir=settings.journal_dir,
            follow=follow,
            lines=lines,
            sources=sources,
        )
    )


@cli.command()
@click.argument("vm")
@click.pass_obj
def console(opts: GlobalOptions, vm: str) -> None:
    """Attach the terminal to VM's serial console; Ctrl+] detaches.

    Log in as the VM's user with the console password that `inspect VM` shows.
    """
    project = opts.load()
    _one_instance(project, vm)
    from orchestrator.guest.console import attach
    from orchestrator.state.paths import ProjectPaths

    paths = ProjectPaths(project.state_dir, project.name).vm(vm)
    why = attach(paths.console_socket, vm)
    click.echo(f"\r\nqemu-compose: {why}", err=True)


@cli.command()
@click.argument("vms", nargs=-1)
@click.option(
    "-t", "--timeout", type=float, help="Seconds of grace to stop [default: stop_grace_period]."
)
@click.option("--wait", "wait_ready", is_flag=True, help="Wait until the VMs are ready again.")
@_progress
@_wait_lock
@click.pass_obj
def restart(
    opts: GlobalOptions,
    vms: tuple[str, ...],
    timeout: float | None,
    wait_ready: bool,
    progress: str,
    wait_lock: bool,
) -> None:
    """Stop created VMs gracefully and start them again, with their disks (all, or those named).

    Nothing is created or recreated, and what they depend on is left alone. The compose file
    is read again: changes that need no new disk (cpu, memory, ports...) take effect; the
    VM keeps its recorded configuration, so that `up` still recreates it when the file asks
    for more.
    """
    project = opts.load()
    named = _instances_named(project, vms)
    from orchestrator import runtime
    from orchestrator.errors import UsageError
    from orchestrator.state.files import StateDir

    from .runner import run

    state_dir = StateDir(project.state_dir)
    created = set(state_dir.read_state(project.name).vms) if state_dir.path.exists() else set()
    if named:
        missing = [n for n in named if n not in created]
        if missing:
            raise UsageError(
                f"not created: {', '.join(missing)} (`qemu-compose up {' '.join(missing)}`)"
            )
    else:
        from orchestrator.config.topology import instances

        named = [i.name for i in instances(project.model) if i.name in created]
        if not named:
            click.echo("qemu-compose: no VM is created; nothing to restart", err=True)
            return
    names = tuple(named)
    stop_settings = _settings(names, wait_lock=wait_lock)
    up_settings = _settings(
        names,
        wait=wait_ready,
        no_recreate=True,
        no_deps=True,
        keep_config=True,
        wait_lock=wait_lock,
    )

    async def both() -> None:
        await _with_progress(
            progress, lambda r: runtime.stop(project, stop_settings, r, timeout=timeout)
        )
        await _with_progress(progress, lambda r: runtime.up(project, up_settings, r))

    run(both)


@cli.group()
def network() -> None:
    """List and remove the project's networks."""


@network.command("ls")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_obj
def network_ls(opts: GlobalOptions, fmt: str) -> None:
    """List the networks: subnet, bridge, DHCP/DNS server and the VMs on each."""
    project = opts.load()
    from orchestrator import runtime

    from .runner import run

    rows = run(lambda: runtime.networks(project, _settings(())))
    if fmt == "json":
        import msgspec

        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return
    click.echo(f"{'NAME':<16} {'SUBNET':<18} {'BRIDGE':<16} {'LINK':<8} {'DHCP':<10} VMS")
    for row in rows:
        link = {True: "up", False: "absent", None: "?"}[row.bridge_exists]
        name = row.name if row.in_file else f"{row.name} (orphan)"
        click.echo(
            f"{name:<16} {row.subnet or '-':<18} {row.bridge:<16} {link:<8} {row.dhcp:<10} "
            f"{','.join(row.vms) or '-'}"
        )


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@_progress
@_wait_lock
@click.pass_obj
def network_rm(opts: GlobalOptions, names: tuple[str, ...], progress: str, wait_lock: bool) -> None:
    """Remove networks no VM uses: their bridge, DHCP/DNS server and subnet."""
    project = opts.load()
    from orchestrator import runtime

    from .runner import run

    settings = _settings((), wait_lock=wait_lock)
    run(
        lambda: _with_progress(
            progress, lambda r: runtime.remove_networks(project, settings, r, list(names))
        )
    )


@cli.command()
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--bus", default="user", show_default=True, help="user, system, or a D-Bus address.")
def doctor(fmt: str, bus: str) -> None:
    """Check that this machine can run VMs: systemd, QEMU, KVM, networking tools, disk space.

    Every problem comes with the command that fixes it. Exits 1 when something required is
    missing; KVM, bridge networking and the other optional parts only warn.
    """
    from orchestrator.runtime.doctor import evaluate, gather, render

    from .runner import run

    checks = evaluate(run(lambda: gather(bus)))
    if fmt == "json":
        import dataclasses
        import json

        click.echo(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
    else:
        click.echo(render(checks), nl=False)
    if any(c.verdict == "fail" and c.required for c in checks):
        sys.exit(1)


@cli.command()
@click.argument("urls", nargs=-1)
@click.option("--force", is_flag=True, help="Download again even when cached.")
@click.option(
    "--progress",
    type=click.Choice(["auto", "tty", "plain", "quiet"]),
    default="auto",
    show_default=True,
    help="Progress bars, plain lines, or nothing.",
)
@click.pass_obj
def pull(opts: GlobalOptions, urls: tuple[str, ...], force: bool, progress: str) -> None:
    """Download the compose file's images (or the URLs given) into the cache, in parallel.

    Downloads resume where they stopped and are checked against the file's checksums.
    """
    from orchestrator.guest.pull import Show, plain_lines
    from orchestrator.guest.pull import pull as pull_all

    from .runner import run

    if urls:
        sources: dict[str, str | None] = dict.fromkeys(urls)
    else:
        model = opts.load().model
        sources = {
            vm.image.source: vm.image.checksum for vm in model.vms.values() if vm.image is not None
        }
        if not sources:
            click.echo("qemu-compose: no VM of the file has an image to pull", err=True)
            return
    if progress == "auto":
        progress = "tty" if sys.stderr.isatty() else "plain"

    def work(show: Show) -> dict[str, str]:
        return run(lambda: pull_all(sources, force=force, show=show))

    if progress == "tty":
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[status]}"),
            transient=False,
        )
        tasks: dict[str, object] = {}

        def show_bar(url: str, done: int, total: int | None, status: str, detail: str) -> None:
            if url not in tasks:
                name = url.rsplit("/", 1)[-1] or url
                tasks[url] = bars.add_task(name, total=total, status="")
            bars.update(
                tasks[url],  # type: ignore[arg-type]
                completed=done,
                total=total,
                status="" if status == "working" else status,
            )

        with bars:
            failures = work(show_bar)
    elif progress == "plain":
        failures = work(plain_lines())
    else:
        failures = work(lambda *_: None)
    if failures:
        from orchestrator.guest.images import ImageError

        lines = "".join(f"\n  {url}: {why}" for url, why in failures.items())
        raise ImageError(f"{len(failures)} of {len(sources)} images could not be pulled:{lines}")


@cli.group()
def image() -> None:
    """List and remove the cached base images."""


@image.command("ls")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def image_ls(fmt: str) -> None:
    """List the cached images: name, size, format, source URL, last use, VMs built on them."""
    from orchestrator.guest.images import UNKNOWN_USERS, list_images

    rows = list_images()
    if fmt == "json":
        import msgspec

        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return
    import time

    click.echo(f"{'NAME':<44} {'SIZE':>9} {'FORMAT':<7} {'LAST USED':<17} {'VMS':>3} SOURCE")
    for row in rows:
        used = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(row.last_used)) if row.last_used else "-"
        )
        size = f"{row.size / (1 << 20):.1f}M"
        vms = "?" if row.in_use_by == [UNKNOWN_USERS] else str(len(row.in_use_by))
        click.echo(
            f"{row.name:<44} {size:>9} {row.format:<7} {used:<17} {vms:>3} {row.source or '-'}"
        )


@image.command("rm")
@click.argument("images", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Also when VM disks are built on it (breaks them).")
def image_rm(images: tuple[str, ...], force: bool) -> None:
    """Remove cached images, by name (as `image ls` shows) or URL."""
    from orchestrator.guest.images import find_image, remove_image

    for key in images:
        info = find_image(key)
        remove_image(info, force=force)
        click.echo(f"removed {info.name}")


@image.command("prune")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_obj
def image_prune(opts: GlobalOptions, dry_run: bool) -> None:
    """Remove the cached images no VM disk is built on.

    Images the compose file here names are kept too (when there is one).
    """
    from orchestrator.errors import ProjectNotFoundError
    from orchestrator.guest.images import list_images, prune

    keep: set[str] = set()
    try:
        model = opts.load().model
        keep = {vm.image.source for vm in model.vms.values() if vm.image is not None}
    except ProjectNotFoundError:
        pass
    if dry_run:
        for info in list_images():
            if not info.in_use_by and info.source not in keep:
                click.echo(f"would remove {info.name}")
        return
    removed = prune(keep=keep)
    for info in removed:
        click.echo(f"removed {info.name} ({info.size / (1 << 20):.1f}M)")
    if not removed:
        click.echo("nothing to remove")
