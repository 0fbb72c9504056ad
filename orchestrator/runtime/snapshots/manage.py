"""`snapshot ls` and `snapshot rm`, and what `destroy` removes of the snapshots.

A disk's tag is deleted over QMP while its VM runs (QEMU has the image open and locked), by
qemu-img otherwise (which takes the lock: a disk some QEMU has open is refused, not harmed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

import qmp
from orchestrator.config.project import Project
from orchestrator.errors import UsageError
from orchestrator.guest.disks import DiskError, internal_snapshots, snapshot_offline
from orchestrator.progress import Reporter, Stage, Status
from orchestrator.state.snapshots import SnapshotDisk, Snapshots, check_name, disk_tag

from ..options import QMP_ANSWER, Connection
from ..query import RUNNING_STATES
from ..session import Session, open_session
from .common import SnapshotError, log_project_event


class SnapshotRow(msgspec.Struct, frozen=True):
    """One line of `snapshot ls`."""

    name: str
    created_at: float | None  # None: an interrupted save
    vms: list[str]
    memory: bool
    size: int  # bytes of its own files (memory); the disks' points in time share the images
    complete: bool = True


def rows(project: Project) -> list[SnapshotRow]:
    """The project's snapshots, oldest first; an interrupted save as incomplete."""
    store = Snapshots(project.state_dir)
    found = []
    for name in store.names():
        record = store.record(name)
        if record is not None:
            found.append(
                SnapshotRow(name, record.created_at, sorted(record.vms), record.memory, record.size)
            )
            continue
        saving = store.saving(name)
        size = sum(p.stat().st_size for p in store.path(name).glob("*.state"))
        vms = sorted(saving.vms) if saving else []
        found.append(SnapshotRow(name, None, vms, False, size, complete=False))
    return sorted(found, key=lambda r: (r.created_at is None, r.created_at or 0.0, r.name))


async def remove(
    project: Project, names: Sequence[str], connection: Connection, report: Reporter
) -> list[str]:
    """Remove snapshots (their disks' tags, their files); an unknown name: nothing removed."""
    for name in names:
        check_name(name)
    async with open_session(project, connection, report) as session:
        store = Snapshots(session.paths.state_dir)
        unknown = [n for n in names if not store.path(n).exists()]
        if unknown:
            raise UsageError(f"no snapshot {', '.join(unknown)}{_known(store)}")
        for name in names:
            await remove_one(session, store, name)
            report("", Stage.SNAPSHOT, Status.DONE, f"{name} removed")
            log_project_event(session, "SNAPSHOT_REMOVE", {"name": name})
        return list(names)


async def remove_one(
    session: Session,
    store: Snapshots,
    name: str,
    *,
    also: Iterable[tuple[str, SnapshotDisk]] = (),
    held: Mapping[str, qmp.QmpSession] | None = None,
) -> None:
    """A snapshot's disks' tags (those of its record, of an interrupted save of it, and any
    of ``also``), then its files; a tag that cannot be deleted keeps it (SnapshotError)."""
    await undo_disks(session, [*disks_of(store, name), *also], name, strict=True, held=held)
    store.remove(name)


def disks_of(store: Snapshots, name: str) -> list[tuple[str, SnapshotDisk]]:
    """(VM, disk) of every disk snapshot ``name`` has a tag in: its record's, and those of an
    interrupted save of it."""
    record = store.record(name)
    saving = store.saving(name)
    disks = [(vm, d) for vm, kept in record.vms.items() for d in kept.disks] if record else []
    disks += [(vm, d) for vm, kept in saving.vms.items() for d in kept] if saving else []
    return disks


def _known(store: Snapshots) -> str:
    names = store.names()
    return f" (there are: {', '.join(names)})" if names else " (there are none)"


async def undo_disks(
    session: Session,
    disks: Iterable[tuple[str, SnapshotDisk]],
    name: str,
    *,
    strict: bool,
    held: Mapping[str, qmp.QmpSession] | None = None,
    offline: bool = False,
) -> list[str]:
    """Delete snapshot ``name``'s tag from each (VM, disk); a tag already gone is fine.
    ``strict``: a tag that could not be deleted is a SnapshotError (the snapshot is kept);
    else the disks it stays in are returned, each with why.
    ``held``: the control sessions the caller holds (a monitor takes one client at once).
    ``offline``: no VM runs now (the session's view of the units is from before)."""
    tag = disk_tag(name)
    states = {} if offline else session.units.vm_states()
    failed: list[str] = []
    seen: set[str] = set()
    for vm, disk in disks:
        if disk.path in seen:
            continue
        seen.add(disk.path)
        path = Path(disk.path)
        try:
            if not path.exists() or tag not in await internal_snapshots(path):
                continue
            if held and vm in held:
                await _delete_live(held[vm], disk, tag)
            elif states.get(vm) in RUNNING_STATES:
                socket = str(session.paths.vm(vm).qmp_control_socket)
                async with qmp.open_session(socket, timeout=QMP_ANSWER, name=vm) as control:
                    await _delete_live(control, disk, tag)
            else:
                await snapshot_offline(path, "delete", tag)
        except (DiskError, qmp.QmpError) as err:
            failed.append(f"{vm} {disk.volume or disk.node}: {err}")
    if failed and strict:
        raise SnapshotError(f"snapshot {name}: cannot delete it from " + "; ".join(failed))
    return failed


async def _delete_live(control: qmp.QmpSession, disk: SnapshotDisk, tag: str) -> None:
    arguments = {"device": disk.node, "name": tag}
    await control.execute("blockdev-snapshot-delete-internal-sync", arguments, timeout=60)


async def forget_vms(
    session: Session, vms: Sequence[str], *, everything: bool, volumes_kept: bool = True
) -> None:
    """For `destroy`: the VMs leave every snapshot (their states go; their disks go with
    them); ``everything`` (the whole project): the snapshots go, and so do their points in
    time in the named volumes that `destroy` keeps (nothing could restore them: they would
    only hold space); the volumes' contents stay as they are."""
    store = Snapshots(session.paths.state_dir)
    for name in store.names():
        if everything:
            if volumes_kept:
                volumes = [(vm, d) for vm, d in disks_of(store, name) if d.volume]  # (VMs gone)
                for stays in await undo_disks(session, volumes, name, strict=False, offline=True):
                    why = f"snapshot {name} stays in {stays} (a new snapshot {name} replaces it)"
                    session.report("", Stage.SNAPSHOT, Status.SKIPPED, why)
            store.remove(name)
            continue
        record = store.record(name)
        if record is None:
            continue
        gone = [vm for vm in vms if vm in record.vms]
        if not gone:
            continue
        for vm in gone:
            state = record.vms[vm].state
            if state:
                with contextlib.suppress(FileNotFoundError):
                    (store.path(name) / state).unlink()
        kept = {vm: s for vm, s in record.vms.items() if vm not in gone}
        if kept:
            store.finish(msgspec.structs.replace(record, vms=kept))
        else:
            store.remove(name)
