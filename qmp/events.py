"""QMP events as typed structs, with QEMU's own timestamps. Pure.

Known events get a struct of their own (fields as QEMU 7.2 sends them; unknown fields are
ignored so that newer QEMUs still parse); any other event is a GenericEvent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec


class QmpEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Every event has QEMU's timestamp (seconds since the epoch, microsecond precision)."""

    name: ClassVar[str] = ""
    timestamp: float

    @property
    def event(self) -> str:
        return self.name

    def data(self) -> dict[str, Any]:
        """The event's data as QEMU sent it (without the timestamp)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        data.pop("timestamp", None)
        return data


class Shutdown(QmpEvent, frozen=True, kw_only=True):
    """The guest or the host shut the VM down (QEMU exits next, unless -no-shutdown)."""

    name: ClassVar[str] = "SHUTDOWN"
    guest: bool = False
    reason: str = ""


class Powerdown(QmpEvent, frozen=True, kw_only=True):
    """The ACPI power button was pressed (system_powerdown)."""

    name: ClassVar[str] = "POWERDOWN"


class Reset(QmpEvent, frozen=True, kw_only=True):
    name: ClassVar[str] = "RESET"
    guest: bool = False
    reason: str = ""


class Stop(QmpEvent, frozen=True, kw_only=True):
    name: ClassVar[str] = "STOP"


class Resume(QmpEvent, frozen=True, kw_only=True):
    name: ClassVar[str] = "RESUME"


class GuestPanicked(QmpEvent, frozen=True, kw_only=True):
    name: ClassVar[str] = "GUEST_PANICKED"
    action: str = ""
    info: dict[str, Any] | None = None


class Watchdog(QmpEvent, frozen=True, kw_only=True):
    name: ClassVar[str] = "WATCHDOG"
    action: str = ""


class BlockIoError(QmpEvent, frozen=True, kw_only=True):
    name: ClassVar[str] = "BLOCK_IO_ERROR"
    device: str = ""
    node_name: str | None = msgspec.field(default=None, name="node-name")
    operation: str = ""
    action: str = ""
    nospace: bool = False
    reason: str = ""


class NicRxFilterChanged(QmpEvent, frozen=True, kw_only=True):
    name: ClassVar[str] = "NIC_RX_FILTER_CHANGED"
    nic: str | None = msgspec.field(default=None, name="name")
    path: str = ""


class DeviceDeleted(QmpEvent, frozen=True, kw_only=True):
    name: ClassVar[str] = "DEVICE_DELETED"
    device: str | None = None
    path: str = ""


class JobStatusChange(QmpEvent, frozen=True, kw_only=True):
    name: ClassVar[str] = "JOB_STATUS_CHANGE"
    id: str = ""
    status: str = ""


class GenericEvent(QmpEvent, frozen=True, kw_only=True):
    """Any event without a struct of its own."""

    event_name: str
    payload: dict[str, Any] = {}

    @property
    def event(self) -> str:
        return self.event_name

    def data(self) -> dict[str, Any]:
        return dict(self.payload)


KNOWN_EVENTS: dict[str, type[QmpEvent]] = {
    cls.name: cls
    for cls in (
        Shutdown,
        Powerdown,
        Reset,
        Stop,
        Resume,
        GuestPanicked,
        Watchdog,
        BlockIoError,
        NicRxFilterChanged,
        DeviceDeleted,
        JobStatusChange,
    )
}


def parse_event(message: Mapping[str, Any]) -> QmpEvent:
    """A typed event from a QMP event message ``{"event", "data", "timestamp"}``."""
    name = str(message["event"])
    stamp = message.get("timestamp") or {}
    timestamp = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
    data = dict(message.get("data") or {})
    cls = KNOWN_EVENTS.get(name)
    if cls is not None:
        try:
            return msgspec.convert({**data, "timestamp": timestamp}, cls)
        except msgspec.ValidationError:
            pass  # a QEMU that sends another shape: keep the event, untyped
    return GenericEvent(timestamp=timestamp, event_name=name, payload=data)


# What a supervised session (qmp.supervisor) tells besides QEMU's own events.
class SessionOpened(msgspec.Struct, frozen=True):
    """The supervision session is up: a new QEMU, or a new supervisor of a running one."""

    name: ClassVar[str] = "QMP_CONNECTED"
    status: str | None = None  # query-status's, e.g. "running", "shutdown", "guest-panicked"
    error: str | None = None  # why the status could not be read

    def data(self) -> dict[str, str | None]:
        return {"status": self.status} if self.error is None else {"error": self.error}


class SessionClosed(msgspec.Struct, frozen=True):
    name: ClassVar[str] = "QMP_DISCONNECTED"
    reason: str  # connection-closed (QEMU exited), supervision-ended (we stopped watching)

    def data(self) -> dict[str, str]:
        return {"reason": self.reason}


SessionEvent = QmpEvent | SessionOpened | SessionClosed
