"""Healthchecks with docker's rules: the start period, its interval, retries, timeouts.

`Health` is the pure part: fed each probe's result and the time, it says the VM's health and
how long to wait before the next probe.

`KeptHealth` is what the supervisor keeps of a VM (#14): `Health` with docker's
``.State.Health`` beside it: the failing streak and the last `LOG_LENGTH` probe results
(start, end, exit code, the last `OUTPUT_BYTES` of output), as a `HealthRecord` the CLI reads
from the VM's directory without asking the supervisor, and each change of state as a
`HealthChange` for the event log. Pure as well.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from orchestrator.config.model import Healthcheck, Vm
from orchestrator.config.quantities import parse_duration
from orchestrator.errors import QemuComposeError
from orchestrator.state.files import atomic_write, read_struct
from orchestrator.state.paths import VmPaths


class HealthStatus(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class UnhealthyError(QemuComposeError):
    """A VM waited for is unhealthy: its check failed ``retries`` times in a row after the
    start period."""


class HealthRules(msgspec.Struct, frozen=True):
    interval: float
    timeout: float  # each probe's bound
    retries: int
    start_period: float  # failures in it do not count
    start_interval: float  # how often to probe during the start period

    @classmethod
    def of(cls, check: Healthcheck) -> HealthRules:
        return cls(
            interval=parse_duration(check.interval),
            timeout=parse_duration(check.timeout),
            retries=check.retries,
            start_period=parse_duration(check.start_period),
            start_interval=parse_duration(check.start_interval),
        )


@dataclass
class Health:
    """One VM's health, from the results of its probes. Pure: the caller gives the time."""

    rules: HealthRules
    began: float  # when probing began (the start period counts from here)
    status: HealthStatus = HealthStatus.STARTING
    failures: int = 0  # consecutive failures that counted
    starting: bool = True  # in the start period: a success or its end closes it

    def _in_start_period(self, now: float) -> bool:
        return self.starting and now - self.began < self.rules.start_period

    def record(self, ok: bool, now: float) -> HealthStatus:
        """The status after a probe that passed (``ok``) or failed at ``now``."""
        if ok:
            self.failures = 0
            self.starting = False
            self.status = HealthStatus.HEALTHY
        elif not self._in_start_period(now):
            self.starting = False
            self.failures += 1
            if self.failures >= self.rules.retries:
                self.status = HealthStatus.UNHEALTHY
        return self.status

    def next_delay(self, now: float) -> float:
        """How long to wait before the next probe."""
        if self._in_start_period(now):
            return self.rules.start_interval
        return self.rules.interval


LOG_LENGTH = 5  # probe results kept, as docker keeps
OUTPUT_BYTES = 4096  # of each probe's output, its end
TIMED_OUT = -1  # the exit code of a probe that ran out of time (docker's too)


def has_health(vm: Vm) -> bool:
    """A VM with an operating system has a health, unless its check is disabled
    (``healthcheck: {disable: true}`` or ``test: [NONE]``); a firmware-only VM has none."""
    check = vm.healthcheck
    return vm.has_os and (check is None or not (check.disable or check.test[:1] == ["NONE"]))


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    """One probe, as docker's health log has it."""

    start: float
    end: float
    exit_code: int  # 0 passed; TIMED_OUT when it ran out of time
    output: str = ""  # its last OUTPUT_BYTES

    @classmethod
    def of(cls, start: float, end: float, exit_code: int, output: bytes) -> ProbeResult:
        tail = output[-OUTPUT_BYTES:].decode(errors="replace")
        return cls(start=start, end=end, exit_code=exit_code, output=tail)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


class HealthRecord(msgspec.Struct, kw_only=True):
    """A VM's kept health: what `ps`, `inspect` and `up --wait` read."""

    status: HealthStatus = HealthStatus.STARTING
    failing_streak: int = 0
    log: list[ProbeResult] = []  # the last LOG_LENGTH, oldest first
    since: int = 0  # the QEMU it is about: its unit's ActiveEnterTimestamp (µs)
    check: str = ""  # the check it is judged by (supervised.Probe.check)
    ready_at: float | None = None  # when SSH first answered (and cloud-init was done)

    def is_of(self, since: int, check: str | None = None) -> bool:
        """The record is about the QEMU whose unit became active at ``since`` (and judged by
        ``check``, when one is given)."""
        return since != 0 and self.since == since and check in (None, self.check)


