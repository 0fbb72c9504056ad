"""The errors of systemd_dbus: one root, a subclass per kind of failure, each with its data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .units import UnitStatus


class SystemdError(Exception):
    """Root of every error this package raises."""


class ManagerUnavailableError(SystemdError):
    """No bus, or no systemd manager on it; ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(f"{message}: {hint}")
        self.hint = hint


class ManagerGoneError(SystemdError):
    """The connection to the manager was lost while something waited on it."""


class ConnectionStateError(SystemdError):
    """A call in the wrong state of the connection (not connected yet, or closed)."""


class SystemdTimeoutError(SystemdError):
    """The manager did not answer (or a job did not finish) within its deadline."""

    def __init__(self, operation: str, timeout: float) -> None:
        super().__init__(f"{operation}: no answer from systemd within {timeout:g} s")
        self.operation = operation
        self.timeout = timeout


class BusCallError(SystemdError):
    """systemd answered a call with a D-Bus error."""

    def __init__(self, member: str, error_name: str, text: str) -> None:
        super().__init__(f"{member}: {error_name}: {text}")
        self.member = member
        self.error_name = error_name
        self.text = text


class UnitError(SystemdError):
    """Something about one unit."""

    def __init__(self, message: str, unit: str) -> None:
        super().__init__(message)
        self.unit = unit


class UnitStartError(UnitError):
    """A unit did not start, or died at once; carries how it ended and its last log lines."""

    def __init__(
        self, unit: str, job_result: str, status: UnitStatus, journal: Sequence[str]
    ) -> None:
        how = status.describe_exit()
        tail = "".join(f"\n  | {line}" for line in journal)
        super().__init__(f"{unit} failed to start ({job_result}; {how}){tail}", unit)
        self.job_result = job_result
        self.status = status
        self.journal = tuple(journal)


class JobFailedError(UnitError):
    """A stop, restart or other job ended with a result other than "done"."""

    def __init__(self, unit: str, job: str, result: str) -> None:
        super().__init__(f"{job} of {unit} ended with {result!r}", unit)
        self.job = job
        self.result = result


class NoSuchUnitError(UnitError):
    """systemd does not know the unit (never started, or collected since)."""


class UnitExistsError(UnitError):
    """A unit of that name is already loaded (running, or failed and not yet reset)."""
