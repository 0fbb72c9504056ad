"""A project's event log: JSON lines in size-rotated segments, any number of followers.

Writers append whole lines under an flock, each record numbered (``seq``, one more than the
last, across segments and writer restarts). Segments are ``events-00000001.jsonl``, ...; when
the newest passes ``max_bytes`` a new one starts and the oldest beyond ``keep`` are deleted.
Followers read from any point (a sequence number, a time, or the end) and then wait for more
(woken by inotify as soon as the writer writes; polling is only the fallback), moving to the
next segment when the writer does; a follower that fell so far behind that
segments were deleted under it is told how many records it lost, never silently.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio
from inotify_simple import INotify, flags

_SEGMENT = re.compile(r"^events-(\d{8})\.jsonl$")
_TAIL_BYTES = 64 * 1024  # enough for the last line of any segment
FIRST_WAIT = 0.05  # a follower's first wait for writes, before it sets up inotify


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the log."""

    seq: int
    time: float  # when it was written (host clock, seconds since the epoch)
    vm: str
    event: str  # a QMP event name (SHUTDOWN, ...) or one of ours (QMP_CONNECTED, ...)
    source: str = "qmp"  # qmp, supervisor, unit, probe, health, eventlog, ...
    data: dict[str, Any] = {}
    qemu_time: float | None = None  # QEMU's own timestamp of a QMP event


_decode = msgspec.json.Decoder(EventRecord).decode
_encode = msgspec.json.Encoder().encode


