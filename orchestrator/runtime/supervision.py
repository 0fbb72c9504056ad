"""The project's supervisor from the runtime's side: which VMs it watches (with the restart
policy each one's QEMU runs with), started by `up`, stopped when nothing is left to watch."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import systemd_dbus
from orchestrator.config.model import Healthcheck
from orchestrator.config.project import Project
from orchestrator.config.topology import Instance, instances
from orchestrator.guest import probe
from orchestrator.progress import Stage, Status
from orchestrator.state.files import ProjectState
from orchestrator.state.identity import Owner, project_dir
from orchestrator.state.paths import ProjectPaths, vm_unit
from orchestrator.supervisor.health import HealthRules, has_health
from orchestrator.supervisor.supervised import (
    PROTOCOL,
    PROTOCOL_VARIABLE,
    Probe,
    Watched,
    write_supervised,
)

from .access import ssh_target
from .observe import UnitTakenError

if TYPE_CHECKING:
    from .session import Session


def supervised_table(
    project: Project, paths: ProjectPaths, state: ProjectState, names: set[str]
) -> dict[str, Watched]:
    """The VMs to watch, each with the policy its QEMU runs with (the state's, which is the
    file's of its last start: a VM not restarted since the file changed keeps the old one)."""
    by_name = {i.name: i for i in instances(project.model)}

    def policy(name: str) -> str:
        saved = state.vms.get(name)
        if saved is not None:
            return saved.restart
        return by_name[name].vm.restart if name in by_name else "no"

    def how_to_probe(name: str) -> Probe | None:
        inst = by_name.get(name)
        return probe_of(project, inst, state) if inst is not None else None

    return {
        name: Watched(
            qmp=str(paths.vm(name).qmp_socket),
            unit=state.vms[name].unit if name in state.vms else vm_unit(project.name, name),
            restart=policy(name),
            probe=how_to_probe(name),
        )
        for name in names
    }


def probe_of(project: Project, inst: Instance, state: ProjectState) -> Probe | None:
    """How the supervisor probes a VM: SSH as `ssh` logs in, then its healthcheck."""
    target = ssh_target(project, inst, state)
    if target is None or not has_health(inst.vm):
        return None
    check = inst.vm.healthcheck or Healthcheck()
    rules = HealthRules.of(check)
    return Probe(
        port=target.port,
        user=target.user,
        key=str(target.key),
        command=probe.healthcheck_command(check.test) if check.test else None,
        interval=rules.interval,
        timeout=rules.timeout,
        retries=rules.retries,
        start_period=rules.start_period,
        start_interval=rules.start_interval,
    )


async def ensure_supervisor(session: Session, names: set[str]) -> None:
    """Tell the project's supervisor which VMs to watch; start it if it does not run."""
    table = supervised_table(session.project, session.paths, session.state, names)
    write_supervised(session.paths.supervised_vms, table)
    unit = session.supervisor_unit()
    status = await session.manager.status(unit)
    other = session.taken(status, "supervisor")
    if other is not None:
        raise UnitTakenError(f"{unit} is taken by {other}: rename the project with -p")
    if status.active_state.running:
        if f"{PROTOCOL_VARIABLE}={PROTOCOL}" in status.environment:
            return
        # started by another version of qemu-compose (an upgrade): it would not do what this
        # one expects of it (keep health, say); a new one takes over, the VMs run on
        session.report("", Stage.SUPERVISOR, Status.WORKING, "restarting: another version")
        await session.manager.stop(unit, timeout=30)
        status = await session.manager.status(unit)
    if status.is_failed:
        await session.manager.reset_failed(unit)
    argv = [sys.executable, "-m", "orchestrator.supervisor"]
    argv += ["--state-dir", str(session.project.state_dir)]
    argv += ["--bus", _bus_address(session.connection.bus)]
    await session.manager.start(
        systemd_dbus.TransientUnit(
            unit,
            argv,
            description=Owner(
                "supervisor", session.project.name, "", project_dir(session.project)
            ).describe(),
            environment={PROTOCOL_VARIABLE: PROTOCOL},
            working_directory=str(session.project.state_dir),
            restart="on-failure",
            restart_sec=1.0,
        ),
    )
    session.report("", Stage.SUPERVISOR, Status.DONE, unit)


async def stop_supervisor(session: Session) -> None:
    unit = session.supervisor_unit()
    status = await session.manager.status(unit)
    if not status.exists or session.taken(status, "supervisor") is not None:
        return  # none, or another project's: not ours to stop
    await session.manager.stop(unit, timeout=30)
    if (await session.manager.status(unit)).is_failed:
        await session.manager.reset_failed(unit)


def _bus_address(bus: str) -> str:
    """The bus as the supervisor must be told it: "user" means this user's bus, by address."""
    if bus == "system":
        return "system"
    return systemd_dbus.bus_address(bus)[0]
