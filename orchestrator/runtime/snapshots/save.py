"""`snapshot save`: every selected VM frozen at once, then captured, then all resumed.

Consistency across VMs is the point: QMP ``stop`` goes to every running VM first, and no
capture starts before all of them stand still. Each VM's capture is then, in parallel: an
internal qcow2 snapshot of each writable disk (one QMP transaction: one instant for all its
disks), then, with memory, its RAM and device state to ``<vm>.state`` (the migration stream,
to a file we opened and passed). All of them ``cont`` together after the last one; a VM that
was paused before (a fault) stays paused. ``--no-memory`` keeps the disks only: crash
consistent, as at a power cut (no guest agent to quiesce them); it takes stopped VMs too.

Nothing half-made stays: a VM that cannot be captured (a device blocks migration, the disk
is full) undoes the whole save (tags deleted, files removed, every VM resumed) and fails
naming it; the snapshots made before are not touched. A save killed halfway leaves
``saving.json``, which the next save or `snapshot rm` of that name undoes.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

import qmp
from orchestrator.config.project import Project
from orchestrator.config.topology import Instance
from orchestrator.errors import UsageError
from orchestrator.guest.disks import DiskError, snapshot_offline
from orchestrator.progress import Reporter, Stage, Status
from orchestrator.state.files import free_space
from orchestrator.state.snapshots import (
    SnapshotDisk,
    SnapshotRecord,
    Snapshots,
    SnapshotVm,
    check_name,
    disk_tag,
)

from ..options import QMP_ANSWER, Connection
from ..query import RUNNING_STATES
from ..session import Session, open_session
from .common import (
    SnapshotError,
    accel_of,
    in_guests,
    instance_map,
    log_project_event,
    running_shape,
    version_of,
    writable_disks,
)
from .loading import write_state
from .manage import remove_one, undo_disks

MARGIN = 64 << 20  # bytes kept free beside the states
SYNC_TIMEOUT = 15.0


@dataclass
class _Capture:
    inst: Instance
    disks: list[SnapshotDisk]
    running: bool = False  # else disks only, offline
    control: qmp.QmpSession | None = None  # once opened, for a running one
    was: str = "stopped"
    made: list[SnapshotDisk] = field(default_factory=list)  # tags made so far
    state: Path | None = None
    state_bytes: int = 0
    failure: str = ""


async def save(
    project: Project,
    name: str,
    vms: Sequence[str],
    connection: Connection,
    report: Reporter,
    *,
    memory: bool = True,
    force: bool = False,
) -> SnapshotRecord:
    """Save snapshot ``name`` of the VMs named (none: every running VM; without memory,
    every created one)."""
    check_name(name)
    started = time.monotonic()
    async with open_session(project, connection, report) as session:
        store = Snapshots(session.paths.state_dir)
        if store.record(name) is not None and not force:
            raise UsageError(
                f"snapshot {name} exists: --force replaces it, or `snapshot rm {name}`"
            )
        captures = _chosen(session, vms, memory)
        if memory:
            check_room(session, store.directory, [c.inst for c in captures])
        async with contextlib.AsyncExitStack() as stack:
            for c in captures:
                if c.running:
                    socket = str(session.paths.vm(c.inst.name).qmp_control_socket)
                    c.control = await stack.enter_async_context(
                        qmp.open_session(socket, timeout=QMP_ANSWER, name=c.inst.name)
                    )
            version = await _check_statuses(captures)
            if not memory:  # what the guests wrote, on their disks (no agent to freeze them)
                await _sync_disks(session, [c for c in captures if c.was == "running"])
            held = {c.inst.name: c.control for c in captures if c.control is not None}
            await _forget(session, store, name, captures, held)
            directory = store.begin(name, {c.inst.name: c.disks for c in captures})
            frozen_at, frozen_for = await _freeze_capture_thaw(session, captures, directory, memory)
            failed = [c for c in captures if c.failure]
            if failed:  # (with the sessions still held: a running disk's tag is deleted there)
                await _undo(session, store, name, captures, held)
        if failed:
            why = "; ".join(f"{c.inst.name}: {c.failure}" for c in failed)
            raise SnapshotError(f"snapshot {name} not saved ({why}); nothing of it is kept")
        record = _finish(session, store, name, captures, memory, version, frozen_at, frozen_for)
        duration = time.monotonic() - started
        record = _with_duration(record, duration)
        store.finish(record)
        log_project_event(
            session,
            "SNAPSHOT_SAVE",
            {
                "name": name,
                "vms": sorted(record.vms),
                "memory": memory,
                "size": record.size,
                "frozen_for": round(frozen_for, 3),
                "duration": round(duration, 3),
            },
        )
        return record


def _chosen(session: Session, vms: Sequence[str], memory: bool) -> list[_Capture]:
    """The VMs to capture: those named (each must run, unless disks only), else every
    running one (and, disks only, every stopped one with a disk)."""
    by_name = instance_map(session)
    states = session.units.vm_states()
    names = session.names(vms) if vms else [n for n in by_name if n in session.state.vms]
    captures: list[_Capture] = []
    refused = []
    for name in names:
        inst = by_name.get(name)
        if inst is None:  # an orphan: not in the file, so nothing to restore it as
            if vms:
                refused.append(f"{name} is not in the compose file")
            continue
        running = states.get(name) in RUNNING_STATES
        disks = writable_disks(session, inst)
        if running:
            captures.append(_Capture(inst, disks, running=True))
        elif not memory and disks and name in session.state.vms:
            captures.append(_Capture(inst, disks))
        elif vms:
            refused.append(f"{name} does not run" + ("" if memory else " and has no disk"))
    if not memory:
        diskless = [c.inst.name for c in captures if not c.disks]
        if diskless and vms:
            refused.append(f"{', '.join(diskless)}: no disk to keep (--no-memory keeps disks)")
        captures = [c for c in captures if c.disks]
    if refused:
        raise UsageError("cannot snapshot: " + "; ".join(refused))
    if not captures:
        raise UsageError("no VM to snapshot: none runs" + ("" if memory else " or has a disk"))
    return captures


def check_room(session: Session, where: Path, insts: list[Instance]) -> None:
    """Refuse, before anything stands still, saving memory that may not fit: a state takes
    up to the VM's RAM (less: pages never written are not in it)."""
    needed = sum(i.vm.memory << 20 for i in insts) + MARGIN
    place = where if where.exists() else session.paths.state_dir
    if shutil.disk_usage(place).free < needed:
        raise SnapshotError(
            f"not enough room for the memory of {len(insts)} VM(s): up to "
            f"{needed >> 20} MiB, {free_space(place)} (a snapshot --no-memory keeps disks only)"
        )


