"""up, stop, destroy, restart: the commands that make VMs run or not, with live progress."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, TypeVar

import click

from .options import GlobalOptions, progress_option, wait_lock_option

if TYPE_CHECKING:
    from orchestrator import Project
    from orchestrator.api import EventCallback

T = TypeVar("T")


class _Planning(TypedDict):
    """What up and its dry run are planned with."""

    no_recreate: bool
    force_recreate: bool
    remove_orphans: bool
    no_deps: bool
    scale: dict[str, int]


def _scale(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    """``--scale VM=N``, given once per VM."""
    found: dict[str, int] = {}
    for value in values:
        name, equals, count = value.partition("=")
        if not equals or not name or not count.isdigit():
            raise click.BadParameter(f"{value!r} is not VM=N (a number of replicas)")
        if name in found:
            raise click.BadParameter(f"{name} is scaled twice")
        found[name] = int(count)
    return found


def _run(progress: str, work: Callable[[EventCallback], Awaitable[T]]) -> T:
    """Run a command's work under trio, its events shown as ``progress`` asks."""
    from .progress import with_progress
    from .runner import run

    return run(lambda: with_progress(progress, work))


@click.command()
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
@click.option(
    "--no-recreate", is_flag=True, help="Leave running VMs whose definition changed as they are."
)
@click.option(
    "--force-recreate",
    is_flag=True,
    help="Replace the VMs' disks (all, or those named), changed or not.",
)
@click.option("--remove-orphans", is_flag=True, help="Remove VMs no longer in the file.")
@click.option("--no-deps", is_flag=True, help="Start only the VMs named, not their dependencies.")
@click.option(
    "--scale",
    multiple=True,
    metavar="VM=N",
    callback=_scale,
    help="Run N replicas of a replica set (this time: the file is not changed); those above N"
    " are removed. Warm VMs' new replicas start from the kept template.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be done, do nothing.")
@click.option(
    "--attach",
    "attach",
    multiple=True,
    metavar="VM",
    help="Attached: follow the consoles of these VMs only [default: all it starts].",
)
@click.option(
    "--no-attach", "no_attach", multiple=True, metavar="VM", help="Attached: not this VM's console."
)
@click.option("--no-log-prefix", is_flag=True, help="Attached: console lines without 'vm | '.")
@click.option("--no-color", is_flag=True, help="Attached: prefixes without colours.")
@progress_option
@wait_lock_option
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
    scale: dict[str, int],
    dry_run: bool,
    attach: tuple[str, ...],
    no_attach: tuple[str, ...],
    no_log_prefix: bool,
    no_color: bool,
    progress: str,
    wait_lock: bool,
) -> None:
    """Create and start the VMs (all, or those named and what they depend on).

    A VM whose definition changed is restarted on its disk; what needs a new disk (image,
    user, cloud_init, provision) is said and waits for --force-recreate. Without
    -d, waits until every VM is ready, then follows their serial consoles, each line
    prefixed with its VM's name, until Ctrl-C, which stops the VMs gracefully (a second
    Ctrl-C: without grace).
    """
    if no_recreate and force_recreate:
        raise click.UsageError("--no-recreate and --force-recreate exclude each other")
    if detach and (attach or no_attach or no_log_prefix or no_color):
        raise click.UsageError(
            "--attach, --no-attach, --no-log-prefix and --no-color are for an attached up"
            " (without -d)"
        )
    project = opts.load()
    from orchestrator import api

    from .runner import run

    planning = _Planning(
        no_recreate=no_recreate,
        force_recreate=force_recreate,
        remove_orphans=remove_orphans,
        no_deps=no_deps,
        scale=scale,
    )
    if dry_run:
        click.echo(api.format_plan(run(lambda: api.plan(project, *vms, **planning))), nl=False)
        return

    def bring_up(on_event: EventCallback) -> Awaitable[object]:
        return api.up(
            project,
            *vms,
            wait=wait_ready or not detach,
            ready_timeout=wait_timeout,
            parallel=parallel,
            wait_lock=wait_lock,
            on_event=on_event,
            **planning,
        )

    if detach:
        _run(progress, bring_up)
    else:
        consoles = _Consoles(attach, no_attach, prefix=not no_log_prefix, colour=not no_color)
        run(
            lambda: _up_attached(
                project, vms, progress, wait_lock, bring_up, no_deps, scale, consoles
            )
        )


