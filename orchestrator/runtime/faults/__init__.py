"""Faults made on purpose, to test what runs on the VMs.

freeze: pause, unpause (QMP stop and cont) and kill (a signal to QEMU through systemd);
inject: faults kept until undone (a link cut, traffic shaped, a disk throttled, a partition),
a kernel panic on demand, and `fault ls` / `fault clear`. What is kept is in state.faults.
"""

from .freeze import FaultError, kill, parse_signal, pause, resume_if_paused, unpause
from .inject import (
    FaultRow,
    clear,
    clear_faults,
    disk,
    disk_errors,
    heal,
    link,
    ls,
    net,
    panic,
    partition,
    shape_of,
)

__all__ = [
    "FaultError",
    "FaultRow",
    "clear",
    "clear_faults",
    "disk",
    "disk_errors",
    "heal",
    "kill",
    "link",
    "ls",
    "net",
    "panic",
    "parse_signal",
    "partition",
    "pause",
    "resume_if_paused",
    "shape_of",
    "unpause",
]
