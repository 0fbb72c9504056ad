"""`console`: a terminal joined to a console socket, against a real unix socket and a real pty."""

from __future__ import annotations

import contextlib
import os
import socket
import termios
import threading
from pathlib import Path

import pytest

from orchestrator.guest.console import ConsoleError, attach


class Guest:
    """A unix socket server standing in for QEMU's console chardev: greets, records input."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.received = b""
        self.got_x = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            with contextlib.suppress(OSError):  # the client may have gone already: read anyway
                conn.sendall(b"login: ")
            while data := conn.recv(1024):
                self.received += data
                if b"x" in self.received:
                    self.got_x.set()


def test_raw_terminal_goes_to_the_guest_and_ctrl_bracket_detaches(shortdir: Path) -> None:
    directory = shortdir
    guest = Guest(directory / "console.sock")
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    result: list[str] = []
    worker = threading.Thread(
        target=lambda: result.append(
            attach(directory / "console.sock", "web", stdin=slave, stdout=slave)
        )
    )
    worker.start()
    try:
        assert os.read(master, 100).endswith(b"login: ")  # the guest's output reaches us
        os.write(master, b"x")  # no newline: only a raw terminal passes it on at once
        assert guest.got_x.wait(10)
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # raw while attached
        os.write(master, b"\x03yes\x1dnot sent")  # Ctrl-C goes to the guest; Ctrl+] ends
        worker.join(10)
        assert result == ["detached"]
        guest.thread.join(5)  # it has read all once the console is closed
        assert guest.received == b"x\x03yes"
        assert termios.tcgetattr(slave) == before  # the terminal is given back as it was
    finally:
        os.close(master)
        os.close(slave)


def test_end_of_input_detaches_without_a_terminal(shortdir: Path) -> None:
    directory = shortdir
    guest = Guest(directory / "console.sock")
    read_end, write_end = os.pipe()
    out_read, out_write = os.pipe()
    os.write(write_end, b"abc")
    os.close(write_end)
    assert attach(directory / "console.sock", "web", stdin=read_end, stdout=out_write) == (
        "end of input"
    )
    guest.thread.join(5)
    assert guest.received == b"abc"
    os.close(read_end)
    os.close(out_write)
    os.close(out_read)


def test_a_vm_that_does_not_run_has_no_console(shortdir: Path) -> None:
    with pytest.raises(ConsoleError, match="is it running"):
        attach(shortdir / "console.sock", "web")