class HealthChange(msgspec.Struct, frozen=True):
    """A change of a VM's health, for the event log (``health_status``)."""

    old: HealthStatus
    new: HealthStatus
    failing_streak: int
    output: str  # the last probe's

    def data(self) -> dict[str, object]:
        return {
            "old": self.old.value,
            "new": self.new.value,
            "failing_streak": self.failing_streak,
            "output": self.output,
        }


READY_RETRY = 1.0  # between attempts to log in while the guest boots


class KeptHealth:
    """What the supervisor keeps of one QEMU's guest, fed each probe's result.

    First readiness: attempts to log in (and wait for cloud-init) until one passes, which
    neither count nor change the state (a boot takes what it takes; ``up --wait`` bounds
    it); the log keeps an attempt only when its output differs from the last. Then `Health`
    with docker's rules, its start period counted from readiness; a VM without a check of
    its own (``checked`` false) is healthy once ready and its probe is that SSH answers.
    ``changed`` says the record changed since the caller last wrote it.
    """

    def __init__(self, rules: HealthRules, since: int, *, checked: bool, check: str = "") -> None:
        self.rules = rules
        self.checked = checked
        self.health: Health | None = None  # None until ready
        self.record = HealthRecord(since=since, check=check)
        self.changed = True
        self._observed = False  # a probe was taken since readiness

    @classmethod
    def resumed(cls, rules: HealthRules, record: HealthRecord, *, checked: bool) -> KeptHealth:
        """Go on from a record an earlier supervisor kept of the same QEMU."""
        kept = cls(rules, record.since, checked=checked, check=record.check)
        kept.record = record
        kept.changed = False
        kept._observed = True
        if record.ready_at is not None:
            kept.health = Health(
                rules,
                began=record.ready_at,
                status=record.status,
                failures=record.failing_streak,
                starting=record.status is HealthStatus.STARTING,
            )
        return kept

    @property
    def ready(self) -> bool:
        return self.health is not None

    def _log(self, result: ProbeResult) -> None:
        self.record.log = [*self.record.log, result][-LOG_LENGTH:]
        self.changed = True

    def attempted(self, result: ProbeResult) -> HealthChange | None:
        """An attempt at readiness: passed, the VM is ready (and healthy, without a check)."""
        if not result.passed:
            last = self.record.log[-1] if self.record.log else None
            if last is None or (last.exit_code, last.output) != (result.exit_code, result.output):
                self._log(result)
            return None
        self.health = Health(self.rules, began=result.end)
        self.record.ready_at = result.end
        if self.checked:
            self._log(result)
            return None
        return self.observe(result)

    def observe(self, result: ProbeResult) -> HealthChange | None:
        """Take one probe's result (in the start period or not by when it began, as docker
        judges); the change it makes."""
        assert self.health is not None, "a VM is probed once ready"
        old = self.health.status
        new = self.health.record(result.passed, result.start)  # as docker: when it began
        self.record.status = new
        self.record.failing_streak = self.health.failures  # as docker: not in the start period
        self._observed = True
        self._log(result)
        if new is old:
            return None
        return HealthChange(old, new, self.record.failing_streak, result.output)

    def next_delay(self, now: float) -> float:
        """How long to wait before the next probe (its check at once when just ready)."""
        if self.health is None:
            return READY_RETRY
        if not self._observed:
            return 0.0
        return self.health.next_delay(now)


def write_health(vm: VmPaths, record: HealthRecord) -> None:
    """The VM's kept health, whole (the CLI reads it while the supervisor writes); not
    synced to disk: a record lost to a power cut is probed again."""
    atomic_write(vm.health, msgspec.json.encode(record), mode=0o600, durable=False)


def read_health(vm: VmPaths) -> HealthRecord | None:
    """The VM's kept health; None when the supervisor keeps none (yet), or it cannot be read."""
    return read_struct(vm.health, HealthRecord)
