"""pause, unpause, kill (docker compose's names) and `fault ...`: faults made on purpose."""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import click

from .lifecycle import _run
from .options import GlobalOptions, progress_option, wait_lock_option

if TYPE_CHECKING:
    from orchestrator.api import EventCallback


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


@click.group()
def fault() -> None:
    """Faults made on purpose: cut links, partition networks, throttle disks, panic guests.

    Each is recorded in the event log (`watch` shows FAULT and HEAL), shown by `ps` and
    `fault ls`, and undone by `fault clear`, `stop` and `destroy`; a VM its restart policy
    restarts starts without faults. `fault partition` needs what the project's bridge
    networks need (root, or CAP_NET_ADMIN); the others need no privilege.
    """


@fault.command("link")
@click.argument("vm")
@click.argument("args", nargs=-1, metavar="[NETWORK] down|up")
@progress_option
@wait_lock_option
@click.pass_obj
def fault_link(
    opts: GlobalOptions, vm: str, args: tuple[str, ...], progress: str, wait_lock: bool
) -> None:
    """Set VM's links down (the guest sees its carrier lost), or up again.

    NETWORK: only the NIC on that bridge network ("user": the user-mode NIC, through which
    `ssh` and the health checks reach the VM); without it, every NIC of the VM. A VM with
    replicas: each of them.
    """
    if not args or args[-1] not in ("down", "up") or len(args) > 2:
        raise click.UsageError("expected: fault link VM [NETWORK] down|up")
    network = args[0] if len(args) == 2 else None
    project = opts.load()
    from orchestrator import api

    def work(on_event: EventCallback) -> Awaitable[list[str]]:
        faults = api.faults(project, wait_lock=wait_lock, on_event=on_event)
        if args[-1] == "up":
            return faults.link_up(vm, network=network)
        return faults.link_down(vm, network=network)

    _run(progress, work)


@fault.command("net")
@click.argument("vm")
@click.argument("network", required=False)
@click.option("--delay", help="Added to every frame: 100ms, 1s, 250us.")
@click.option("--jitter", help="The delay varies by up to this much, either way (needs --delay).")
@click.option("--loss", help="Frames dropped: 5%, 0.1%.")
@click.option("--duplicate", help="Frames sent twice.")
@click.option("--corrupt", help="Frames with one bit flipped (their checksums notice).")
@click.option("--reorder", help="Frames sent at once, ahead of delayed ones (needs --delay).")
@click.option("--rate", help="What the link carries at most: 1mbit, 512kbit, 1gbit.")
@click.option("--egress", "direction", flag_value="egress", help="Only what VM sends.")
@click.option("--ingress", "direction", flag_value="ingress", help="Only what VM receives.")
@click.option("--clear", "unshape", is_flag=True, help="No longer shaped.")
@progress_option
@wait_lock_option
@click.pass_obj
def fault_net(
    opts: GlobalOptions,
    vm: str,
    network: str | None,
    delay: str | None,
    jitter: str | None,
    loss: str | None,
    duplicate: str | None,
    corrupt: str | None,
    reorder: str | None,
    rate: str | None,
    direction: str | None,
    unshape: bool,
    progress: str,
    wait_lock: bool,
) -> None:
    """Shape VM's traffic as tc netem would: delay, jitter, loss, duplication, corruption,
    reordering, a rate.

    On NETWORK ("user": the user-mode NIC), or on every bridge network of VM; both
    directions unless --egress or --ingress (each gets the whole delay: a ping between two
    VMs, one of them shaped both ways with --delay 100ms, takes 200 ms more). A new shape
    replaces the old one. The frames go through qemu-compose's own shaper (a unit beside
    the VM), which needs no privilege and no kernel module, and carries a few tens of MB/s.
    """
    options = {"delay": delay, "jitter": jitter, "loss": loss, "duplicate": duplicate,
               "corrupt": corrupt, "reorder": reorder, "rate": rate}  # fmt: skip
    given = {k: v for k, v in options.items() if v is not None}
    if unshape == bool(given):
        raise click.UsageError("give how to shape it (--delay, --loss, ...), or --clear")
    project = opts.load()
    from orchestrator import api

    def work(on_event: EventCallback) -> Awaitable[list[str]]:
        faults = api.faults(project, wait_lock=wait_lock, on_event=on_event)
        if unshape:
            return faults.unshape(vm, network=network, direction=direction)
        return faults.net(vm, network=network, direction=direction, **given)

    _run(progress, work)


