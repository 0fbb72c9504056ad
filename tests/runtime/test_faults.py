"""The faults' pure part: which signal `kill -s` means."""

from __future__ import annotations

import signal

import pytest

from orchestrator.errors import UsageError
from orchestrator.runtime.faults import parse_signal


@pytest.mark.parametrize(
    ("text", "expected"),
    [("KILL", signal.SIGKILL), ("SIGKILL", signal.SIGKILL), ("term", signal.SIGTERM),
     ("9", signal.SIGKILL), (" INT ", signal.SIGINT), ("sigusr1", signal.SIGUSR1)],
)  # fmt: skip
def test_a_signal_by_name_or_number(text: str, expected: signal.Signals) -> None:
    assert parse_signal(text) is expected


@pytest.mark.parametrize("text", ["NOPE", "", "SIG", "999", "-9", "KILL9"])
def test_what_names_no_signal_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="signal"):
        parse_signal(text)
