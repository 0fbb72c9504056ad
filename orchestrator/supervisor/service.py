"""The project supervisor: one systemd unit per project that watches its VMs and restarts them.

``python -m orchestrator.supervisor --state-dir DIR --bus ADDRESS`` runs as
``qemu-compose-<project>-supervisor.service`` (``up`` starts it, restarted by systemd if it
fails). It reads the VMs to watch from ``supervised-vms.json`` (re-read when it changes) and,
for each of them:

- holds a QMP session on the VM's supervision monitor (qmp.supervisor) and writes every event
  of it to the project's event log;
- writes every change of the VM unit's state (``UNIT_STATE``) to the event log;
- feeds the QMP events to the VM's lifecycle machine (lifecycle.py, which applies its
  ``restart:`` policy) and carries out what it decides;
- keeps the health of each VM that has one (probing.py): probes it while its guest runs,
  writes its ``health.json`` and each change of its state (``health_status``) to the log;
- keeps what `ps` shows of each run (runs.py, ``run.json``): the guest's QMP status
  (running, paused, ...), the restarts it made in place, how the unit ended;
- takes a restarted VM's faults away (faults.py): it starts without them.

A crash of QEMU itself is systemd's to restart (the VM unit's Restart=on-failure).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

import netcfg
import qmp
import systemd_dbus
from netcfg.plumbing import HOST, Links, OneShotAgent
from netcfg.userns import ENVIRONMENT as NETNS_VARIABLE
from netcfg.userns import Namespace
from orchestrator.config.model import RestartPolicy
from orchestrator.state.paths import ProjectPaths
from qmp.events import QmpEvent, Resume, SessionClosed, SessionEvent, SessionOpened, Shutdown, Stop
from qmp.events import Reset as GuestReset
from qmp.supervisor import Supervisor

from .eventlog import EventLog
from .faults import clear_after_restart
from .health import HealthChange
from .lifecycle import (
    GIVE_UP_SIGNAL,
    ActionDone,
    Command,
    GiveUp,
    Input,
    Quit,
    Reset,
    RestartDue,
    ScheduleRestart,
    VmLifecycle,
)
from .probing import HANDSHAKES, VmProber
from .runs import RunKeeper
from .supervised import Watched, read_supervised

log = logging.getLogger(__name__)
PROBER_RESTART = 5.0  # seconds before a prober that failed runs again, doubling each time
PROBER_RESTART_MAX = 300.0


class ProjectSupervisor:
    def __init__(
        self,
        event_log: EventLog,
        vms_file: Path,
        manager: systemd_dbus.SystemdManager,
        *,
        paths: ProjectPaths | None = None,
        rescan_interval: float = 0.5,
    ) -> None:
        self.event_log = event_log
        self.vms_file = vms_file
        self.manager = manager
        self.paths = paths or ProjectPaths(vms_file.parent, "")
        self.rescan_interval = rescan_interval
        self.vms: dict[str, Watched] = {}
        self._lifecycles: dict[str, VmLifecycle] = {}
        self._qmp = Supervisor(self._on_session)
        self._nursery: trio.Nursery | None = None
        self._unit_watchers: dict[str, trio.CancelScope] = {}  # one task a unit
        self._logged_units: dict[str, tuple[str, str]] = {}
        self.probers: dict[str, tuple[VmProber, trio.CancelScope]] = {}
        self._handshakes = trio.CapacityLimiter(HANDSHAKES)  # logins to booting guests
        self._reconnects = trio.CapacityLimiter(HANDSHAKES)  # logins again, for checks
        self._runs: dict[str, bool] = {}  # by VM: QMP says its guest runs
        self.runs = RunKeeper(self.paths)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._reload()
            await nursery.start(self._qmp.run)
            task_status.started()
            while True:
                await trio.sleep(self.rescan_interval)
                self._reload()

    def _reload(self) -> None:
        try:
            vms = read_supervised(self.vms_file)
            policies = {name: RestartPolicy.parse(w.restart) for name, w in vms.items()}
        except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("cannot read %s (%s): keeping the VMs I have", self.vms_file, err)
            return
        if vms == self.vms:
            return
        self.vms = vms
        self._qmp.set_vms({name: w.qmp for name, w in vms.items()})
        for name, policy in policies.items():  # a new QEMU brings its policy with it
            self._lifecycles.setdefault(name, VmLifecycle(policy)).policy = policy
        for name in list(self._lifecycles):
            if name not in vms:  # destroyed: a VM of that name later starts afresh
                del self._lifecycles[name]
        wanted = {w.unit: name for name, w in vms.items()}
        for unit in list(self._unit_watchers):
            if unit not in wanted:
                self._unit_watchers.pop(unit).cancel()
        for unit, name in wanted.items():  # a task a unit: adding one costs one GetAll
            if unit not in self._unit_watchers and self._nursery is not None:
                self._unit_watchers[unit] = scope = trio.CancelScope()
                self._nursery.start_soon(self._watch_unit, unit, name, scope)
        self._reload_probers(vms)

    def _reload_probers(self, vms: dict[str, Watched]) -> None:
        """A prober for each VM with a health; a new one when how to probe it changed."""
        for name, (prober, scope) in list(self.probers.items()):
            watched = vms.get(name)
            if watched is None or watched.probe != prober.spec:
                prober.retired = True  # a probe it already finished writes nothing
                scope.cancel()
                del self.probers[name]
        for name, watched in vms.items():
            if watched.probe is None or name in self.probers or self._nursery is None:
                continue
            prober = VmProber(
                name,
                watched.probe,
                self.paths.vm(name),
                self._handshakes,
                self._health_changed,
                reconnects=self._reconnects,
            )
            prober.unit_active(self.runs.since(name))
            prober.guest_runs(self._runs.get(name, False))
            self.probers[name] = (prober, scope := trio.CancelScope())
            self._nursery.start_soon(self._probe, prober, scope)

    async def _probe(self, prober: VmProber, scope: trio.CancelScope) -> None:
        """The prober's task: whatever goes wrong in it is logged and it starts again, a
        while later; the supervisor (restart policies, the event log) never ends with it."""
        with scope:
            delay, said = PROBER_RESTART, ""
            while True:
                try:
                    await prober.run()
                except Exception as err:  # a bug of ours or a library's: not the VM's end
                    log.exception("probing %s failed", prober.vm)
                    if repr(err) != said:  # the same failure again: the journal has it
                        said = repr(err)
                        data = {"error": said}
                        self._record(prober.vm, "SUPERVISOR_ERROR", data, source="supervisor")
                await trio.sleep(delay)
                delay = min(delay * 2, PROBER_RESTART_MAX)

    def _health_changed(self, vm: str, change: HealthChange) -> None:
        self._record(vm, "health_status", change.data(), source="health")

    # -- units ------------------------------------------------------------------------------

    async def _watch_unit(self, unit: str, vm: str, scope: trio.CancelScope) -> None:
        with scope:
            async with self.manager.watch([unit]) as changes:
                async for status in changes:
                    self._log_unit(vm, status)

    def _log_unit(self, vm: str, status: systemd_dbus.UnitStatus) -> None:
        self.runs.unit(vm, status)
        if vm in self.probers:
            self.probers[vm][0].unit_active(self.runs.since(vm))
        now = (status.active_state.value, status.sub_state)
        before = self._logged_units.get(status.name)
        unmade = not status.exists and now == ("inactive", "dead")
        if before == now or (before is None and unmade):
            return  # no change, or a unit not made yet
        self._logged_units[status.name] = now
        data = {"unit": status.name, "active_state": now[0], "sub_state": now[1]}
        if status.has_stopped and status.result:
            data["result"] = status.result
        self._record(vm, "UNIT_STATE", data, source="unit")

    # -- QMP: the event log, and the lifecycle ----------------------------------------------

    def _on_session(self, vm: str, session: qmp.QmpSession, event: SessionEvent) -> None:
        try:
            log_session_event(self.event_log, vm, event)
        except OSError as err:  # a full disk loses the record, never the VM's restart
            log.warning("cannot write %s of %s to the event log: %s", event, vm, err)
        self._see_guest(vm, event)
        self._feed(vm, session, event)
        if isinstance(event, SessionOpened) and self._nursery is not None:
            self._nursery.start_soon(self._clear_faults, vm, session)

    async def _links(self, vm: str) -> Links:
        """Where the VM's TAPs are: the user's namespace its unit names (rootless), or here."""
        spec = self.vms.get(vm)
        if spec is None:
            return HOST
        status = await self.manager.status(spec.unit)
        for line in status.environment:
            name, _, token = line.partition("=")
            if name == NETNS_VARIABLE and token:
                return OneShotAgent(Namespace.parse(token))
        return HOST

    async def _clear_faults(
        self, vm: str, session: qmp.QmpSession, *, in_place: bool = False
    ) -> None:
        """A VM restarted starts without faults (faults.py); a new session of the same
        QEMU keeps them."""
        mine = self.paths.vm(vm)
        try:
            cleared, kept = await clear_after_restart(
                self.paths.state_dir, vm, mine.pidfile, session, in_place=in_place,
                plumbing=await self._links(vm),
            )  # fmt: skip
        except (OSError, netcfg.NetcfgError) as err:
            self._record(
                vm, "SUPERVISOR_ERROR", {"error": f"clearing faults: {err}"}, source="supervisor"
            )
            return
        if kept:
            said = {"error": f"QEMU would not take these faults back: {'; '.join(kept)}"}
            self._record(vm, "SUPERVISOR_ERROR", said, source="supervisor")
        if cleared:
            why = "restarted in place" if in_place else "a new QEMU"
            data = {"reason": f"{why}: a restarted VM starts without faults", "faults": cleared}
            self._record(vm, "FAULTS_CLEARED", data, source="supervisor")

    def _see_guest(self, vm: str, event: SessionEvent) -> None:
        """What probing needs of QMP: whether the guest runs, and when it rebooted."""
        self.runs.guest(vm, event)
        prober = self.probers.get(vm, (None,))[0]
        if isinstance(event, GuestReset):
            if prober is not None:
                prober.guest_reset()
            return
        if isinstance(event, SessionOpened):  # (its status unknown: probe, rather than not)
            runs = event.status == "running" or event.status is None
        elif isinstance(event, Resume):
            runs = True
        elif isinstance(event, Stop | Shutdown | SessionClosed):
            runs = False
        else:
            return
        self._runs[vm] = runs
        if prober is not None:
            prober.guest_runs(runs)

    def _record(self, vm: str, event: str, data: dict[str, Any], *, source: str) -> None:
        try:
            self.event_log.append(vm, event, data, source=source)
        except OSError as err:
            log.warning("cannot write %s of %s to the event log: %s", event, vm, err)

    def _feed(
        self,
        vm: str,
        session: qmp.QmpSession,
        event: Input,
        lifecycle: VmLifecycle | None = None,
    ) -> None:
        """``event`` to the VM's lifecycle, and what it decides carried out. A carry-out
        feeds back to the lifecycle that decided it only: a VM destroyed and made again in the
        meantime has a new one, which counts its generations afresh."""
        current = self._lifecycles.get(vm)
        if current is None or (lifecycle is not None and lifecycle is not current):
            return
        if self._nursery is None:
            return
        for command in current.on(event, trio.current_time()):
            self._nursery.start_soon(self._carry_out, vm, session, command, current)

    async def _carry_out(
        self, vm: str, session: qmp.QmpSession, command: Command, lifecycle: VmLifecycle
    ) -> None:
        if isinstance(command, ScheduleRestart):
            data = {"reason": command.reason, "attempt": command.attempt, "delay": command.delay}
            self._record(vm, "RESTARTING", data, source="supervisor")
            await trio.sleep_until(command.at)
            self._feed(vm, session, RestartDue(command.generation), lifecycle)
            return
        try:
            if isinstance(command, Reset):
                await session.execute("system_reset")
                await session.execute("cont")
                data = {"attempt": command.attempt}
                self._record(vm, "RESTARTED", data, source="supervisor")
                self.runs.restarted(vm)
                await self._clear_faults(vm, session, in_place=True)
            elif isinstance(command, Quit):
                with contextlib.suppress(qmp.VmGoneError, qmp.SessionStateError):
                    await session.execute("quit")
            elif isinstance(command, GiveUp):
                data = {"reason": command.reason}
                self._record(vm, "RESTART_GIVEN_UP", data, source="supervisor")
                spec = self.vms.get(vm)
                if spec is not None:
                    await self.manager.kill(spec.unit, GIVE_UP_SIGNAL)
        except (qmp.QmpError, systemd_dbus.SystemdError) as err:
            self._record(vm, "SUPERVISOR_ERROR", {"error": str(err)}, source="supervisor")
        finally:
            self._feed(vm, session, ActionDone(command.generation), lifecycle)


def log_session_event(event_log: EventLog, vm: str, event: SessionEvent) -> None:
    """A QMP event as QEMU sent it (with its timestamp), or the session's opening or end."""
    if isinstance(event, QmpEvent):
        event_log.append(vm, event.event, event.data(), qemu_time=event.timestamp)
    else:
        event_log.append(vm, event.name, event.data(), source="supervisor")


async def serve_until_signalled(service: Callable[..., Awaitable[None]]) -> None:
    """Run ``service`` (a task that reports ``started``) until SIGTERM or SIGINT, then stop."""
    async with trio.open_nursery() as nursery:
        await nursery.start(service)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _main(state_dir: Path, bus: str) -> None:
    paths = ProjectPaths(state_dir, "")
    async with qmp.asyncio_loop(), systemd_dbus.connect(bus, call_timeout=60) as manager:
        supervisor = ProjectSupervisor(
            EventLog(paths.events_dir), paths.supervised_vms, manager, paths=paths
        )
        await serve_until_signalled(supervisor.run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.supervisor", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True, help="the project's state dir")
    parser.add_argument("--bus", default="user", help="user, system, or a D-Bus address")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trio.run(_main, args.state_dir, args.bus, restrict_keyboard_interrupt_to_checkpoints=True)
