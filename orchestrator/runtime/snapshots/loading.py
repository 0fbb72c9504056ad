"""A VM's saved state loaded into the QEMU `up` started for it (``-incoming defer``)."""

from __future__ import annotations

import os
from pathlib import Path

import qmp
from orchestrator.progress import Stage, Status

from ..options import QMP_ANSWER
from ..session import Session

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