@dataclass(frozen=True)
class _Consoles:
    """Which consoles an attached `up` follows, and how its lines look."""

    attach: tuple[str, ...]
    no_attach: tuple[str, ...]
    prefix: bool
    colour: bool

    def chosen(self, project: Project, targets: list[str]) -> list[str]:
        """The VMs of ``targets`` (in their order) whose consoles are followed."""
        from orchestrator import api

        def named(names: tuple[str, ...]) -> set[str]:
            return set(api.selection(project, *names, no_deps=True)) if names else set()

        wanted = named(self.attach) if self.attach else set(targets)
        unwanted = named(self.no_attach)
        return [n for n in targets if n in wanted and n not in unwanted]


async def _up_attached(
    project: Project,
    vms: tuple[str, ...],
    progress: str,
    wait_lock: bool,
    bring_up: Callable[[EventCallback], Awaitable[object]],
    no_deps: bool,
    scale: dict[str, int],
    consoles: _Consoles,
) -> None:
    """Up, then attached until Ctrl-C (or SIGTERM), following the VMs' consoles from where
    they were when `up` began. Ctrl-C at any moment, while the VMs start or once they run,
    stops what this `up` is about, gracefully; a second one stops them without grace. When
    `up` fails, what it started stays, as with -d."""
    import trio

    from orchestrator import api

    from .progress import with_progress
    from .runner import ended_as_asked, interrupted

    targets = api.selection(project, *vms, no_deps=no_deps, scale=scale) if vms else []
    followed = consoles.chosen(project, targets or api.selection(project, scale=scale))
    since = api.console_ends(project, followed)
    terminal = sys.stdout.isatty()
    colour = consoles.colour and terminal and not os.environ.get("NO_COLOR")
    try:
        await with_progress(progress, bring_up)
        click.echo(f"qemu-compose: {project.name} is up; Ctrl-C stops it", err=True)
        await api.consoles(project, since, prefix=consoles.prefix, colour=colour, terminal=terminal)
        await trio.sleep_forever()  # (nothing to follow)
    finally:
        if interrupted():  # not when up failed: what it started stays, as with -d
            with trio.CancelScope(shield=True):
                await _stop_attached(project, targets, progress, wait_lock)
            ended_as_asked()  # stopped cleanly: exit 130, no error


async def _stop_attached(
    project: Project, targets: list[str], progress: str, wait_lock: bool
) -> None:
    """Stop the VMs (all, or ``targets``) gracefully; a second Ctrl-C or SIGTERM cuts the
    grace period short: QEMU quits at once."""
    import trio

    from orchestrator import api

    from .progress import with_progress
    from .runner import another_signal

    def stopping(timeout: float | None) -> Callable[[EventCallback], Awaitable[object]]:
        return lambda on_event: api.stop(
            project, *targets, timeout=timeout, wait_lock=wait_lock, on_event=on_event
        )

    click.echo("qemu-compose: stopping (Ctrl-C again: without grace)", err=True)
    graceful = trio.CancelScope()

    async def second_signal() -> None:
        await another_signal()
        graceful.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second_signal)
        with graceful:
            await with_progress(progress, stopping(None))
        if graceful.cancelled_caught:
            click.echo("qemu-compose: stopping without grace", err=True)
            await with_progress(progress, stopping(0))
        nursery.cancel_scope.cancel()


@click.command()
@click.argument("vms", nargs=-1)
@click.option(
    "-t",
    "--timeout",
    type=float,
    help="Seconds of grace for every VM [default: its stop_grace_period].",
)
@progress_option
@wait_lock_option
@click.pass_obj
def stop(
    opts: GlobalOptions, vms: tuple[str, ...], timeout: float | None, progress: str, wait_lock: bool
) -> None:
    """Stop VMs gracefully: power button, grace period, then off. Disks are kept."""
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.stop(
            project, *vms, timeout=timeout, wait_lock=wait_lock, on_event=on_event
        ),
    )


@click.command()
@click.argument("vms", nargs=-1)
@click.option(
    "-v", "--volumes", is_flag=True, help="Also delete the named volumes (their data is lost)."
)
@progress_option
@wait_lock_option
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
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.destroy(
            project, *vms, volumes=volumes, wait_lock=wait_lock, on_event=on_event
        ),
    )


@click.command()
@click.argument("vms", nargs=-1)
@click.option(
    "-t", "--timeout", type=float, help="Seconds of grace to stop [default: stop_grace_period]."
)
@click.option("--wait", "wait_ready", is_flag=True, help="Wait until the VMs are ready again.")
@progress_option
@wait_lock_option
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
    from orchestrator import api

    restarted = _run(
        progress,
        lambda on_event: api.restart(
            project, *vms, timeout=timeout, wait=wait_ready, wait_lock=wait_lock, on_event=on_event
        ),
    )
    if not restarted:
        click.echo("qemu-compose: no VM is created; nothing to restart", err=True)