@fault.command("disk")
@click.argument("vm")
@click.argument("drive", default="root", metavar="[VOLUME|root]")
@click.option(
    "--iops", type=click.IntRange(min=1), help="At most this many I/O operations a second."
)
@click.option("--bps", help="At most this many bytes a second (1M, 512K, ...).")
@click.option(
    "--error",
    "errors",
    type=click.Choice(["read", "write", "all"]),
    help="Its reads, writes or both fail (EIO).",
)
@click.option("--clear", "undo", is_flag=True, help="No throttle and no errors any more.")
@progress_option
@wait_lock_option
@click.pass_obj
def fault_disk(
    opts: GlobalOptions,
    vm: str,
    drive: str,
    iops: int | None,
    bps: str | None,
    errors: str | None,
    undo: bool,
    progress: str,
    wait_lock: bool,
) -> None:
    """Make a disk of VM slow or failing: its root disk, or a named volume it mounts.

    --iops and --bps throttle it (QMP block_set_io_throttle): the guest sees a slow disk.
    --error makes its reads, writes or both fail with EIO (a blkdebug node QEMU puts between
    the disk and its file): the guest sees I/O errors, as from a failing drive.
    """
    if undo == bool(iops or bps is not None or errors):
        raise click.UsageError("give --iops, --bps and/or --error, or --clear")
    if bps is not None and bps.strip() in ("", "0"):
        raise click.BadParameter("at least 1 byte a second (--clear takes the throttle off)",
                                 param_hint="--bps")  # fmt: skip
    project = opts.load()
    from orchestrator import api

    async def work(on_event: EventCallback) -> list[str]:
        faults = api.faults(project, wait_lock=wait_lock, on_event=on_event)
        done: list[str] = []
        if undo or iops or bps is not None:
            done += await faults.throttle(vm, drive=drive, iops=iops or 0, bps=bps or 0)
        if undo or errors:
            done += (
                await faults.disk_errors(vm, drive=drive, kind=errors)
                if errors
                else (await faults.clear_disk_errors(vm, drive=drive))
            )
        return sorted(set(done))

    _run(progress, work)


@fault.command("partition")
@click.argument("groups", nargs=-1, required=True, metavar="GROUP GROUP...")
@click.option("--network", help="Only on this bridge network (default: on all of them).")
@click.option("--one-way", is_flag=True, help="Drop only what the first group sends to the others.")
@progress_option
@wait_lock_option
@click.pass_obj
def fault_partition(
    opts: GlobalOptions,
    groups: tuple[str, ...],
    network: str | None,
    one_way: bool,
    progress: str,
    wait_lock: bool,
) -> None:
    """Drop the traffic between groups of VMs on their bridge networks until `fault heal`.

    Each GROUP is VM names joined by commas: `fault partition a,b c` cuts a and b off from
    c (a and b still reach each other; VMs not named reach everyone). The host (DHCP, DNS)
    and the user-mode NICs are not cut.
    """
    sides = [[n for n in group.split(",") if n] for group in groups]
    if any(not side for side in sides):
        raise click.UsageError("a group is VM names joined by commas, e.g. a,b")
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.faults(project, wait_lock=wait_lock, on_event=on_event).partition(
            *sides, network=network, one_way=one_way
        ),
    )


@fault.command("heal")
@click.option("--network", help="Only the partitions on this network.")
@progress_option
@wait_lock_option
@click.pass_obj
def fault_heal(opts: GlobalOptions, network: str | None, progress: str, wait_lock: bool) -> None:
    """End the partitions (all, or those on one network)."""
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.faults(project, wait_lock=wait_lock, on_event=on_event).heal(network),
    )


@fault.command("panic")
@click.argument("vms", nargs=-1, required=True)
@progress_option
@wait_lock_option
@click.pass_obj
def fault_panic(opts: GlobalOptions, vms: tuple[str, ...], progress: str, wait_lock: bool) -> None:
    """Make the guest kernels of VMs panic (an NMI, QMP inject-nmi).

    qemu-compose's cloud-init sets kernel.unknown_nmi_panic=1 in every guest, so that the
    NMI panics it; the guest says so through the pvpanic device (GUEST_PANICKED in `watch`)
    and the VM's restart policy answers (`restart: on-failure` restarts it). Returns once
    the guest has panicked.
    """
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.faults(project, wait_lock=wait_lock, on_event=on_event).panic(*vms),
    )


@fault.command("ls")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_obj
def fault_ls(opts: GlobalOptions, fmt: str) -> None:
    """List the faults in force."""
    project = opts.load()
    from orchestrator import api

    from .runner import run
    from .tables import fault_table, json_lines

    rows = run(lambda: api.faults(project).ls())
    sys.stdout.write(json_lines(rows) if fmt == "json" else fault_table(rows))


@fault.command("clear")
@click.argument("vms", nargs=-1)
@progress_option
@wait_lock_option
@click.pass_obj
def fault_clear(opts: GlobalOptions, vms: tuple[str, ...], progress: str, wait_lock: bool) -> None:
    """Undo every fault of VMs (all, or those named): links up, traffic unshaped, disks
    unthrottled and without errors, out of partitions, guests unpaused."""
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.faults(project, wait_lock=wait_lock, on_event=on_event).clear(*vms),
    )
