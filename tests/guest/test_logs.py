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
        consoles = {"a": (a, len(b"old\r\n")), "b": (b, 0)}  # b's log is made later
        nursery.start_soon(follow_consoles, consoles, {"a": b"a | ", "b": b"b | "}, out)
        with a.open("ab") as fh:
            fh.write(b"new line\r\npart")
        await trio.sleep(0.5)
        b.write_bytes(b"hello\n")
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert sorted(out.getvalue().splitlines()) == [b"a | new line", b"b | hello"]
