"""A VM's saved state loaded into the QEMU `up` started for it (``-incoming defer``), and
the state of a suspended VM: whether it still fits, and forgetting it once resumed."""

from __future__ import annotations

import os
from pathlib import Path

import qmp
from orchestrator.guest.accel import choose_accel, read_host_facts
from orchestrator.progress import Stage, Status
from orchestrator.state.files import read_struct
from orchestrator.state.paths import VmPaths
from orchestrator.state.snapshots import SuspendRecord

from ..options import QMP_ANSWER
from ..session import Session
from .common import SnapshotError, current_shape, hardware_changes, instance_map

LOAD_TIMEOUT = 600.0


async def load_saved_state(session: Session, name: str, state: Path) -> None:
    """Load ``state``; the VM is paused at the saved instant after it. A failure is the
    VM's (QEMU refused it: other devices, another QEMU)."""
    session.report(name, Stage.RESTORE, Status.WORKING, f"loading {state.name}")
    socket = str(session.paths.vm(name).qmp_control_socket)
    fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
    try:
        async with qmp.open_session(socket, timeout=max(QMP_ANSWER, 30.0), name=name) as control:
            loaded = await qmp.load_state(control, fd, timeout=LOAD_TIMEOUT)
    finally:
        os.close(fd)
    session.report(name, Stage.RESTORE, Status.DONE, f"state loaded in {loaded.seconds:.2f} s")


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
    accel = choose_accel(inst.vm.accel, read_host_facts(), inst.vm.cpu_model).name
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
