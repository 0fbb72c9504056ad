"""systemd over D-Bus (dbus-fast behind a trio API): transient units, their state and signals.

Knows nothing of compose files. Usage::

    async with systemd_dbus.connect("user") as manager:
        status = await manager.start(TransientUnit("demo.service", ["/bin/sleep", "60"]))
        async with manager.watch(["demo.service"]) as changes:
            async for status in changes:
                ...
        await manager.stop("demo.service")
"""

from .bus import bus_address
from .errors import (
    BusCallError,
    ConnectionStateError,
    JobFailedError,
    ManagerGoneError,
    ManagerUnavailableError,
    NoSuchUnitError,
    SystemdError,
    SystemdTimeoutError,
    UnitError,
    UnitExistsError,
    UnitStartError,
)
from .escape import escape, is_valid_unit_name, unescape, unit_object_path
from .journal import journal_argv, last_lines
from .manager import Runstate, SystemdManager, connect
from .units import ActiveState, ExtraProperty, TransientUnit, UnitStatus, UnitSummary
from .watch import UnitWatch

__all__ = [
    "ActiveState",
    "BusCallError",
    "ConnectionStateError",
    "ExtraProperty",
    "JobFailedError",
    "ManagerGoneError",
    "ManagerUnavailableError",
    "NoSuchUnitError",
    "Runstate",
    "SystemdError",
    "SystemdManager",
    "SystemdTimeoutError",
    "TransientUnit",
    "UnitError",
    "UnitExistsError",
    "UnitStartError",
    "UnitStatus",
    "UnitSummary",
    "UnitWatch",
    "bus_address",
    "connect",
    "escape",
    "is_valid_unit_name",
    "journal_argv",
    "last_lines",
    "unescape",
    "unit_object_path",
]
