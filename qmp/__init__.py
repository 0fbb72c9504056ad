"""Supervised QMP sessions to QEMU (qemu.qmp behind a trio API). Knows nothing of compose files.

The session's names (QmpSession, open_session, ...) are imported on first use: a caller that
only needs the argv, the errors, the events or the loop does not import qemu.qmp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .argv import check_socket_path, monitor_args, qemu_option_value
from .errors import (
    CommandError,
    QmpConnectError,
    QmpError,
    QmpTimeoutError,
    SessionStateError,
    VmGoneError,
)
from .events import KNOWN_EVENTS, GenericEvent, QmpEvent, parse_event
from .loop import asyncio_loop

if TYPE_CHECKING:
    from .migration import Migration, MigrationError, load_state, save_state
    from .session import (
        BlockDevice,
        CpuInfo,
        EventStream,
        PowerdownOutcome,
        QmpSession,
        SessionState,
        VmStatus,
        open_session,
    )

_FROM_SESSION = {
    "BlockDevice",
    "CpuInfo",
    "EventStream",
    "PowerdownOutcome",
    "QmpSession",
    "SessionState",
    "VmStatus",
    "open_session",
}


_FROM_MIGRATION = {"Migration", "MigrationError", "load_state", "save_state"}


def __getattr__(name: str) -> Any:
    if name in _FROM_SESSION:
        return getattr(importlib.import_module(".session", __name__), name)
    if name in _FROM_MIGRATION:
        return getattr(importlib.import_module(".migration", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KNOWN_EVENTS",
    "BlockDevice",
    "CommandError",
    "CpuInfo",
    "EventStream",
    "GenericEvent",
    "Migration",
    "MigrationError",
    "PowerdownOutcome",
    "QmpConnectError",
    "QmpError",
    "QmpEvent",
    "QmpSession",
    "QmpTimeoutError",
    "SessionState",
    "SessionStateError",
    "VmGoneError",
    "VmStatus",
    "asyncio_loop",
    "check_socket_path",
    "load_state",
    "monitor_args",
    "open_session",
    "parse_event",
    "qemu_option_value",
    "save_state",
]
