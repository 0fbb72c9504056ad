"""`logs`: the console log's tail and following it across a VM's re-creation."""

from __future__ import annotations

from pathlib import Path

import trio

from orchestrator.guest.logs import follow_file, tail_bytes


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
