"""Where a project's things live: its state directory (the state cache, the lock, atomic
writes; here) and the names of its units, files and sockets (`paths`)."""

from .files import ProjectLock, ProjectState, StateDir, VmState, atomic_write, private_dir

__all__ = [
    "ProjectLock",
    "ProjectState",
    "StateDir",
    "VmState",
    "atomic_write",
    "private_dir",
]
