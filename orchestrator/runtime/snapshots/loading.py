"""A VM's state written to a file (snapshot save, suspend) and loaded into the QEMU `up`
started for it (``-incoming defer``); the state of a suspended VM: whether it still fits,
and forgetting it once resumed."""

from __future__ import annotations

import os
from pathlib import Path

import trio

import qmp
from orchestrator.progress import Stage, Status
from orchestrator.state.files import read_struct
from orchestrator.state.paths import VmPaths
from orchestrator.state.snapshots import SuspendRecord

from ..options import QMP_ANSWER
from ..session import Session
from .common import SnapshotError, accel_of, current_shape, hardware_changes, instance_map

LOAD_TIMEOUT = 600.0


async def load_saved_state(
    session: Session, name: str, state: Path, *, shared_ram: bool = False
) -> float:
    """Load ``state``; the VM is paused at the saved instant after it; the seconds it took.
    A failure is the VM's (QEMU refused it: other devices, another QEMU). ``shared_ram``:
    the stream has no RAM, the QEMU's RAM backend maps it (a warm clone's template's)."""
    session.report(name, Stage.RESTORE, Status.WORKING, f"loading {state.name}")
    socket = str(session.paths.vm(name).qmp_control_socket)
    fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
    try:
        async with qmp.open_session(socket, timeout=max(QMP_ANSWER, 30.0), name=name) as control:
            loaded = await qmp.load_state(control, fd, timeout=LOAD_TIMEOUT, shared_ram=shared_ram)
    finally:
        os.close(fd)
    session.report(name, Stage.RESTORE, Status.DONE, f"state loaded in {loaded.seconds:.2f} s")
    return loaded.seconds


async def write_state(
    control: qmp.QmpSession, target: Path, *, shared_ram: bool = False
) -> tuple[int, qmp.Migration]:
    """The stopped VM's state to ``target``, whole or not at all (a temporary file beside
    it, synced, renamed); its size, and what QEMU said of it. ``shared_ram``: without the
    RAM of a shared backend (where QEMU leaves it out: the migration's ``ram_total``)."""
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        saved = await qmp.save_state(control, fd, shared_ram=shared_ram)
        await trio.to_thread.run_sync(os.fsync, fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    os.replace(tmp, target)
    return target.stat().st_size, saved


def suspended_state(session: Session, name: str, qemu: str) -> Path | None:
    """The state a suspended VM resumes from (None: it is not suspended); a SnapshotError
    when it can no longer be loaded: its hardware, accelerator or QEMU (``qemu``: the
    version that would load it) changed since."""
    paths = session.paths.vm(name)
    record = read_struct(paths.suspended_record, SuspendRecord)
    if record is None or not paths.suspended.is_file():
        return None
    inst = instance_map(session).get(name)
    if inst is None:
        return None
    problems = [str(c) for c in hardware_changes(record.shape, current_shape(session, inst))]
    accel = accel_of(inst)
    if accel != record.accel:
        problems.append(f"suspended on {record.accel}, would run on {accel}")
    if qemu != record.qemu:
        problems.append(f"suspended by QEMU {record.qemu}, this is {qemu}")
    if problems:
        raise SnapshotError(
            f"{name} is suspended, and its state no longer fits ({', '.join(problems)}): "
            f"`qemu-compose stop {name}` discards it (the VM boots next time)"
        )
    return paths.suspended


def discard_suspended(paths: VmPaths) -> bool:
    """Forget a VM's suspended state (its record first: nothing half-forgotten looks whole);
    True if there was one."""
    had = paths.suspended_record.exists()
    paths.suspended_record.unlink(missing_ok=True)
    paths.suspended.unlink(missing_ok=True)
    return had
