"""The faults' parts without I/O: which signal `kill -s` means; failures told together."""

from __future__ import annotations

import signal

import pytest
import trio

from orchestrator.errors import UsageError
from orchestrator.runtime.faults.freeze import FaultError, _each, _Failed, parse_signal


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


async def test_the_vms_that_failed_are_named_together_and_the_others_done() -> None:
    done: list[str] = []

    async def step(name: str) -> None:
        await trio.sleep(0.01 if name == "b" else 0)
        if name in ("b", "d"):
            raise _Failed(f"{name} is hung")
        done.append(name)

    with pytest.raises(FaultError) as caught:
        await _each(["a", "b", "c", "d"], "pause", step)
    assert str(caught.value) == "cannot pause b, d (b: b is hung; d: d is hung)"
    assert sorted(done) == ["a", "c"]  # one failure cancels no other
