"""The bridge helper QEMU runs for ``-netdev bridge,br=<tap>,helper=<this>`` in rootless mode:
it joins the user's namespace (``userns.ENVIRONMENT`` names it), opens the TAP there (made
beforehand, on its bridge, by the link agent) and hands QEMU the descriptor.

QEMU's helper protocol (qemu-bridge-helper's): argv ``--use-vnet --fd=N --br=NAME``; send
one byte with the TAP's descriptor (SCM_RIGHTS) on the socket ``N``; exit 0. Here ``NAME`` is
the TAP's own name: QEMU stays in the host's namespaces (its user-mode NIC, hostfwd and
sockets where they are), only its bridge NICs' frames come from the namespace.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys
from collections.abc import Sequence

from . import userns
from .errors import PlumbingError

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16


def open_tap(name: str, *, vnet_hdr: bool) -> int:
    """A descriptor of the existing TAP ``name`` (in this process's namespace)."""
    if not name or len(name) >= IFNAMSIZ or "/" in name:
        raise PlumbingError(f"not a TAP name: {name!r}")
    try:  # (TUNSETIFF would make a TAP of that name: root in the namespace may)
        socket.if_nametoindex(name)
    except OSError:
        raise PlumbingError(f"TAP {name} does not exist") from None
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError as err:
        os.close(fd)
        raise PlumbingError(f"TAP {name}: {err.strerror}") from err
    return fd


def helper_path() -> str:
    """The helper's path for QEMU's ``helper=`` (this venv's entry point). QEMU would run a
    path with blanks through ``sh -c``: such a path is refused."""
    import shutil
    from pathlib import Path

    beside = Path(sys.executable).parent / "qemu-compose-tap-helper"
    path = str(beside) if beside.exists() else shutil.which("qemu-compose-tap-helper")
    if path is None:
        raise PlumbingError("qemu-compose-tap-helper is not installed (pip install the project)")
    if any(c.isspace() for c in path):
        raise PlumbingError(f"{path}: a path with blanks cannot be QEMU's helper; move the venv")
    return path


def parse(argv: Sequence[str]) -> tuple[bool, int, str]:
    """(vnet header, socket descriptor, TAP name) from QEMU's arguments."""
    vnet, fd, name = False, None, None
    for arg in argv:
        if arg == "--use-vnet":
            vnet = True
        elif arg.startswith("--fd="):
            fd = int(arg.removeprefix("--fd="))
        elif arg.startswith("--br="):
            name = arg.removeprefix("--br=")
        else:
            raise PlumbingError(f"unknown argument {arg!r}")
    if fd is None or name is None:
        raise PlumbingError("usage: --use-vnet --fd=N --br=TAP")
    return vnet, fd, name


def hand_over(argv: Sequence[str], token: str | None) -> None:
    """Do what QEMU asks (``argv``) in the namespace ``token`` names."""
    vnet, fd, name = parse(argv)
    if not token:
        raise PlumbingError(f"{userns.ENVIRONMENT} is not set: which namespace?")
    userns.enter(userns.Namespace.parse(token))
    tap = open_tap(name, vnet_hdr=vnet)
    try:
        with socket.socket(fileno=fd) as channel:
            socket.send_fds(channel, [b"\0"], [tap])
    finally:
        os.close(tap)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        hand_over(sys.argv[1:] if argv is None else argv, os.environ.get(userns.ENVIRONMENT))
    except (PlumbingError, OSError, ValueError) as err:
        print(f"qemu-compose TAP helper: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
