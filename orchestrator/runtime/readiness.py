"""When a VM counts as started, ready or completed, and waiting for what it depends on.

started: its unit is active and QMP says it runs; healthy: the project's supervisor, which
probes it (SSH with the project key and cloud-init done, then its healthcheck), says so in
what it keeps of it; completed successfully: it powered off cleanly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

import qmp
import systemd_dbus
from orchestrator.config.topology import Instance, dependencies
from orchestrator.errors import QemuComposeError
from orchestrator.progress import Stage, Status
from orchestrator.supervisor.eventlog import EventLog
from orchestrator.supervisor.health import HealthRecord, HealthStatus, UnhealthyError, read_health
from orchestrator.supervisor.supervised import Probe

from .session import Session
from .supervision import probe_of

log = logging.getLogger(__name__)
RUNNING_TIMEOUT = 60.0  # from the start job's end until QMP says the VM runs


class QemuEndedError(QemuComposeError):
    """QEMU ended right after its unit started; the message has its journal."""


@dataclass
class Conditions:
    """What dependants of one VM wait for, set as it gets there (all of them if it fails)."""

    started: trio.Event = field(default_factory=trio.Event)
    healthy: trio.Event = field(default_factory=trio.Event)
    completed: trio.Event = field(default_factory=trio.Event)
    failure: str | None = None
    completed_ok: bool = False

    def fail(self, why: str) -> None:
        self.failure = why
        for event in (self.started, self.healthy, self.completed):
            event.set()


async def wait_for_dependencies(
    session: Session, conditions: dict[str, Conditions], inst: Instance
) -> None:
    for name, dependency in dependencies(session.project.model, inst).items():
        theirs = conditions.get(name)
        if theirs is None:  # not part of this run: it runs already (or was selected out)
            continue
        event = {
            "service_started": theirs.started,
            "service_healthy": theirs.healthy,
            "service_completed_successfully": theirs.completed,
        }[dependency.condition]
        if not event.is_set():
            session.report(
                inst.name, Stage.DEPENDS, Status.WAITING, f"{name} ({dependency.condition})"
            )
            await event.wait()
        broken = theirs.failure or (
            dependency.condition == "service_completed_successfully" and not theirs.completed_ok
        )
        if broken and dependency.required:
            raise QemuComposeError(
                f"{name} failed: {theirs.failure or 'did not complete successfully'}"
            )


async def wait_running(session: Session, inst: Instance) -> None:
    """Until QMP says the VM runs; a QEMU that dies first fails with its unit's journal.

    One connection, however long QEMU takes to greet (seconds, on a host busy with many TCG
    guests: retrying would only queue more connections), raced against the unit's end.
    """
    socket = str(session.paths.vm(inst.name).qmp_control_socket)
    unit = session.vm_unit(inst.name)
    ended: list[systemd_dbus.UnitStatus] = []

    async def watch_unit(scope: trio.CancelScope) -> None:
        async with session.manager.watch([unit]) as changes:
            async for status in changes:
                if status.has_stopped:
                    ended.append(status)
                    scope.cancel()
                    return

    with trio.fail_after(RUNNING_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_unit, nursery.cancel_scope)
            try:
                async with qmp.open_session(socket, timeout=RUNNING_TIMEOUT) as qmp_session:
                    if not (await qmp_session.query_status()).running:
                        await qmp_session.execute("cont")
                nursery.cancel_scope.cancel()
            except (qmp.QmpConnectError, qmp.VmGoneError):
                await trio.sleep(5)  # the unit's end, if that is why, comes and cancels this
                raise
    if ended:
        status = ended[0]
        journal = await systemd_dbus.last_lines(
            unit,
            user=session.connection.bus != "system",
            directory=session.connection.journal_dir,
            pid=status.exec_main_pid,
        )
        lines = "".join(f"\n    {line}" for line in journal[-10:])
        raise QemuEndedError(f"QEMU ended at once ({status.describe_exit()}){lines}")
    session.report(inst.name, Stage.RUNNING, Status.DONE, "QEMU runs")


class HealthBoard:
    """Wakes the VMs of one `up` waiting for their health: one follower of the event log for
    them all, each ``health_status`` record a wake-up of the VM it is about."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._wakes: dict[str, trio.Event] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.log.follow(from_end=True) as records:
            task_status.started()
            async for record in records:
                if record.event == "health_status":
                    self._wakes.pop(record.vm, trio.Event()).set()

    async def changed(self, vm: str, *, at_most: float) -> None:
        """Until the VM's health changes (or ``at_most`` seconds: its file is read again)."""
        with trio.move_on_after(at_most):
            await self._wakes.setdefault(vm, trio.Event()).wait()


