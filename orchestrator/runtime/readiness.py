"""When a VM counts as started, ready or completed, and waiting for what it depends on.

started: its unit is active and QMP says it runs; healthy: SSH with the project key (and
cloud-init done), then its healthcheck, pass; completed successfully: it powered off cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

import qmp
import systemd_dbus
from orchestrator.config.topology import Instance, dependencies
from orchestrator.errors import QemuComposeError
from orchestrator.guest import probe
from orchestrator.progress import Stage, Status
from orchestrator.supervisor.health import HealthRules, has_health, until_healthy

from .launch import ssh_target
from .session import Session

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


async def wait_ready(session: Session, inst: Instance, timeout: float) -> None:
    """Until SSH answers and cloud-init is done, then until the healthcheck passes."""
    vm = inst.vm
    if not has_health(vm):
        return
    target = ssh_target(session.project, inst, session.state)
    assert target is not None
    session.report(inst.name, Stage.SSH, Status.WORKING, f"{target.user}@127.0.0.1:{target.port}")
    with trio.fail_after(timeout):
        await probe.wait_ready(target)
    session.report(inst.name, Stage.SSH, Status.DONE)
    check = vm.healthcheck
    if check is None or not check.test:
        return
    command = probe.healthcheck_command(check.test)

    async def passes(timeout: float) -> bool:
        return await probe.passes(target, command, timeout=timeout)

    session.report(inst.name, Stage.HEALTH, Status.WORKING, command)
    with trio.fail_after(timeout):
        await until_healthy(HealthRules.of(check), passes, what=repr(command))
    session.report(inst.name, Stage.HEALTH, Status.DONE, "healthy")


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
