"""Healthchecks with docker's rules: the start period, its interval, retries, timeouts.

`Health` is the pure part: fed each probe's result and the time, it says the VM's health and
how long to wait before the next probe. `until_healthy` drives it with any probe (an SSH
command in practice) on trio's clock, so tests run it in virtual time.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from orchestrator.config.model import Healthcheck
from orchestrator.config.quantities import parse_duration
from orchestrator.errors import QemuComposeError


class HealthStatus(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class UnhealthyError(QemuComposeError):
    """A healthcheck failed ``retries`` times in a row after the start period."""


@dataclass(frozen=True, slots=True)
class HealthRules:
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


async def until_healthy(
    rules: HealthRules, passes: Callable[[float], Awaitable[bool]], *, what: str
) -> Health:
    """Probe with ``passes(timeout)`` until healthy; UnhealthyError once unhealthy. Bound it
    with trio.fail_after: a check that keeps failing in its start period never ends."""
    health = Health(rules, began=trio.current_time())
    while True:
        status = health.record(await passes(rules.timeout), trio.current_time())
        if status is HealthStatus.HEALTHY:
            return health
        if status is HealthStatus.UNHEALTHY:
            raise UnhealthyError(f"unhealthy: {what} failed {health.failures} times")
        await trio.sleep(health.next_delay(trio.current_time()))
