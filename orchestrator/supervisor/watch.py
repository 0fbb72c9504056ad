"""`watch`: which records of the project's event log, from when (--since), and each as a line
for a person. Pure."""

from __future__ import annotations

import datetime
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from orchestrator.config.quantities import parse_duration
from orchestrator.errors import UsageError
from orchestrator.supervisor.eventlog import EventRecord


@dataclass(frozen=True, slots=True)
class Since:
    seq: int = 0
    time: float = 0.0
    from_end: bool = False


def parse_since(text: str | None, *, now: float | None = None) -> Since:
    """--since: none (only new events), "all", "#N" (from event N on), a duration back from
    now ("10m", "1h30m"), an ISO 8601 time (local unless it names its zone) or epoch seconds.
    """
    if text is None:
        return Since(from_end=True)
    text = text.strip()
    if text == "all":
        return Since()
    if text.startswith("#") and text[1:].isdigit():
        return Since(seq=int(text[1:]))
    now = time.time() if now is None else now
    try:
        return Since(time=float(text))
    except ValueError:
        pass
    try:
        return Since(time=now - parse_duration(text))
    except ValueError:
        pass
    try:
        return Since(time=datetime.datetime.fromisoformat(text).timestamp())
    except ValueError:
        raise UsageError(
            f"--since {text!r}: give 'all', '#N', a duration like 10m, or a time like "
            "2026-11-27T10:00:00"
        ) from None


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and (not value or " " in value):
        return repr(value)
    return str(value)


def format_record(record: EventRecord) -> str:
    """One line for a person: time, VM, event, then its data as key=value."""
    stamp = datetime.datetime.fromtimestamp(record.time).strftime("%H:%M:%S.%f")[:-3]
    data = dict(record.data)
    if record.source == "up":  # a step of up/stop/destroy: STAGE status detail
        detail = data.pop("detail", "")
        words = [record.event.lower(), str(data.pop("status", ""))]
        if detail:
            words.append(detail)
    elif record.event == "health_status":  # healthy -> unhealthy (streak 3): its last output
        streak = data.get("failing_streak", 0)
        output = str(data.get("output", "")).strip().splitlines()[-1:]
        words = [record.event, f"{data.get('old')} -> {data.get('new')}"]
        words += [f"(failing streak {streak})"] if streak else []
        words += [f"last output: {output[0][:120]!r}"] if output else []
    else:
        words = [record.event, *(f"{k}={_value(v)}" for k, v in data.items())]
    return f"{stamp} {record.vm or '-':<16} {' '.join(words)}"


def concerns(record: EventRecord, vms: Collection[str]) -> bool:
    """A record of one of ``vms`` (any, when empty), or of the project as a whole."""
    return not vms or not record.vm or record.vm in vms
