"""The project supervisor: one systemd unit per project that watches its VMs and restarts them.

``python -m orchestrator.supervisor --state-dir DIR --bus ADDRESS`` runs as
``qemu-compose-<project>-supervisor.service`` (``up`` starts it, restarted by systemd if it
fails). It reads the VMs to watch from ``supervised-vms.json`` (``up`` and ``destroy`` rewrite
it; it is re-read when it changes) and, for each of them:

- holds a QMP session on the VM's supervision monitor and writes every event to the project's
  event log (qmp.supervisor does that part);
- writes every change of the VM unit's state (``UNIT_STATE``) to the event log;
- applies the VM's ``restart:`` policy. A VM with a policy other than ``no`` runs with
  ``-no-shutdown`` and ``-action panic=pause``: when its guest powers off or panics, QEMU stays,
  paused, and the supervisor decides (`decide`): reset the guest in place and resume it, after
  a backoff that doubles with each restart in the last ten minutes; or quit QEMU; or, when an
  ``on-failure:N`` policy has used its N restarts, kill it (GIVE_UP_SIGNAL) so that its unit
ends failed, and stays so. A
  poweroff that someone asked for (``stop``: a POWERDOWN came first) is never restarted.

A crash of QEMU itself is systemd's to restart (the VM unit's Restart=on-failure).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

import qmp
import systemd_dbus
from orchestrator.config.model import RestartPolicy
from orchestrator.state.files import atomic_write
from qmp.eventlog import EventLog
from qmp.supervisor import CONNECTED, Supervisor, serve_until_signalled

log = logging.getLogger(__name__)

# Giving up on a VM: a signal QEMU does not handle (it ends it, without a core dump) and that
# systemd is told not to restart on (RestartPreventExitStatus=SIGPWR): the unit ends failed.
GIVE_UP_SIGNAL = signal.SIGPWR
RESTART_WINDOW = 600.0  # restarts further back than this no longer lengthen the backoff
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


class Watched(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One VM the supervisor watches."""

    qmp: str  # its supervision monitor's socket
    unit: str
    restart: str = "no"  # the compose file's restart: policy


_decode_vms = msgspec.json.Decoder(dict[str, Watched]).decode


def read_supervised(path: Path) -> dict[str, Watched]:
    try:
        return _decode_vms(path.read_bytes())
    except FileNotFoundError:
        return {}


def write_supervised(path: Path, vms: Mapping[str, Watched]) -> None:
    atomic_write(path, msgspec.json.encode(dict(sorted(vms.items()))), mode=0o600)


# -- the decision (pure) --------------------------------------------------------------------------


class Ending(enum.Enum):
    POWEROFF = "poweroff"  # the guest powered off by itself
    PANIC = "panic"  # the guest's kernel panicked
    REQUESTED = "requested"  # someone pressed the power button first (stop, destroy, ExecStop)


class Act(enum.Enum):
    RESTART = "restart"  # system_reset and cont, after the delay
    QUIT = "quit"  # QEMU exits cleanly: the unit ends as a success
    KILL = "kill"  # the unit ends failed: a panic nobody restarts


@dataclass(frozen=True, slots=True)
class Decision:
    act: Act
    delay: float = 0.0
    why: str = ""


def backoff(recent_restarts: int) -> float:
    return min(BACKOFF_FIRST * 2.0**recent_restarts, BACKOFF_MAX)


def decide(policy: RestartPolicy, ending: Ending, restarts: int, recent_restarts: int) -> Decision:
    """What to do with a VM whose guest ended, under ``policy`` (docker compose's values).

    ``restarts``: how many times the supervisor restarted it so far (for on-failure:N);
    ``recent_restarts``: how many of them in the last RESTART_WINDOW seconds (the backoff).
    """
    if ending is Ending.REQUESTED:
        return Decision(Act.QUIT, why="stop requested")
    if ending is Ending.POWEROFF:
        if policy.after_poweroff:
            why = f"powered off, restart: {policy}"
            return Decision(Act.RESTART, backoff(recent_restarts), why)
        return Decision(Act.QUIT, why="powered off")
    if policy.supervised:
        if policy.max_restarts is not None and restarts >= policy.max_restarts:
            return Decision(Act.KILL, why=f"panicked; {restarts} restarts used, restart: {policy}")
        return Decision(Act.RESTART, backoff(recent_restarts), f"panicked, restart: {policy}")
    return Decision(Act.KILL, why="panicked, restart: no")


# -- the service ----------------------------------------------------------------------------------


@dataclass
class _VmWatch:
    requested: bool = False  # a POWERDOWN came: the next poweroff was asked for
    busy: bool = False  # a decision is being carried out
    restarts: list[float] = field(default_factory=list)  # when (time.monotonic())
    generation: int = 0  # one more with each connection: a new QEMU (restarts are in place)


