"""Host ports for user-mode networking: choosing them, testing them, QEMU's -netdev user.

A port is chosen by actually binding it (a port in someone's use cannot be bound), under the
registry's lock so that two projects starting at once never pick the same one; explicit
ports are honoured or refused with the VM's name.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Collection, Sequence

import msgspec

from .errors import PortInUseError

SSH_PORT_BASE = 2222
PORT_MAX = 65535


class Forward(msgspec.Struct, frozen=True):
    """One hostfwd of QEMU's user-mode network: host_ip:host_port -> guest_port."""

    host_port: int
    guest_port: int
    host_ip: str = "127.0.0.1"
    protocol: str = "tcp"


def port_is_free(port: int, host: str = "127.0.0.1", protocol: str = "tcp") -> bool:
    """True if ``port`` can be bound on ``host`` now, as QEMU binds it: with SO_REUSEADDR
    (libslirp's listeners set it), so that a port whose last connections linger in
    TIME_WAIT (a VM just stopped, its SSH port) is free; one that something listens on is
    not."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def choose_port(
    vm: str,
    requested: int | None,
    *,
    taken: Collection[int] = (),
    is_free: Callable[[int], bool] = port_is_free,
    start: int = SSH_PORT_BASE,
    protocol: str = "tcp",
) -> int:
    """``requested`` if it is free, else the first free port from ``start``.

    ``taken``: ports allocated to other VMs (running or not), which binding cannot see.
    """
    if requested is not None:
        if requested in taken:
            raise PortInUseError(vm, requested, protocol, "allocated to another VM")
        if not is_free(requested):
            raise PortInUseError(vm, requested, protocol, "another program listens on it")
        return requested
    for port in range(start, PORT_MAX + 1):
        if port not in taken and is_free(port):
            return port
    raise PortInUseError(vm, start, protocol, f"no free port from {start} to {PORT_MAX}")


def choose_port_in(
    vm: str,
    ports: range,
    *,
    taken: Collection[int] = (),
    is_free: Callable[[int], bool] = port_is_free,
    protocol: str = "tcp",
) -> int:
    """The first free port of ``ports`` (docker compose's ``"8000-8010:80"``)."""
    for port in ports:
        if port not in taken and is_free(port):
            return port
    last = ports[-1] if ports else ports.start
    raise PortInUseError(vm, ports.start, protocol, f"and so is every port up to {last}")


def user_netdev(netdev_id: str, forwards: Sequence[Forward]) -> str:
    """The value of ``-netdev`` for a user-mode NIC with these forwards."""
    parts = [f"user,id={netdev_id}"]
    for fwd in forwards:
        for value in (fwd.host_ip, fwd.protocol):
            if "," in value or ":" in value.replace(".", ""):
                raise ValueError(f"invalid forward value {value!r}")
        parts.append(f"hostfwd={fwd.protocol}:{fwd.host_ip}:{fwd.host_port}-:{fwd.guest_port}")
    return ",".join(parts)
