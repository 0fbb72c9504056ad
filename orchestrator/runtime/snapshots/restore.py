"""`snapshot restore`: the VMs back at the snapshot's instant, without a boot.

Everything is checked before anything changes: the snapshot is whole, every VM named is in
it and in the compose file, its hardware is what it was (``memory 512 -> 1024`` refuses), the
QEMU is the same, every disk still has its point in time and every state file is there.
Then the VMs that run are stopped at once (their present is what is given up: no power
button), their disks put back (qemu-img, offline), and they start again through `up`'s own
path, each QEMU waiting for its state (``-incoming defer``); all loaded, they resume together
(``--paused``: they stay paused). A snapshot without memory puts the disks back and boots.

A restored guest's wall clock is the snapshot's, behind by its age: it is set to the host's
over SSH once the VMs run (`sync_clocks`); where that fails, a warning says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import trio

from orchestrator.config.project import Project
from orchestrator.errors import UsageError
from orchestrator.guest.clock import as_root, clock_command
from orchestrator.guest.disks import DiskError, snapshot_offline
from orchestrator.progress import Reporter, Stage, Status
from orchestrator.state.snapshots import SnapshotRecord, Snapshots, check_name, disk_tag

from ..execute import UpResult, up_in
from ..faults import clear_faults
from ..options import Connection, PlanOptions, UpOptions
from ..query import RUNNING_STATES
from ..session import Session, open_session
from ..teardown import stop_one
from .common import (
    SnapshotError,
    accel_of,
    check_tags,
    current_shape,
    hardware_changes,
    in_guests,
    instance_map,
    log_project_event,
    qemu_version,
)
from .loading import discard_suspended
from .manage import _known

CLOCK_TIMEOUT = 30.0


class RestoreResult(msgspec.Struct, frozen=True):
    name: str
    vms: list[str]
    memory: bool
    seconds: float
    clocks_set: list[str] = []  # the VMs whose clock was set to the host's


async def restore(
    project: Project,
    name: str,
    vms: Sequence[str],
    connection: Connection,
    report: Reporter,
    *,
    paused: bool = False,
    wait: bool = False,
    ready_timeout: float = 900.0,
) -> RestoreResult:
    """Restore snapshot ``name`` to the VMs named (none: all of its VMs)."""
    check_name(name)
    started = time.monotonic()
    async with open_session(project, connection, report) as session:
        store = Snapshots(session.paths.state_dir)
        record = store.record(name)
        if record is None:
            if store.path(name).exists():
                raise UsageError(f"snapshot {name} is incomplete (its save was interrupted)")
            raise UsageError(f"no snapshot {name}{_known(store)}")
        if paused and not record.memory:
            raise UsageError(
                f"snapshot {name} has no memory: its VMs boot, they cannot stay paused"
            )
        names = await _check(session, store, record, vms)
        states = session.units.vm_states()
        running = [n for n in names if n in states]
        await clear_faults(session, running, why="restored")
        async with trio.open_nursery() as nursery:
            for vm in running:
                nursery.start_soon(stop_one, session, vm, 0.0)
        for vm in names:
            discard_suspended(session.paths.vm(vm))  # the snapshot wins
        await _put_disks_back(session, record, names)
        incoming = (
            {vm: str(store.path(name) / (record.vms[vm].state or "")) for vm in names}
            if record.memory
            else {}
        )
        options = UpOptions(
            plan=PlanOptions(services=names, no_deps=True),
            wait=wait and not paused,
            ready_timeout=ready_timeout,
            incoming=incoming,
            paused=paused,
        )
        result = await up_in(session, options)
        clocks = [] if paused or not record.memory else await sync_clocks(session, result.ready)
        seconds = time.monotonic() - started
        log_project_event(
            session,
            "SNAPSHOT_RESTORE",
            {
                "name": name,
                "vms": names,
                "memory": record.memory,
                "size": record.size,
                "paused": paused,
                "duration": round(seconds, 3),
            },
        )
        return RestoreResult(name, names, record.memory, round(seconds, 3), clocks)


async def _check(
    session: Session, store: Snapshots, record: SnapshotRecord, vms: Sequence[str]
) -> list[str]:
    """The VMs to restore, once everything about them is right; else UsageError or
    SnapshotError, nothing changed."""
    by_name = instance_map(session)
    if vms:
        names = []
        for vm in vms:
            found = [n for n in session.names([vm]) if n in record.vms]
            if not found:
                raise UsageError(f"{vm} is not in snapshot {record.name} ({', '.join(record.vms)})")
            names += [n for n in found if n not in names]
    else:
        names = list(record.vms)
    problems = []
    for vm in names:
        inst = by_name.get(vm)
        if inst is None:
            problems.append(f"{vm} is no longer in the compose file")
            continue
        kept = record.vms[vm]
        changed = hardware_changes(kept.shape, current_shape(session, inst))
        if changed:
            what = ", ".join(str(c) for c in changed)
            problems.append(f"{vm}: its hardware changed since the snapshot ({what})")
        accel = accel_of(inst)
        if record.memory and accel != kept.accel:
            problems.append(f"{vm}: saved on {kept.accel}, would run on {accel}")
        missing = await check_tags(kept.disks, disk_tag(record.name))
        if missing:
            problems.append(
                f"{vm}: its disk lost the snapshot's point in time ({', '.join(missing)})"
            )
        if record.memory and not (store.path(record.name) / (kept.state or "-")).is_file():
            problems.append(f"{vm}: its saved state is missing")
    problems += _shared_disks(session, record, names)
    if record.memory:
        now = await qemu_version()
        if now != record.qemu:
            problems.append(f"saved with QEMU {record.qemu}, this is {now}: its states do not load")
    if problems:
        raise SnapshotError(f"cannot restore {record.name}: " + "; ".join(problems))
    return names


def _shared_disks(session: Session, record: SnapshotRecord, names: list[str]) -> list[str]:
    """A disk to put back that a running VM outside the restore has open (a volume it
    mounts read-only, say): qemu-img could not take it, after the VMs were stopped."""
    restoring = {d.path for vm in names for d in record.vms[vm].disks}
    states = session.units.vm_states()
    found = []
    for inst in instance_map(session).values():
        if inst.name in names or states.get(inst.name) not in RUNNING_STATES:
            continue
        for mount in inst.vm.volumes:
            if mount.type == "volume" and str(session.paths.volume(mount.source)) in restoring:
                found.append(f"volume {mount.source} is in use by {inst.name}, which runs")
    return found


async def _put_disks_back(session: Session, record: SnapshotRecord, names: list[str]) -> None:
    """Each disk back at the snapshot's point in time (qemu-img, offline); one that fails
    does not stop the others (each apply is whole or not done), and the failures are told
    together: the VMs are stopped, and the same restore again finishes it."""
    tag = disk_tag(record.name)
    seen: set[str] = set()
    failed: list[str] = []

    async def one(vm: str, path: Path) -> None:
        try:
            await snapshot_offline(path, "apply", tag)
        except DiskError as err:
            failed.append(f"{vm}: {err}")

    with trio.CancelScope(shield=True):  # a qemu-img is never cut off halfway
        async with trio.open_nursery() as nursery:
            for vm in names:
                for disk in record.vms[vm].disks:
                    if disk.path not in seen:
                        seen.add(disk.path)
                        nursery.start_soon(one, vm, Path(disk.path))
    if failed:
        raise SnapshotError(
            f"snapshot {record.name}: disks not put back ({'; '.join(failed)}); the VMs are "
            "stopped: restore it again, or `up` to run them as they are"
        )
    for vm in names:
        if record.vms[vm].disks:
            count = len(record.vms[vm].disks)
            session.report(vm, Stage.RESTORE, Status.DONE, f"{count} disk(s) put back")


async def sync_clocks(session: Session, names: Sequence[str]) -> list[str]:
    """Set each guest's wall clock to the host's (over SSH with the project key, as root or
    with sudo); returns the VMs whose clock was set. A failure is a warning: the guest runs."""

    def command(boot: float | None) -> str:
        if boot is None:  # (no uptime: the time when it is sent)
            return as_root(f"date -u -s @{int(time.time())}", "qemu-compose-clock", [])
        return clock_command(boot)

    done = []
    for vm, outcome in (await in_guests(session, names, command, CLOCK_TIMEOUT)).items():
        if outcome.exit_code == 0:
            done.append(vm)
            session.report(vm, Stage.RESTORE, Status.DONE, "clock set to the host's")
        else:
            said = outcome.output.decode(errors="replace").strip()[:200]
            why = f"clock not set (its wall clock is behind): {said}"
            session.report(vm, Stage.RESTORE, Status.SKIPPED, why)
    return [n for n in names if n in done]


__all__ = ["RestoreResult", "UpResult", "restore", "sync_clocks"]
