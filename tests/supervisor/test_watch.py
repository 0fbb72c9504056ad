"""`watch`'s pure parts: --since and the human line of an event."""

from __future__ import annotations

import datetime

import pytest

from orchestrator.errors import UsageError
from orchestrator.supervisor.eventlog import EventRecord
from orchestrator.supervisor.watch import Since, format_record, parse_since

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "since"),
    [
        (None, Since(from_end=True)),
        ("all", Since()),
        ("#42", Since(seq=42)),
        ("10m", Since(time=NOW - 600)),
        ("1h30m", Since(time=NOW - 5400)),
        ("1700000000", Since(time=1_700_000_000.0)),
        ("1700000000.5", Since(time=1_700_000_000.5)),
        ("2026-11-27T10:00:00+00:00", Since(time=1_795_773_600.0)),
    ],
)
def test_since(text: str | None, since: Since) -> None:
    assert parse_since(text, now=NOW) == since


def test_since_local_time() -> None:
    expected = datetime.datetime(2026, 11, 27, 10, 0).timestamp()  # local, as a person means it
    assert parse_since("2026-11-27 10:00", now=NOW) == Since(time=expected)


@pytest.mark.parametrize("text", ["yesterday", "#x", "10 minutes", "-5m", ""])
def test_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(UsageError, match="--since"):
        parse_since(text, now=NOW)


def record(**kw: object) -> EventRecord:
    base: dict[str, object] = {"seq": 7, "time": 1_800_000_000.25, "vm": "web", "event": "X"}
    return EventRecord(**{**base, **kw})  # type: ignore[arg-type]


def test_a_qmp_event_as_a_line() -> None:
    line = format_record(record(event="SHUTDOWN", data={"guest": True, "reason": "guest-shutdown"}))
    stamp = datetime.datetime.fromtimestamp(1_800_000_000.25).strftime("%H:%M:%S.250")
    assert line == f"{stamp} web              SHUTDOWN guest=true reason=guest-shutdown"


def test_a_step_of_up_as_a_line() -> None:
    line = format_record(
        record(event="SSH", source="up", data={"status": "working", "detail": "dev@127.0.0.1:2222"})
    )
    assert line.endswith(" web              ssh working dev@127.0.0.1:2222")


def test_a_project_event_and_values_with_spaces() -> None:
    line = format_record(record(vm="", event="EVENTS_LOST", data={"why": "two words", "n": 3}))
    assert line.endswith(" -                EVENTS_LOST why='two words' n=3")


def test_a_change_of_health_as_a_line() -> None:
    data = {"old": "healthy", "new": "unhealthy", "failing_streak": 3, "output": "a\nno file\n"}
    line = format_record(record(event="health_status", source="health", data=data))
    assert line.endswith(
        " web              health_status healthy -> unhealthy (failing streak 3)"
        " last output: 'no file'"
    )
    data = {"old": "starting", "new": "healthy", "failing_streak": 0, "output": ""}
    line = format_record(record(event="health_status", source="health", data=data))
    assert line.endswith(" web              health_status starting -> healthy")
