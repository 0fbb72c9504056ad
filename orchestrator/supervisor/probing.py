"""The supervisor's probes of one VM: readiness, then its healthcheck, for as long as its QEMU
runs, kept in the VM's ``health.json`` and each change said to the event log.

A `VmProber` is told what the supervisor sees: the unit's ActiveEnterTimestamp (a new value
is a new QEMU: its health starts afresh, or goes on from the record an earlier supervisor
kept of that same QEMU), whether QMP says the guest runs (a paused or shut-down guest is not
probed, and a probe under way when it pauses is dropped, not counted), and a guest reset (a
reboot: readiness again). Its task probes when allowed, one probe at a time, over one SSH
connection kept open (`probe.GuestShell`), each probe bounded by the check's timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import trio

from orchestrator.errors import QemuComposeError
from orchestrator.guest import probe
from orchestrator.state.paths import VmPaths

from .health import (
    HealthChange,
    HealthRules,
    HealthStatus,
    KeptHealth,
    ProbeResult,
    read_health,
    write_health,
)
from .supervised import Probe

log = logging.getLogger(__name__)

# A login while the guest boots: a connection accepted by QEMU's user-mode network before the
# guest's sshd listens may hang until this bound, so the first attempts are short; each one
# that ran out of time doubles it, up to what a host busy with TCG guests may need.
READY_CONNECT_FIRST = 5.0
READY_CONNECT_TIMEOUT = 60.0
READY_TIMEOUT = 900.0  # a login and cloud-init's end (it may provision for minutes)
HANDSHAKES = 8  # SSH handshakes under way at once, across the project's VMs


def rules_of(spec: Probe) -> HealthRules:
    return HealthRules(
        interval=spec.interval,
        timeout=spec.timeout,
        retries=spec.retries,
        start_period=spec.start_period,
        start_interval=spec.start_interval,
    )


class VmProber:
    """Keeps one VM's health while it runs (see the module docstring)."""

    def __init__(
        self,
        vm: str,
        spec: Probe,
        paths: VmPaths,
        handshakes: trio.CapacityLimiter,
        on_change: Callable[[str, HealthChange], None],
        *,
        reconnects: trio.CapacityLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.vm = vm
        self.spec = spec
        self.rules = rules_of(spec)
        self.paths = paths
        self.on_change = on_change
        self.clock = clock
        self.check = spec.check()
        self.handshakes = handshakes  # logins while guests boot
        self.reconnects = reconnects or handshakes  # logins again for a check: never behind those
        target = probe.SshTarget("127.0.0.1", spec.port, spec.user, Path(spec.key))
        self.shell = probe.GuestShell(target)
        self.kept: KeptHealth | None = None  # None: no QEMU runs that we know of
        self.running = False  # QMP says the guest runs
        self.probes = 0  # probes run so far (readiness attempts included)
        self._since = 0
        self._wake = trio.Event()
        self._probing: trio.CancelScope | None = None
        self._reconnect = False
        self._connect_timeout = READY_CONNECT_FIRST
        self.retired = False  # replaced, or its VM no longer watched: it says nothing more

    # -- what the supervisor sees ---------------------------------------------------------------

    @property
    def allowed(self) -> bool:
        return self.kept is not None and self.running

    def unit_active(self, since: int) -> None:
        """The unit became active at ``since`` (µs), or is not active (0)."""
        if since == self._since:
            return
        self._since = since
        self._connect_timeout = READY_CONNECT_FIRST
        if since == 0:
            self.kept = None
        else:
            record = read_health(self.paths)
            checked = self.spec.command is not None
            if record is not None and record.is_of(since, self.check):
                self.kept = KeptHealth.resumed(self.rules, record, checked=checked)
            else:
                self.kept = KeptHealth(self.rules, since, checked=checked, check=self.check)
                self._write()
                if record is not None and record.since == since:  # the same QEMU, a new check
                    self._say(
                        HealthChange(
                            record.status, HealthStatus.STARTING, 0, "its healthcheck changed"
                        )
                    )
        self._changed()

    def guest_runs(self, running: bool) -> None:
        """QMP says the guest runs (RESUME, a session opening on a running VM) or not (STOP,
        SHUTDOWN, the session's end)."""
        if running != self.running:
            self.running = running
            self._changed()

    def guest_reset(self) -> None:
        """The guest rebooted: it must become ready again."""
        old = self.kept
        if old is None:
            return
        self.kept = KeptHealth(self.rules, self._since, checked=old.checked, check=self.check)
        self._connect_timeout = READY_CONNECT_FIRST
        self._write()
        self._say(HealthChange(old.record.status, HealthStatus.STARTING, 0, "the guest reset"))
        self._changed()

    def _say(self, change: HealthChange) -> None:
        if change.old is not change.new and not self.retired:
            self.on_change(self.vm, change)

    def _changed(self) -> None:
        self._reconnect = True
        if self._probing is not None:
            self._probing.cancel()  # paused, reset, or a new QEMU: that probe is not counted
        self._wake.set()
        self._wake = trio.Event()

    # -- the task -------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                kept = self.kept
                if kept is None or not self.running:
                    await self._wake.wait()
                    continue
                if self._reconnect and not kept.ready:
                    await self.shell.aclose()  # a reset or new QEMU: that connection is gone
                self._reconnect = False
                result = None
                with trio.CancelScope() as self._probing:
                    result = await self._probe(kept)
                self._probing = None
                if result is None or kept is not self.kept or not self.running:
                    continue  # dropped: not about the guest as it is now
                change = kept.attempted(result) if not kept.ready else kept.observe(result)
                self._write()  # first: whoever the change wakes reads the file
                if change is not None:
                    self._say(change)
                with trio.move_on_after(kept.next_delay(self.clock())):
                    await self._wake.wait()
        finally:
            await self.shell.aclose()

    async def _probe(self, kept: KeptHealth) -> ProbeResult | None:
        start = self.clock()
        self.probes += 1
        if kept.ready:
            command = self.spec.command or "true"
            outcome = await self.shell.probe(
                command, timeout=self.rules.timeout, handshakes=self.reconnects
            )
        else:
            bound = self._connect_timeout
            outcome = await self.shell.probe(
                probe.READY_COMMAND,
                timeout=READY_TIMEOUT,
                connect_timeout=bound,
                handshakes=self.handshakes,
            )
            took = self.shell.handshake_took
            if outcome.exit_code != 0 and took is not None and took >= bound:
                self._connect_timeout = min(bound * 2, READY_CONNECT_TIMEOUT)
        return ProbeResult.of(start, self.clock(), outcome.exit_code, outcome.output)

    def _write(self) -> None:
        kept = self.kept
        if kept is None or not kept.changed or self.retired:
            return
        try:
            write_health(self.paths, kept.record)
            kept.changed = False
        except (OSError, QemuComposeError) as err:  # destroyed meanwhile, or a full disk
            log.warning("cannot write the health of %s: %s", self.vm, err)  # the next retries
