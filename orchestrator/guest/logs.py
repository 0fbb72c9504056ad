"""`logs VM`: the unit's journal (QEMU's own messages, start and stop) and the serial console.

The console log holds everything the guest printed on its serial port since the VM was first
powered on (QEMU appends to it across restarts). Journal lines come first, each marked
``unit |``; then the console. With ``follow`` both are followed until Ctrl-C.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import trio

import systemd_dbus

JOURNAL_MARK = b"unit | "


def tail_bytes(path: Path, lines: int | None) -> tuple[bytes, int]:
    """The last ``lines`` lines of a file (all when None), and the offset of its end."""
    try:
        with path.open("rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return b"", 0
    end = len(data)
    if lines is not None:
        parts = data.splitlines(keepends=True)
        data = b"".join(parts[-lines:]) if lines else b""
    return data, end


async def follow_file(
    path: Path,
    offset: int,
    write: Callable[[bytes], None],
    poll: float = 0.2,
    inode: int | None = None,
) -> None:
    """Write what is appended to ``path`` from ``offset`` on; start over if it is replaced
    (``inode``: the file the offset is in, when known)."""
    while True:
        try:
            info = path.stat()
        except FileNotFoundError:
            await trio.sleep(poll)
            continue
        if inode is not None and (info.st_ino != inode or info.st_size < offset):
            offset = 0  # destroyed and made anew
        inode = info.st_ino
        if info.st_size > offset:
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read(1 << 20)  # (a MiB at a time: the rest at the next look)
            offset += len(chunk)
            write(chunk)
            if info.st_size > offset:
                await trio.lowlevel.checkpoint()
                continue
        await trio.sleep(poll)


def _writer(out: BinaryIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    return write


async def show_logs(
    unit: str,
    console_log: Path,
    *,
    user: bool,
    journal_dir: Path | None,
    follow: bool,
    lines: int | None,
    sources: frozenset[str] = frozenset({"journal", "console"}),
    out: BinaryIO = sys.stdout.buffer,
) -> None:
    write = _writer(out)
    argv = systemd_dbus.journal_argv(
        unit, user=user, lines=lines, directory=journal_dir, follow=follow
    )
    async with trio.open_nursery() as nursery:
        if "journal" in sources:
            if follow:
                nursery.start_soon(_journal_lines, argv, write)
            else:
                await _journal_lines(argv, write)
        if "console" in sources:
            data, end = tail_bytes(console_log, lines)
            write(data)
            if follow:
                nursery.start_soon(follow_file, console_log, end, write)


async def _journal_lines(argv: list[str], write: Callable[[bytes], None]) -> None:
    """journalctl's lines, each marked; nothing (not an error) when it cannot be run."""
    try:
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
    except OSError:
        return
    assert process.stdout is not None
    buffer = b""
    try:
        async for chunk in process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                write(JOURNAL_MARK + line + b"\n")
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


# docker compose's colours for its services' prefixes: the 6 plain ANSI ones, then bright
_COLOURS = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95, 94, 91)


def console_prefixes(names: list[str], *, colour: bool) -> dict[str, bytes]:
    """Each VM's ``name | `` (names padded to the longest), coloured as docker compose
    colours its services' when ``colour``."""
    width = max((len(n) for n in names), default=0)
    prefixes = {}
    for i, name in enumerate(names):
        text = f"{name:<{width}} | "
        if colour:
            text = f"\x1b[{_COLOURS[i % len(_COLOURS)]}m{text}\x1b[0m"
        prefixes[name] = text.encode()
    return prefixes


class Lines:
    """What a console prints, as whole lines, each with ``prefix``: a line waits for its end
    (one that never ends goes out at 64 KiB), a carriage return before it goes (the serial
    line ends lines with CR LF). ``terminal``: for a terminal, what the guest sent that could
    drive it (control characters, escape sequences) is dropped, but for colours
    (``colours``: kept)."""

    LONGEST = 64 << 10

    def __init__(self, prefix: bytes, *, terminal: bool = False, colours: bool = True) -> None:
        self.prefix = prefix
        self.terminal = terminal
        self.colours = colours
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) > self.LONGEST:
            complete.append(self._partial)
            self._partial = b""
        return b"".join(self.prefix + self._clean(line.rstrip(b"\r")) + b"\n" for line in complete)

    def _clean(self, line: bytes) -> bytes:
        if not self.terminal:
            return line
        return _ESCAPES.sub(lambda m: m[0] if self.colours and m[0].endswith(b"m") else b"", line)


# An escape sequence (CSI ... final, OSC ... BEL/ST, or ESC and one character) or a control
# character but tab: what a guest could use to drive the user's terminal.
_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|[\x00-\x08\x0a-\x1f\x7f]"
)


async def follow_consoles(
    consoles: dict[str, tuple[Path, int, int | None]],
    prefixes: dict[str, bytes],
    out: BinaryIO = sys.stdout.buffer,
    *,
    terminal: bool = False,
    colours: bool = True,
) -> None:
    """Every VM's console log from its offset (in the file of that inode: another is read
    from its start), line by line, prefixed, until cancelled or ``out`` cannot be written
    (a reader gone: it returns)."""
    write = _writer(out)

    async with trio.open_nursery() as nursery:

        def through(lines: Lines) -> Callable[[bytes], None]:
            def send(data: bytes) -> None:
                try:
                    write(lines.feed(data))
                except OSError:  # (`up | head`, a terminal hung up): nobody to write to
                    nursery.cancel_scope.cancel()

            return send

        for name, (path, offset, inode) in consoles.items():
            lines = Lines(prefixes.get(name, b""), terminal=terminal, colours=colours)
            nursery.start_soon(follow_file, path, offset, through(lines), 0.2, inode)
