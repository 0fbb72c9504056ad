"""The event log: numbering, rotation, followers from any point, writers in several processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import trio

from orchestrator.supervisor.eventlog import EventLog, EventRecord, record_json


def test_append_and_read(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events")
    first = log.append("web", "STOP", {}, qemu_time=1.5)
    second = log.append("db", "QMP_CONNECTED", {"status": "running"}, source="supervisor")
    assert (first.seq, second.seq) == (1, 2)
    assert log.read() == [first, second]
    assert log.read(since_seq=2) == [second]
    assert log.read(since_time=second.time) == [second]
    assert (tmp_path / "events").stat().st_mode & 0o777 == 0o700
    assert '"event":"STOP"' in record_json(first)


def test_numbering_survives_a_new_writer(tmp_path: Path) -> None:
    EventLog(tmp_path).append("a", "X")
    EventLog(tmp_path).append("a", "Y")
    assert [r.seq for r in EventLog(tmp_path).read()] == [1, 2]


def test_a_writer_sees_what_others_wrote_since_its_last_record(tmp_path: Path) -> None:
    """A writer that remembers where it left the log checks the log is still as it left it."""
    a, b = EventLog(tmp_path), EventLog(tmp_path)
    seqs = [w.append("vm", "X").seq for w in (a, a, b, a, b, b, a)]
    assert seqs == list(range(1, 8))
    for path in tmp_path.glob("events-*.jsonl"):  # the log removed (destroy): anew from 1
        path.unlink()
    assert a.append("vm", "Y").seq == 1


def test_a_writer_that_filled_a_segment_sees_the_next_one_another_started(tmp_path: Path) -> None:
    a, b = EventLog(tmp_path, max_bytes=300), EventLog(tmp_path, max_bytes=300)
    seqs = [a.append("vm", "X").seq for _ in range(3)]  # a fills the first segment
    seqs += [b.append("vm", "X").seq, a.append("vm", "X").seq]  # b starts the next one
    assert seqs == [1, 2, 3, 4, 5]
    assert len(a.segments()) == 2


def test_rotation_keeps_numbering_and_deletes_the_oldest(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=400, keep=3)
    for i in range(60):
        log.append("vm", "TICK", {"i": i})
    segments = log.segments()
    assert len(segments) == 3
    records = log.read()
    seqs = [r.seq for r in records]
    assert seqs == list(range(seqs[0], 61))  # consecutive up to the last
    assert seqs[0] > 1  # the oldest segments are gone


def test_torn_lines_are_skipped(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.append("vm", "A")
    with (tmp_path / "events-00000001.jsonl").open("ab") as fh:
        fh.write(b'{"seq": 2, "tim\n')
    log.append("vm", "B")
    assert [(r.seq, r.event) for r in log.read()] == [(1, "A"), (2, "B")]


async def test_two_followers_see_the_same_events(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=500, keep=100)
    log.append("vm", "BEFORE")
    seen: dict[str, list[EventRecord]] = {"a": [], "b": []}

    async def follow(key: str, task_status: trio.TaskStatus[None]) -> None:
        async with log.follow(poll_interval=0.01) as records:
            task_status.started()
            async for record in records:
                seen[key].append(record)
                if record.event == "LAST":
                    return

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(follow, "a")
            await nursery.start(follow, "b")
            for i in range(50):  # across several segments
                log.append("vm", "TICK", {"i": i})
                if i % 7 == 0:
                    await trio.sleep(0.01)
            log.append("vm", "LAST")
    assert seen["a"] == seen["b"]
    assert [r.event for r in seen["a"]] == ["BEFORE"] + ["TICK"] * 50 + ["LAST"]
    assert [r.seq for r in seen["a"]] == list(range(1, 53))


async def test_follow_from_a_sequence_number_and_from_the_end(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=300)
    for i in range(20):
        log.append("vm", "OLD", {"i": i})
    async with log.follow(since_seq=15) as records:
        with trio.fail_after(5):
            got = [(await records.__anext__()).seq for _ in range(6)]
    assert got == [15, 16, 17, 18, 19, 20]
    async with log.follow(from_end=True, poll_interval=0.01) as records:
        log.append("vm", "NEW")
        with trio.fail_after(5):
            record = await records.__anext__()
    assert (record.seq, record.event) == (21, "NEW")


async def test_a_follower_left_behind_is_told_what_it_lost(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=200, keep=2)
    for i in range(30):
        log.append("vm", "TICK", {"i": i})
    async with log.follow(since_seq=1) as records:
        with trio.fail_after(5):
            lost = await records.__anext__()
            after = await records.__anext__()
    assert lost.event == "EVENTS_LOST"
    assert lost.data["first"] == 1
    assert after.seq == lost.data["last"] + 1


async def test_follow_an_empty_log_waits_for_the_first_record(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "not-yet")
    async with log.follow(poll_interval=0.01) as records:
        with trio.move_on_after(0.1) as scope:
            await records.__anext__()
        assert scope.cancelled_caught
        log.append("vm", "FIRST")
        with trio.fail_after(5):
            assert (await records.__anext__()).event == "FIRST"


def test_writers_in_several_processes_number_without_gaps(tmp_path: Path) -> None:
    writer = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from orchestrator.supervisor.eventlog import EventLog
        log = EventLog(Path(sys.argv[1]), max_bytes=2000, keep=1000)
        for i in range(100):
            log.append(sys.argv[2], "TICK", {"i": i})
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", writer, str(tmp_path), f"w{n}"]) for n in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    records = EventLog(tmp_path).read()
    assert [r.seq for r in records] == list(range(1, 401))
    for n in range(4):
        assert [r.data["i"] for r in records if r.vm == f"w{n}"] == list(range(100))