class ProjectSupervisor:
    def __init__(
        self,
        event_log: EventLog,
        vms_file: Path,
        manager: systemd_dbus.SystemdManager,
        *,
        rescan_interval: float = 0.5,
    ) -> None:
        self.event_log = event_log
        self.vms_file = vms_file
        self.manager = manager
        self.rescan_interval = rescan_interval
        self.vms: dict[str, Watched] = {}
        self._watches: dict[str, _VmWatch] = {}
        self._qmp = Supervisor(event_log, on_event=self._on_event)
        self._nursery: trio.Nursery | None = None
        self._unit_watchers: dict[str, trio.CancelScope] = {}  # one task a unit
        self._logged_units: dict[str, tuple[str, str]] = {}

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
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("cannot read %s (%s): keeping the VMs I have", self.vms_file, err)
            return
        if vms == self.vms:
            return
        self.vms = vms
        self._qmp.set_vms({name: w.qmp for name, w in vms.items()})
        for name in vms:
            self._watches.setdefault(name, _VmWatch())
        for name in list(self._watches):
            if name not in vms:  # destroyed: a VM of that name later starts afresh
                del self._watches[name]
        wanted = {w.unit: name for name, w in vms.items()}
        for unit in list(self._unit_watchers):
            if unit not in wanted:
                self._unit_watchers.pop(unit).cancel()
        for unit, name in wanted.items():  # a task a unit: adding one costs one GetAll
            if unit not in self._unit_watchers and self._nursery is not None:
                self._unit_watchers[unit] = scope = trio.CancelScope()
                self._nursery.start_soon(self._watch_unit, unit, name, scope)

    # -- units ------------------------------------------------------------------------------

    async def _watch_unit(self, unit: str, vm: str, scope: trio.CancelScope) -> None:
        with scope:
            async with self.manager.watch([unit]) as changes:
                async for status in changes:
                    self._log_unit(vm, status)

    def _log_unit(self, vm: str, status: systemd_dbus.UnitStatus) -> None:
        now = (status.active_state, status.sub_state)
        before = self._logged_units.get(status.name)
        unmade = not status.exists and now == ("inactive", "dead")
        if before == now or (before is None and unmade):
            return  # no change, or a unit not made yet
        self._logged_units[status.name] = now
        data = {"unit": status.name, "active_state": str(now[0]), "sub_state": now[1]}
        if status.has_stopped and status.result:
            data["result"] = status.result
        self.event_log.append(vm, "UNIT_STATE", data, source="unit")

    # -- restart policies -------------------------------------------------------------------

    async def _on_event(
        self, vm: str, session: qmp.QmpSession, event: str, data: dict[str, Any]
    ) -> None:
        watch = self._watches.setdefault(vm, _VmWatch())
        ending: Ending | None = None
        if event == CONNECTED:  # a new QEMU (or a new supervisor): start counting afresh
            watch.generation += 1
            watch.requested = watch.busy = False
            watch.restarts.clear()
            status = data.get("status")  # it may have ended while nobody watched
            if status == "shutdown":
                ending = Ending.POWEROFF
            elif status == "guest-panicked":
                ending = Ending.PANIC
        elif event == "POWERDOWN":
            watch.requested = True
        elif event == "SHUTDOWN" and data.get("guest"):
            if data.get("reason") == "guest-panic":
                ending = Ending.PANIC
            else:
                ending = Ending.REQUESTED if watch.requested else Ending.POWEROFF
        elif event == "GUEST_PANICKED" and data.get("action") == "pause":
            ending = Ending.PANIC
        spec = self.vms.get(vm)
        if ending is None or spec is None or watch.busy or self._nursery is None:
            return
        policy = RestartPolicy.parse(spec.restart)
        if not policy.supervised:  # QEMU ends by itself (no -no-shutdown): nothing to decide
            return
        now = time.monotonic()
        recent = sum(1 for t in watch.restarts if now - t < RESTART_WINDOW)
        decision = decide(policy, ending, len(watch.restarts), recent)
        watch.busy = True
        self._nursery.start_soon(self._carry_out, vm, session, decision, watch)

    async def _carry_out(
        self, vm: str, session: qmp.QmpSession, decision: Decision, watch: _VmWatch
    ) -> None:
        generation = watch.generation
        try:
            if decision.act is Act.RESTART:
                watch.restarts.append(time.monotonic())
                attempt = len(watch.restarts)
                self.event_log.append(
                    vm,
                    "RESTARTING",
                    {"reason": decision.why, "attempt": attempt, "delay": decision.delay},
                    source="supervisor",
                )
                await trio.sleep(decision.delay)
                if watch.generation != generation:
                    return  # replaced by a new QEMU while we waited: not ours to touch
                if watch.requested:  # a stop came while we waited: it wants the VM off
                    with contextlib.suppress(qmp.VmGoneError, qmp.SessionStateError):
                        await session.execute("quit")
                    return
                await session.execute("system_reset")
                await session.execute("cont")
                self.event_log.append(vm, "RESTARTED", {"attempt": attempt}, source="supervisor")
            elif decision.act is Act.QUIT:
                with contextlib.suppress(qmp.VmGoneError, qmp.SessionStateError):
                    await session.execute("quit")
            else:
                self.event_log.append(
                    vm, "RESTART_GIVEN_UP", {"reason": decision.why}, source="supervisor"
                )
                spec = self.vms.get(vm)
                if spec is not None:
                    await self.manager.kill(spec.unit, GIVE_UP_SIGNAL)
        except (qmp.QmpError, systemd_dbus.SystemdError) as err:
            self.event_log.append(vm, "SUPERVISOR_ERROR", {"error": str(err)}, source="supervisor")
        finally:
            if watch.generation == generation:
                watch.busy = False


async def _main(state_dir: Path, bus: str) -> None:
    from orchestrator.state.paths import ProjectPaths

    paths = ProjectPaths(state_dir, "")
    async with qmp.asyncio_loop(), systemd_dbus.connect(bus, call_timeout=60) as manager:
        supervisor = ProjectSupervisor(EventLog(paths.events_dir), paths.supervised_vms, manager)
        await serve_until_signalled(supervisor.run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.supervisor", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True, help="the project's state dir")
    parser.add_argument("--bus", default="user", help="user, system, or a D-Bus address")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trio.run(_main, args.state_dir, args.bus, restrict_keyboard_interrupt_to_checkpoints=True)
