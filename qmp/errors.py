"""The errors of qmp: one root, a subclass per kind of failure, each with its data."""

from __future__ import annotations


class QmpError(Exception):
    """Root of every error this package raises."""


class QmpConnectError(QmpError):
    """No QMP session could be opened (no socket, refused, or no greeting) in time."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"QMP at {socket_path}: {reason}")
        self.socket_path = socket_path
        self.reason = reason


class SessionStateError(QmpError):
    """A call in the wrong state of the session (not connected, or already closed)."""


class VmGoneError(QmpError):
    """The connection ended (EOF): QEMU exited or closed the monitor."""


class QmpTimeoutError(QmpError):
    """QEMU did not answer a command within its deadline: it hangs."""

    def __init__(self, command: str, timeout: float) -> None:
        super().__init__(f"{command}: no answer from QEMU within {timeout:g} s")
        self.command = command
        self.timeout = timeout


class CommandError(QmpError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"{command}: {error_class}: {description}")
        self.command = command
        self.error_class = error_class
        self.description = description
