"""The exceptions qemu-compose raises: one root, one subclass per kind of failure.

Each carries the data a user needs to act (file, line, field, PID); the CLI turns any of them
into one message and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec


class QemuComposeError(Exception):
    """Root of every error qemu-compose reports to its user."""

    exit_status = 1


class SeveralErrors(QemuComposeError):
    """Errors that came at once, from tasks run side by side (a command's VMs): each one is
    kept (``errors``), its message a line; the exit status is the highest of theirs."""

    def __init__(self, errors: Sequence[QemuComposeError]) -> None:
        self.errors = list(errors)
        self.exit_status = max(e.exit_status for e in self.errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong with a compose file, pinned to where it is."""

    file: Path
    line: int  # 1-based; 0 when no position is known
    column: int  # 1-based; 0 when no position is known
    path: str  # the field, e.g. ``vms.web.volumes[0].target``; "" for the whole file
    message: str

    def render(self, shown_file: str | None = None) -> str:
        where = shown_file if shown_file is not None else str(self.file)
        if self.line:
            where = f"{where}:{self.line}:{self.column}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ConfigError(QemuComposeError):
    """The compose file (or how it was named) is not valid; nothing has been touched."""

    exit_status = 2

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self, shown_file: str | None = None) -> str:
        return "\n".join(p.render(shown_file) for p in self.problems)


class ProjectNotFoundError(QemuComposeError):
    """No compose file where we looked."""

    exit_status = 2


class UsageError(QemuComposeError):
    """The command names something that is not there (a VM, a network)."""

    exit_status = 2


class PeerError(QemuComposeError):
    """systemd, QEMU or the host's network failed; ``__cause__`` is their own error."""


class VmError(PeerError):
    """One VM failed at one stage of a command; the message is why, ``__cause__`` the error."""

    def __init__(self, vm: str, stage: str, unit: str, message: str) -> None:
        self.vm = vm
        self.stage = stage  # a progress.Stage: where the VM was when it failed
        self.unit = unit
        super().__init__(message)


class StateError(QemuComposeError):
    """The project's state directory cannot be used as it is."""


class LockHeldError(StateError):
    """Another qemu-compose process holds the project's lock."""

    def __init__(self, lock_path: Path, holder_pid: int | None, holder_command: str) -> None:
        self.lock_path = lock_path
        self.holder_pid = holder_pid
        self.holder_command = holder_command
        who = f"process {holder_pid}" if holder_pid else "another process"
        what = f" ({holder_command})" if holder_command else ""
        super().__init__(
            f"the project is busy: {who}{what} holds {lock_path}; "
            "wait for it to finish, or pass --wait-lock to wait"
        )
