"""`logs`: the console log's tail and following it across a VM's re-creation."""

from __future__ import annotations

import io
from pathlib import Path

import trio

from orchestrator.guest.logs import (
    Lines,
    console_prefixes,
    follow_consoles,
    follow_file,
    tail_bytes,
)


def test_tail(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    assert tail_bytes(log, 5) == (b"", 0)
    log.write_bytes(b"one\ntwo\nthree\npartial")
    assert tail_bytes(log, None) == (b"one\ntwo\nthree\npartial", 21)
    assert tail_bytes(log, 2) == (b"three\npartial", 21)
    assert tail_bytes(log, 0) == (b"", 21)


async def test_follow_sees_appends_and_a_file_made_anew(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"old\n")
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_file, log, 4, seen.append, 0.02)
        await trio.sleep(0.1)
        with log.open("ab") as fh:
            fh.write(b"booting\n")
        with trio.fail_after(5):
            while b"".join(seen) != b"booting\n":
                await trio.sleep(0.02)
        log.unlink()  # destroy, then up: a new, shorter console log
        log.write_bytes(b"new\n")
        with trio.fail_after(5):
            while b"".join(seen) != b"booting\nnew\n":
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


def test_console_lines_are_whole_and_prefixed() -> None:
    lines = Lines(b"web | ")
    assert lines.feed(b"Booting\r\nhalf a ") == b"web | Booting\n"
    assert lines.feed(b"line\r\n\r\nnext") == b"web | half a line\nweb | \n"
    assert lines.feed(b"") == b""
    assert Lines(b"").feed(b"raw\r\n") == b"raw\n"


def test_prefixes_are_padded_and_coloured_as_docker_compose_does() -> None:
    plain = console_prefixes(["db", "web-10"], colour=False)
    assert plain == {"db": b"db     | ", "web-10": b"web-10 | "}
    coloured = console_prefixes([f"v{i}" for i in range(13)], colour=True)
    assert coloured["v0"] == b"\x1b[36mv0  | \x1b[0m"
    assert coloured["v1"].startswith(b"\x1b[33m")
    assert coloured["v12"] == coloured["v0"].replace(b"v0 ", b"v12")  # the palette goes round


async def test_consoles_are_followed_line_by_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"old\r\n")
    out = io.BytesIO()
    async with trio.open_nursery() as nursery:
        consoles = {"a": (a, len(b"old\r\n"), a.stat().st_ino), "b": (b, 0, None)}  # b: later
        nursery.start_soon(follow_consoles, consoles, {"a": b"a | ", "b": b"b | "}, out)
        with a.open("ab") as fh:
            fh.write(b"new line\r\npart")
        await trio.sleep(0.5)
        b.write_bytes(b"hello\n")
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert sorted(out.getvalue().splitlines()) == [b"a | new line", b"b | hello"]


async def test_a_console_made_anew_is_read_from_its_start(tmp_path: Path) -> None:
    """The VM was re-created since its end was taken: its new log is longer than that end."""
    log = tmp_path / "console.log"
    log.write_bytes(b"x\n")
    inode = log.stat().st_ino
    log.rename(tmp_path / "old.log")  # (still there: the new file cannot have its inode)
    log.write_bytes(b"one\ntwo\nthree\nfour\n")
    out = io.BytesIO()
    with trio.move_on_after(0.5):
        await follow_consoles({"a": (log, 2, inode)}, {}, out)
    assert out.getvalue() == b"one\ntwo\nthree\nfour\n"


def test_what_could_drive_a_terminal_is_dropped_for_one() -> None:
    line = b"\x1b[1;32mok\x1b[0m \x1b]0;pwned\x07\x1b]52;c;Zm9v\x1b\\tab\there\rover\x1bc\x07\r\n"
    assert Lines(b"a | ", terminal=True).feed(line) == b"a | \x1b[1;32mok\x1b[0m tab\thereover\n"
    assert Lines(b"", terminal=True, colours=False).feed(line) == b"ok tab\thereover\n"
    assert Lines(b"").feed(line) == line[:-2] + b"\n"  # not a terminal: as it came


def test_a_line_that_never_ends_goes_out_at_64_kib() -> None:
    lines = Lines(b"> ")
    assert lines.feed(b"x" * 1000) == b""
    out = lines.feed(b"y" * (64 << 10))
    assert out == b"> " + b"x" * 1000 + b"y" * (64 << 10) + b"\n"
    assert lines.feed(b"z\n") == b"> z\n"
