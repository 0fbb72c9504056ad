"""pause, unpause, kill: faults made on purpose, as docker compose names them."""

from __future__ import annotations

import click

from .lifecycle import _run
from .options import GlobalOptions, progress_option, wait_lock_option


@click.command()
@click.argument("vms", nargs=-1)
@progress_option
@wait_lock_option
@click.pass_obj
def pause(opts: GlobalOptions, vms: tuple[str, ...], progress: str, wait_lock: bool) -> None:
    """Freeze the guests of running VMs (all, or those named): QMP stop.

    The guest stops where it is, its clock and network with it, until `unpause` (or `up`).
    A VM named must run. `ps` shows it paused; `stop` resumes it first, to power it off.
    """
    project = opts.load()
    from orchestrator import api

    _run(
        progress, lambda on_event: api.pause(project, *vms, wait_lock=wait_lock, on_event=on_event)
    )


@click.command()
@click.argument("vms", nargs=-1)
@progress_option
@wait_lock_option
@click.pass_obj
def unpause(opts: GlobalOptions, vms: tuple[str, ...], progress: str, wait_lock: bool) -> None:
    """Let paused guests run again (all, or those named): QMP cont."""
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.unpause(project, *vms, wait_lock=wait_lock, on_event=on_event),
    )


@click.command()
@click.argument("vms", nargs=-1)
@click.option(
    "-s",
    "--signal",
    "signame",
    default="KILL",
    show_default=True,
    help="The signal for QEMU: a name (KILL, TERM, INT, ...) or a number.",
)
@progress_option
@wait_lock_option
@click.pass_obj
def kill(
    opts: GlobalOptions, vms: tuple[str, ...], signame: str, progress: str, wait_lock: bool
) -> None:
    """Send a signal to the QEMU of running VMs (all, or those named), through systemd.

    SIGKILL by default: QEMU ends at once, as in a crash, and the VM's restart policy
    answers as it answers a crash (`restart: on-failure` or `always` start it again on its
    disk); the guest is given no chance to shut down. TERM, INT and HUP make QEMU quit
    cleanly (as a host shutdown), which no restart policy answers.
    """
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.kill(
            project, *vms, signal=signame, wait_lock=wait_lock, on_event=on_event
        ),
    )
