"""Supervised QMP sessions to QEMU (qemu.qmp behind a trio API). Knows nothing of compose files."""

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
from .session import (
    BlockDevice,
    CpuInfo,
    EventStream,
    PowerdownOutcome,
    QmpSession,
    SessionState,
    VmStatus,
    asyncio_loop,
    open_session,
)

__all__ = [
    "KNOWN_EVENTS",
    "BlockDevice",
    "CommandError",
    "CpuInfo",
    "EventStream",
    "GenericEvent",
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
    "monitor_args",
    "open_session",
    "parse_event",
    "qemu_option_value",
]