async def _check_statuses(captures: list[_Capture]) -> str:
    """Each running VM's guest runs or is paused (not between two runs); QEMU's version."""
    version = ""
    busy = []
    for c in captures:
        if c.control is None:
            continue
        status = (await c.control.query_status()).status
        if status not in ("running", "paused"):
            busy.append(f"{c.inst.name} is {status}")
        c.was = status
        version = version or version_of(await c.control.execute("query-version"))
    if busy:
        raise UsageError(f"cannot snapshot now: {'; '.join(busy)} (between two runs)")
    return version


async def _sync_disks(session: Session, captures: list[_Capture]) -> None:
    """``sync`` in each running guest over SSH, where it can be: a disks-only snapshot then
    holds what the guests wrote until now (it stays crash-consistent: nothing is frozen)."""
    names = [c.inst.name for c in captures]
    for vm, outcome in (await in_guests(session, names, lambda _: "sync", SYNC_TIMEOUT)).items():
        if outcome.exit_code != 0:
            said = outcome.output.decode(errors="replace").strip()[:200]
            session.report(vm, Stage.SNAPSHOT, Status.SKIPPED, f"no sync in the guest: {said}")


async def _forget(
    session: Session,
    store: Snapshots,
    name: str,
    captures: list[_Capture],
    held: Mapping[str, qmp.QmpSession],
) -> None:
    """What an earlier snapshot of this name left: the one --force replaces, what an
    interrupted save made, and a tag of this name in a disk about to be captured that no
    snapshot refers to (one that `destroy` could not delete from a volume it kept). QEMU
    would refuse a second tag of a name; qemu-img would make one."""
    also = [(c.inst.name, d) for c in captures for d in c.disks]
    await remove_one(session, store, name, also=also, held=held)


async def _freeze_capture_thaw(
    session: Session, captures: list[_Capture], directory: Path, memory: bool
) -> tuple[float, float]:
    """Stop every running VM, capture each, resume those that ran; when they stood still
    (host clock) and for how long."""
    running = [c for c in captures if c.control is not None and c.was == "running"]
    paused = [c for c in captures if c.control is not None and c.was == "paused"]
    try:
        async with trio.open_nursery() as nursery:
            for c in running:
                nursery.start_soon(_stop, c)
        frozen_at, t0 = time.time(), time.monotonic()
        for c in captures:
            session.report(c.inst.name, Stage.SNAPSHOT, Status.WORKING, "frozen: capturing")
        async with trio.open_nursery() as nursery:
            for c in captures:
                if not c.failure:
                    nursery.start_soon(_capture, session, c, directory, memory)
    finally:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for c in running:
                    nursery.start_soon(_cont, c)
                for c in paused if memory else ():
                    nursery.start_soon(_repause, c)
    return frozen_at, time.monotonic() - t0


