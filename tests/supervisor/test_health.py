"""docker's healthcheck rules (start period, start interval, interval, retries), in virtual
time: the pure `Health` and `until_healthy` driving it with a scripted probe."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from orchestrator.config.model import Vm
from orchestrator.state.paths import VmPaths
from orchestrator.supervisor.health import (
    LOG_LENGTH,
    OUTPUT_BYTES,
    TIMED_OUT,
    Health,
    HealthChange,
    HealthRecord,
    HealthRules,
    HealthStatus,
    KeptHealth,
    ProbeResult,
    UnhealthyError,
    has_health,
    read_health,
    until_healthy,
    write_health,
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


def probe(start: float, ok: bool, output: bytes = b"") -> ProbeResult:
    return ProbeResult.of(start, start + 0.5, 0 if ok else 1, output)


def test_kept_health_says_each_change_once_with_its_streak_and_output() -> None:
    """docker's .State.Health: the failing streak (start period failures not counted), the
    last 5 results, each change of state once (for the event log)."""
    kept = KeptHealth(RULES, began=0.0)
    assert kept.observe(probe(0.0, False)) is None  # in the start period: still starting
    assert kept.record.failing_streak == 0
    assert kept.observe(probe(5.0, True, b"ok")) == HealthChange(
        HealthStatus.STARTING, HealthStatus.HEALTHY, 0, "ok"
    )
    assert kept.observe(probe(35.0, True)) is None
    changes = [kept.observe(probe(t, False, b"down %d" % t)) for t in (65.0, 95.0, 125.0)]
    assert changes[:2] == [None, None]
    assert changes[2] == HealthChange(HealthStatus.HEALTHY, HealthStatus.UNHEALTHY, 3, "down 125")
    assert kept.record.status is HealthStatus.UNHEALTHY
    assert [r.start for r in kept.record.log] == [5.0, 35.0, 65.0, 95.0, 125.0]  # the last 5
    assert kept.observe(probe(155.0, True)) == HealthChange(
        HealthStatus.UNHEALTHY, HealthStatus.HEALTHY, 0, ""
    )
    assert len(kept.record.log) == LOG_LENGTH


def test_a_probe_keeps_the_end_of_its_output_and_the_record_round_trips() -> None:
    result = ProbeResult.of(1.0, 2.0, TIMED_OUT, b"x" * 10_000 + "é".encode())
    assert len(result.output.encode()) <= OUTPUT_BYTES + 2
    assert result.output.endswith("é")
    assert not result.passed
    kept = KeptHealth(RULES, began=0.0)
    kept.observe(result)
    encoded = msgspec.json.encode(kept.record)
    assert msgspec.json.decode(encoded, type=HealthRecord) == kept.record


@pytest.mark.parametrize(
    ("vm", "kept"),
    [
        ({}, False),  # firmware only: nothing to probe
        ({"image": "/i.qcow2"}, True),  # healthy once ready, while SSH answers
        ({"image": "/i.qcow2", "healthcheck": {"test": ["CMD", "true"]}}, True),
        ({"image": "/i.qcow2", "healthcheck": {"disable": True}}, False),
        ({"boot": {"kernel": "/k"}, "healthcheck": {"test": ["NONE"]}}, False),
    ],
)
def test_which_vms_have_a_health(vm: dict[str, object], kept: bool) -> None:
    if "image" in vm:
        vm = {**vm, "image": {"source": vm["image"]}}
    assert has_health(msgspec.convert(vm, Vm)) is kept


def test_the_kept_health_is_read_back_whole_or_not_at_all(tmp_path: Path) -> None:
    vm = VmPaths(tmp_path / "web", tmp_path / "web")
    vm.directory.mkdir()
    assert read_health(vm) is None  # nothing kept yet
    kept = KeptHealth(RULES, began=0.0)
    kept.observe(probe(1.0, True, b"fine"))
    write_health(vm, kept.record)
    assert read_health(vm) == kept.record
    assert vm.health.stat().st_mode & 0o777 == 0o600
    vm.health.write_text('{"status": "healthy", "log": [')  # cut short by someone else
    assert read_health(vm) is None
