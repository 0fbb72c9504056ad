"""`console VM`: the terminal joined to the VM's serial console socket; Ctrl+] detaches.

On a terminal, the terminal is put in raw mode (every key goes to the guest, Ctrl-C too) and
restored on the way out, whatever happens. Without one, stdin is sent as it is and its end
detaches.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import QemuComposeError

DETACH = 0x1D  # Ctrl+]


class ConsoleError(QemuComposeError):
    """The console socket cannot be reached (the VM does not run)."""


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def connect(path: Path, vm: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as err:
        sock.close()
        raise ConsoleError(
            f"{vm} has no console to attach to ({err.strerror}): is it running? "
            f"(qemu-compose up {vm})"
        ) from None
    return sock


def attach(path: Path, vm: str, *, stdin: int = 0, stdout: int = 1) -> str:
    """Join stdin/stdout to the console until Ctrl+], the end of stdin, or the VM's end.

    Returns why it ended: "detached", "end of input" or "console closed".
    """
    sock = connect(path, vm)
    sys.stderr.write(f"Connected to the console of {vm}; Ctrl+] detaches.\r\n")
    sys.stderr.flush()
    with sock, _raw(stdin):
        while True:
            ready, _, _ = select.select([stdin, sock.fileno()], [], [])
            if sock.fileno() in ready:
                data = sock.recv(65536)
                if not data:
                    return "console closed"
                os.write(stdout, data)
            if stdin in ready:
                keys = os.read(stdin, 4096)
                if not keys:
                    return "end of input"
                cut = keys.find(DETACH)
                if cut >= 0:
                    sock.sendall(keys[:cut])
                    return "detached"
                sock.sendall(keys)
