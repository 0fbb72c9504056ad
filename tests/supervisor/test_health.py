"""docker's healthcheck rules (start period, start interval, interval, retries) with a plain
number for a clock: `Health`, and `KeptHealth` (readiness, the record, the changes)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from orchestrator.config.model import Vm
from orchestrator.state.paths import VmPaths
from orchestrator.supervisor.health import (
    LOG_LENGTH,
    OUTPUT_BYTES,
    READY_RETRY,
    TIMED_OUT,
    Health,
    HealthChange,
    HealthRecord,
    HealthRules,
    HealthStatus,
    KeptHealth,
    ProbeResult,
    has_health,
    read_health,
    write_health,
)
from orchestrator.supervisor.supervised import Probe

RULES = HealthRules(interval=30, timeout=5, retries=3, start_period=60, start_interval=5)


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


def probe(start: float, ok: bool, output: bytes = b"") -> ProbeResult:
    return ProbeResult.of(start, start + 0.5, 0 if ok else 1, output)


def ready(at: float = 0.0, *, checked: bool = True) -> KeptHealth:
    """Kept health of a guest that became ready at ``at``."""
    kept = KeptHealth(RULES, since=7, checked=checked)
    assert kept.attempted(ProbeResult.of(at - 0.5, at, 0, b"")) is None or not checked
    return kept


def test_kept_health_says_each_change_once_with_its_streak_and_output() -> None:
    """docker's .State.Health: the failing streak (start period failures not counted), the
    last 5 results, each change of state once (for the event log)."""
    kept = ready(0.0)
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
    kept = ready(0.0)
    kept.observe(result)
    encoded = msgspec.json.encode(kept.record)
    assert msgspec.json.decode(encoded, type=HealthRecord) == kept.record


def test_readiness_neither_counts_nor_floods_the_log_and_opens_the_start_period() -> None:
    kept = KeptHealth(RULES, since=7, checked=True)
    assert kept.next_delay(0.0) == READY_RETRY  # not ready: login attempts
    refused = [ProbeResult.of(t, t + 0.1, 255, b"refused") for t in range(100)]
    assert [kept.attempted(r) for r in refused] == [None] * 100
    assert kept.record.status is HealthStatus.STARTING
    assert kept.record.failing_streak == 0
    assert [r.start for r in kept.record.log] == [0]  # the same failure is logged once
    kept.attempted(ProbeResult.of(100, 101, 255, b"auth failed"))
    assert [r.output for r in kept.record.log] == ["refused", "auth failed"]
    assert kept.attempted(ProbeResult.of(200, 230, 0, b"")) is None  # ready; its check next
    assert kept.ready
    assert kept.record.ready_at == 230
    assert kept.next_delay(230) == 0
    assert kept.observe(probe(230, False)) is None
    assert kept.next_delay(231) == RULES.start_interval  # the start period runs from 230
    assert kept.observe(probe(289, False)) is None
    assert kept.record.failing_streak == 0
    assert kept.observe(probe(291, False)) is None
    assert kept.record.failing_streak == 1


def test_without_a_check_of_its_own_a_vm_is_healthy_once_ready() -> None:
    kept = KeptHealth(RULES, since=7, checked=False)
    change = kept.attempted(ProbeResult.of(0, 40, 0, b""))
    assert change == HealthChange(HealthStatus.STARTING, HealthStatus.HEALTHY, 0, "")
    assert change.data() == {"old": "starting", "new": "healthy", "failing_streak": 0, "output": ""}
    assert kept.next_delay(40) == RULES.interval  # from now on, that SSH answers


def test_a_new_supervisor_goes_on_from_the_record_of_the_same_qemu() -> None:
    kept = ready(0.0)
    kept.observe(probe(1.0, True))
    kept.observe(probe(31.0, False))
    record = msgspec.json.decode(msgspec.json.encode(kept.record), type=HealthRecord)
    assert record.is_of(7)
    assert not record.is_of(8)
    assert not HealthRecord().is_of(0)
    again = KeptHealth.resumed(RULES, record, checked=True)
    assert again.ready
    assert not again.changed
    assert again.next_delay(100) == RULES.interval
    again.observe(probe(61.0, False))
    assert again.observe(probe(91.0, False)) == HealthChange(
        HealthStatus.HEALTHY, HealthStatus.UNHEALTHY, 3, ""
    )


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
    kept = ready(0.0)
    kept.observe(probe(1.0, True, b"fine"))
    write_health(vm, kept.record)
    assert read_health(vm) == kept.record
    assert vm.health.stat().st_mode & 0o777 == 0o600
    vm.health.write_text('{"status": "healthy", "log": [')  # cut short by someone else
    assert read_health(vm) is None


def test_a_record_is_of_one_qemu_and_one_check() -> None:
    spec = Probe(port=2222, user="dev", key="/k", command="true")
    assert spec.check() == Probe(port=2300, user="dev", key="/j", command="true").check()
    assert spec.check() != Probe(port=2222, user="root", key="/k", command="true").check()
    assert spec.check() != Probe(port=2222, user="dev", key="/k", command="false").check()
    assert spec.check() != Probe(port=2222, user="dev", key="/k", command="true", retries=4).check()
    record = HealthRecord(since=5, check=spec.check())
    assert record.is_of(5)  # whatever the check (ps: what is kept of this QEMU)
    assert record.is_of(5, spec.check())
    assert not record.is_of(5, "another")
    assert not record.is_of(6, spec.check())
