"""The bus: systemd's names on it, the user's or the system's address, and what to tell a
user who has none."""

from __future__ import annotations

import os
from typing import Literal

BUS_NAME = "org.freedesktop.systemd1"
MAX_CALLS_IN_FLIGHT = 16  # a burst of more filled dbus-fast's writer under trio-asyncio
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"

# D-Bus errors that mean the manager is not there (any more).
GONE_ERRORS = {
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Disconnected",
}
MATCH_RULES = (
    f"type='signal',sender='{BUS_NAME}',interface='{MANAGER_IFACE}'",
    f"type='signal',sender='{BUS_NAME}',interface='{PROPERTIES_IFACE}',"
    f"member='PropertiesChanged',path_namespace='{MANAGER_PATH}/unit'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    f"member='NameOwnerChanged',arg0='{BUS_NAME}'",
)
USER_HINT = (
    "qemu-compose runs VMs as units of your systemd user manager; log in to a session that "
    "has one, or run `loginctl enable-linger $USER` so that it runs without one, then check "
    "`systemctl --user status`"
)
SYSTEM_HINT = "is systemd running as PID 1 here, and may you talk to it (root or polkit)?"


def bus_address(bus: Literal["user", "system"] | str) -> tuple[str, bool]:
    """The D-Bus address for ``bus`` and whether it is a user manager's."""
    if bus == "user":
        address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if not address:
            runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
            address = f"unix:path={runtime}/bus"
        return address, True
    if bus == "system":
        address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
        return address, False
    return bus, True
