"""docker's healthcheck rules (start period, start interval, interval, retries), in virtual
time: the pure `Health` and `until_healthy` driving it with a scripted probe."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from orchestrator.supervisor.health import (
    Health,
    HealthRules,
    HealthStatus,
    UnhealthyError,
    until_healthy,
)

RULES = HealthRules(interval=30, timeout=5, retries=3, start_period=60, start_interval=5)


class Script:
    """A probe that answers from a list and notes when it was asked (trio's clock)."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.asked: list[float] = []
        self.timeouts: list[float] = []

    async def __call__(self, timeout: float) -> bool:
        self.asked.append(trio.current_time())
        self.timeouts.append(timeout)
        return self.answers.pop(0)


def test_failures_in_the_start_period_do_not_count() -> None:
    health = Health(RULES, began=0.0)
    for now in (0.0, 5.0, 55.0):
        assert health.record(False, now) is HealthStatus.STARTING
        assert health.next_delay(now) == 5  # start_interval
    assert health.failures == 0
    assert health.record(False, 61.0) is HealthStatus.STARTING  # counts: 1 of 3
    assert health.next_delay(61.0) == 30
    assert health.record(False, 91.0) is HealthStatus.STARTING
    assert health.record(False, 121.0) is HealthStatus.UNHEALTHY
    assert health.failures == 3


def test_a_success_ends_the_start_period_and_heals() -> None:
    health = Health(RULES, began=0.0)
    assert health.record(True, 10.0) is HealthStatus.HEALTHY
    assert health.next_delay(10.0) == 30  # the start period is over
    assert health.record(False, 20.0) is HealthStatus.HEALTHY  # 1 of 3: still healthy
    assert health.record(False, 50.0) is HealthStatus.HEALTHY
    assert health.record(True, 80.0) is HealthStatus.HEALTHY
    assert health.failures == 0  # counted failures must be consecutive


async def test_until_healthy_probes_at_the_start_interval_then_passes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    begin = trio.current_time()
    probe = Script([False, False, True])
    health = await until_healthy(RULES, probe, what="'true'")
    assert health.status is HealthStatus.HEALTHY
    assert [t - begin for t in probe.asked] == [0, 5, 10]
    assert probe.timeouts == [5, 5, 5]


async def test_until_healthy_gives_up_after_retries_past_the_start_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rules = HealthRules(interval=10, timeout=1, retries=2, start_period=12, start_interval=4)
    begin = trio.current_time()
    probe = Script([False] * 10)
    with pytest.raises(UnhealthyError, match=r"unhealthy: 'false' failed 2 times"):
        await until_healthy(rules, probe, what="'false'")
    # 0, 4, 8 in the start period (not counted); 12 counts (1), then 22 (2): unhealthy
    assert [t - begin for t in probe.asked] == [0, 4, 8, 12, 22]