async def _stop(c: _Capture) -> None:
    assert c.control is not None
    try:
        await c.control.execute("stop")
    except qmp.QmpError as err:
        c.failure = f"QEMU did not stop: {err}"


async def _cont(c: _Capture) -> None:
    assert c.control is not None
    with contextlib.suppress(qmp.QmpError):  # it ended meanwhile: nothing to resume
        await c.control.execute("cont", timeout=QMP_ANSWER)


async def _repause(c: _Capture) -> None:
    """A VM paused before its memory was saved: QEMU left it ``postmigrate``, its disks
    given up (as for a migration's destination); ``cont`` takes them back (the guest runs
    for the moment until ``stop``), and it is paused again, as `pause` left it."""
    assert c.control is not None
    with contextlib.suppress(qmp.QmpError):
        if (await c.control.query_status()).status == "postmigrate":
            await c.control.execute("cont", timeout=QMP_ANSWER)
            await c.control.execute("stop", timeout=QMP_ANSWER)


async def _capture(session: Session, c: _Capture, directory: Path, memory: bool) -> None:
    tag = disk_tag(directory.name)
    try:
        if c.control is None:  # stopped: its disks offline, one by one
            for disk in c.disks:
                await snapshot_offline(Path(disk.path), "create", tag)
                c.made.append(disk)
        elif c.disks:
            actions = [
                {"type": "blockdev-snapshot-internal-sync", "data": {"device": d.node, "name": tag}}
                for d in c.disks
            ]
            await c.control.execute("transaction", {"actions": actions}, timeout=60)
            c.made = list(c.disks)
        if memory and c.control is not None:
            await _save_memory(c, directory)
    except (qmp.QmpError, DiskError, OSError) as err:
        c.failure = _explained(str(err))
        session.report(c.inst.name, Stage.SNAPSHOT, Status.FAILED, c.failure)
        return
    size = f", {c.state_bytes / (1 << 20):.1f} MiB of memory" if c.state else ""
    session.report(c.inst.name, Stage.SNAPSHOT, Status.DONE, f"{len(c.made)} disk(s){size}")


async def _save_memory(c: _Capture, directory: Path) -> None:
    assert c.control is not None
    target = directory / f"{c.inst.name}.state"
    c.state_bytes, _ = await write_state(c.control, target)
    c.state = target


def _explained(said: str) -> str:
    if "VirtFS" in said or "9p" in said:
        return f"{said} (a mounted 9p bind mount blocks saving memory: --no-memory saves disks)"
    if "No space left" in said or "Broken pipe" in said:
        return f"{said} (the disk is full?)"
    return said


async def _undo(
    session: Session,
    store: Snapshots,
    name: str,
    captures: list[_Capture],
    held: Mapping[str, qmp.QmpSession],
) -> None:
    """Nothing of a failed save is kept: every captured disk's tag (also one QEMU made as
    its answer timed out: tags of this name were none before), its files."""
    with trio.CancelScope(shield=True):
        disks = [(c.inst.name, d) for c in captures for d in c.disks]
        await undo_disks(session, disks, name, strict=False, held=held)
        store.remove(name)


def _finish(
    session: Session,
    store: Snapshots,
    name: str,
    captures: list[_Capture],
    memory: bool,
    version: str,
    frozen_at: float,
    frozen_for: float,
) -> SnapshotRecord:
    vms = {
        c.inst.name: SnapshotVm(
            shape=running_shape(session, c.inst),
            accel=accel_of(c.inst),
            disks=c.disks,
            state=c.state.name if c.state else None,
            state_bytes=c.state_bytes,
            was=c.was,
        )
        for c in captures
    }
    return SnapshotRecord(
        name=name,
        created_at=frozen_at,
        memory=memory,
        qemu=version,
        vms=vms,
        frozen_for=round(frozen_for, 3),
    )


def _with_duration(record: SnapshotRecord, duration: float) -> SnapshotRecord:
    import msgspec

    return msgspec.structs.replace(record, duration=round(duration, 3))