class EventLog:
    """The event log in ``directory`` (created 0700)."""

    def __init__(self, directory: Path, *, max_bytes: int = 8 << 20, keep: int = 8) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.keep = keep
        # What this writer left: (segment number, its (inode, size, mtime) after our append,
        # the seq written). The next append finds the segment as we left it when nobody
        # else wrote since, and then needs neither the directory nor the segment's tail.
        self._left: tuple[int, tuple[int, int, int], int] | None = None

    # -- segments -----------------------------------------------------------------------------

    def segments(self) -> list[tuple[int, Path]]:
        """(number, path) of every segment, oldest first."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                m = _SEGMENT.match(entry.name)
                if m:
                    found.append((int(m.group(1)), Path(entry.path)))
        return sorted(found)

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"events-{number:08d}.jsonl"

    @staticmethod
    def _last_record(path: Path) -> EventRecord | None:
        try:
            with path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - _TAIL_BYTES))
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(lines):
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                return _decode(line)
        return None

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / "events.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def append(
        self,
        vm: str,
        event: str,
        data: dict[str, Any] | None = None,
        *,
        source: str = "qmp",
        qemu_time: float | None = None,
    ) -> EventRecord:
        """Write one record and return it (with its sequence number). OSError when it cannot
        (a full disk): then nothing of it is in the log."""
        with self._locked():
            number, last_seq, size = self._where_to_append()
            if size >= self.max_bytes:
                number += 1
            path = self._segment_path(number)
            record = EventRecord(
                seq=last_seq + 1,
                time=time.time(),
                vm=vm,
                event=event,
                source=source,
                data=data or {},
                qemu_time=qemu_time,
            )
            line = _encode(record) + b"\n"
            self._left = None
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                _append_whole(fd, line, path)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            self._left = (number, (st.st_ino, st.st_size, st.st_mtime_ns), record.seq)
            if size >= self.max_bytes:  # a new segment: the oldest beyond `keep` go
                for old, old_path in self.segments()[: -self.keep]:
                    if old < number:
                        old_path.unlink(missing_ok=True)
            return record

    def _where_to_append(self) -> tuple[int, int, int]:
        """(the newest segment's number, the last seq written, that segment's size)."""
        if self._left is not None and self._left[1][1] < self.max_bytes:
            # Not full when we left it: had another writer written since, it would have
            # written there (only a full segment makes a writer start the next one).
            number, left, seq = self._left
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self._segment_path(number))
                if (st.st_ino, st.st_size, st.st_mtime_ns) == left:
                    return number, seq, st.st_size
        segments = self.segments()
        number = segments[-1][0] if segments else 1
        last = None
        for _, candidate in reversed(segments):
            last = self._last_record(candidate)
            if last is not None:
                break
        size = 0
        with contextlib.suppress(FileNotFoundError):
            size = self._segment_path(number).stat().st_size
        return number, last.seq if last else 0, size

    # -- reading ------------------------------------------------------------------------------

    def read(self, *, since_seq: int = 0, since_time: float = 0.0) -> list[EventRecord]:
        """Every record now in the log at or after ``since_seq`` and ``since_time``."""
        records = []
        for _, path in self._segments_from(since_seq, since_time):
            with contextlib.suppress(FileNotFoundError):
                for line in path.read_bytes().splitlines():
                    record = _parse(line)
                    if record and record.seq >= since_seq and record.time >= since_time:
                        records.append(record)
        return records

    def _segments_from(self, since_seq: int, since_time: float) -> list[tuple[int, Path]]:
        """The segments that can hold records from that point on: skip whole older ones."""
        segments = self.segments()
        start = 0
        for i in range(len(segments) - 1, -1, -1):
            last = self._last_record(segments[i][1])
            if last is not None and (last.seq < since_seq or last.time < since_time):
                start = i + 1
                break
        return segments[start:]

    @asynccontextmanager
    async def follow(
        self,
        *,
        since_seq: int = 0,
        since_time: float = 0.0,
        from_end: bool = False,
        poll_interval: float = 1.0,
    ) -> AsyncIterator[Follower]:
        """Records from a point on (the start, ``since_*``, or the end), then as they come."""
        follower = Follower(self, since_seq, since_time, from_end, poll_interval)
        try:
            yield follower
        finally:
            follower.close()


def _append_whole(fd: int, line: bytes, path: Path) -> None:
    """Append ``line`` or nothing: a write that a full disk cut short is taken back."""
    size = os.fstat(fd).st_size
    try:
        written = os.write(fd, line)
    except OSError:
        os.ftruncate(fd, size)
        raise
    if written != len(line):
        os.ftruncate(fd, size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _parse(line: bytes) -> EventRecord | None:
    try:
        return _decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # a torn or foreign line: skip it


class Follower:
    """An async iterator of EventRecord that waits for new ones; never ends by itself."""

    def __init__(
        self, log: EventLog, since_seq: int, since_time: float, from_end: bool, poll: float
    ) -> None:
        self._log = log
        self._since_seq = since_seq
        self._since_time = since_time
        self._poll = poll
        self._segment = 0
        self._file: Any = None
        self._buffer = b""
        # A reader that asks from seq N expects N next: a gap before it is a loss too.
        self._last_seq: int | None = since_seq - 1 if since_seq > 0 else None
        self._pending: list[EventRecord] = []
        self._inotify: INotify | None = None
        self._waited = False
        if from_end:
            segments = log.segments()
            if segments:
                self._segment, path = segments[-1]
                self._file = path.open("rb")
                self._file.seek(0, os.SEEK_END)
                last = log._last_record(path)
                self._last_seq = last.seq if last else None
        else:
            start = log._segments_from(since_seq, since_time)
            if start:
                self._segment = start[0][0] - 1  # opened on the first read

    def close(self) -> None:
        self._close_file()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def _wait_for_writes(self) -> None:
        """Until the directory changes (inotify), or ``poll`` seconds at most.

        The first wait is a short sleep: a follower done within it (a no-op `up --wait`)
        never sets up inotify, whose close costs 7-20 ms (the kernel's grace period)."""
        if not self._waited:
            self._waited = True
            await trio.sleep(min(self._poll, FIRST_WAIT))
            return
        if self._inotify is None and self._log.directory.is_dir():
            try:
                self._inotify = INotify()
                self._inotify.add_watch(
                    self._log.directory, flags.MODIFY | flags.CREATE | flags.MOVED_TO
                )
            except OSError:  # out of watches, say: polling still works
                if self._inotify is not None:
                    self._inotify.close()
                self._inotify = None
        if self._inotify is None:
            await trio.sleep(self._poll)
            return
        with trio.move_on_after(self._poll):
            await trio.lowlevel.wait_readable(self._inotify.fd)
            self._inotify.read(timeout=0)

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> EventRecord:
        while not self._pending:
            if not self._read_available():
                await self._wait_for_writes()
        return self._pending.pop(0)

    def _read_available(self) -> bool:
        """Queue what is there to read now; False when there was nothing new."""
        if self._file is not None:
            chunk = self._file.read()
            if chunk:
                self._buffer += chunk
                *lines, self._buffer = self._buffer.split(b"\n")
                for line in lines:
                    self._queue(line)
                return True
        # At the end of this segment: go on to the next one, if the writer has started it.
        newer = [(n, p) for n, p in self._log.segments() if n > self._segment]
        if not newer:
            return False
        number, path = newer[0]
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # deleted just now: try again with what is left
            self._segment = number
            return True
        self._close_file()
        self._file, self._segment, self._buffer = handle, number, b""
        return True

    def _queue(self, line: bytes) -> None:
        record = _parse(line)
        if record is None or record.seq < self._since_seq or record.time < self._since_time:
            return
        if self._last_seq is not None and record.seq > self._last_seq + 1:
            self._pending.append(
                EventRecord(
                    seq=self._last_seq + 1,
                    time=record.time,
                    vm="",
                    event="EVENTS_LOST",
                    source="eventlog",
                    data={"first": self._last_seq + 1, "last": record.seq - 1},
                )
            )
        if self._last_seq is None or record.seq > self._last_seq:
            self._last_seq = record.seq
            self._pending.append(record)


def record_json(record: EventRecord) -> str:
    """One record as the JSON line `watch --json` prints."""
    return _encode(record).decode()