class HealthTimeoutError(QemuComposeError):
    """A VM was not healthy in time: the message has its state and last probe's output."""


async def wait_healthy(
    session: Session, board: HealthBoard, inst: Instance, timeout: float
) -> None:
    """Until the supervisor says the VM's QEMU (the one its unit runs now), judged by the
    file's healthcheck, is healthy; it probes, this reads what it keeps (``health.json``).
    UnhealthyError once it is unhealthy; QemuEndedError when its unit stops meanwhile."""
    spec = probe_of(session.project, inst, session.state)
    if spec is None:
        return
    unit = session.vm_unit(inst.name)
    status = await session.manager.status(unit)
    if not status.is_active:
        raise QemuEndedError(f"its unit is {status.active_state} ({status.describe_exit()})")
    found: list[HealthRecord | None] = [None]
    ended: list[systemd_dbus.UnitStatus] = []
    healthy, unhealthy = False, None
    async with trio.open_nursery() as nursery:  # nothing raised in here: no exception group
        nursery.start_soon(_until_unit_stops, session, unit, ended, nursery.cancel_scope)
        with trio.move_on_after(timeout):
            try:
                await _until_healthy(session, board, inst, status.active_enter_usec, spec, found)
                healthy = True
            except UnhealthyError as err:
                unhealthy = err
        nursery.cancel_scope.cancel()
    if unhealthy is not None:
        raise unhealthy
    if healthy:
        return
    if ended:
        raise QemuEndedError(f"QEMU ended ({ended[0].describe_exit()})")
    record = found[0]
    if record is None:
        raise HealthTimeoutError(
            f"not healthy within {timeout:g} s: the supervisor keeps no health of it "
            f"(is {session.supervisor_unit()} running? its journal says why not)"
        )
    what = record.status.value if record.ready_at is not None else "starting, SSH not ready"
    raise HealthTimeoutError(f"not healthy within {timeout:g} s: {what}{_last_probe(record)}")


async def _until_unit_stops(
    session: Session, unit: str, ended: list[systemd_dbus.UnitStatus], scope: trio.CancelScope
) -> None:
    """Note the unit's end and stop the wait; a watch that fails leaves the wait alone."""
    try:
        async with session.manager.watch([unit]) as changes:
            async for status in changes:
                if not status.is_active:
                    ended.append(status)
                    scope.cancel()
                    return
    except systemd_dbus.SystemdError as err:
        log.warning("cannot follow %s while waiting for its health: %s", unit, err)


async def _until_healthy(
    session: Session,
    board: HealthBoard,
    inst: Instance,
    since: int,
    spec: Probe,
    found: list[HealthRecord | None],
) -> None:
    name, check = inst.name, spec.check()
    stage = Stage.SSH
    session.report(name, stage, Status.WORKING, "the supervisor logs in")
    while True:
        record = read_health(session.paths.vm(name))
        if record is not None and record.is_of(since, check):
            found[0] = record
            if stage is Stage.SSH and record.ready_at is not None:
                session.report(name, stage, Status.DONE)
                stage = Stage.HEALTH
                if spec.command is not None:
                    session.report(name, stage, Status.WORKING, "its healthcheck")
            if record.status is HealthStatus.HEALTHY:
                if spec.command is not None:
                    session.report(name, Stage.HEALTH, Status.DONE, "healthy")
                return
            if record.status is HealthStatus.UNHEALTHY:
                raise UnhealthyError(f"unhealthy{_last_probe(record)}")
        await board.changed(name, at_most=1.0)


def _last_probe(record: HealthRecord) -> str:
    if not record.log:
        return ""
    last = record.log[-1]
    output = last.output.strip().splitlines()[-1:] or [""]
    return f"; last probe: exit {last.exit_code}, {output[0][:200]!r}"


async def wait_completed(session: Session, inst: Instance, me: Conditions) -> None:
    """Until the VM's unit ends; ``me.completed_ok`` says whether it ended well."""
    unit = session.vm_unit(inst.name)
    session.report(inst.name, Stage.COMPLETE, Status.WAITING, "until it powers off")
    async with session.manager.watch([unit]) as changes:
        async for status in changes:
            if status.has_stopped:
                me.completed_ok = status.result in ("success", "")
                break
    me.completed.set()
    session.report(
        inst.name, Stage.COMPLETE, Status.DONE if me.completed_ok else Status.FAILED, status.result
    )
