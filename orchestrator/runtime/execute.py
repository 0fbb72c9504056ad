"""`up`: observe, plan (UpPlan), then carry the plan out: orphans, images, volumes, networks,
the supervisor and the port claims, then every VM as a task of one nursery (start.py).

`up` ends with a summary, and an UpError that carries the result when some VM did not come
up. Its dry run observes and plans without the lock and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

import trio

from orchestrator.config.project import Project, scaled
from orchestrator.config.topology import dependencies, instances, select
from orchestrator.errors import QemuComposeError
from orchestrator.guest.secrets import ensure_console_password, ensure_project_key
from orchestrator.progress import Reporter, Stage, Status
from orchestrator.state.files import Scale
from orchestrator.supervisor.eventlog import EventLog

from .clones import plan_warm, remove_unfinished
from .netmode import require_rootless
from .observe import observe, observe_resources, project_units
from .options import Connection, PlanOptions, UpOptions
from .plan import Action, ActionKind, UpPlan, plan_up
from .ports import claim_ports, fixed_ports
from .prepare import prepare_images, prepare_networks, prepare_volumes
from .readiness import Conditions, HealthBoard
from .session import Session, open_session
from .snapshots.common import qemu_version
from .snapshots.loading import suspended_state
from .start import Rendezvous, Resumed, UpRun, run_vm
from .supervision import ensure_supervisor
from .teardown import remove_vm


@dataclass(frozen=True, slots=True)
class UpResult:
    actions: tuple[Action, ...]
    ready: tuple[str, ...]
    failed: dict[str, str]
    plan: UpPlan | None = None


class UpError(QemuComposeError):
    """Some VMs did not come up; the message lists them and why, ``result`` has it all."""

    def __init__(self, message: str, result: UpResult) -> None:
        super().__init__(message)
        self.result = result


async def up(
    project: Project, options: UpOptions, connection: Connection, report: Reporter
) -> UpResult:
    async with open_session(project, connection, report) as opened:
        for definition, scale in list(opened.state.scale.items()):  # the file changed since
            vm = project.model.vms.get(definition)
            if vm is None or vm.replicas != scale.file:
                del opened.state.scale[definition]
        session = _scaled(opened, options.plan.scale)
        if await remove_unfinished(session):  # (its units again: some are gone)
            units = await project_units(session.project, session.manager, session.state)
            session = replace(session, units=units)
        up_plan = await _plan(session, options.plan)
        for definition, count in options.plan.scale.items():  # what the next commands see
            file = project.model.vms[definition].replicas
            session.state.scale[definition] = Scale(count, file)
        return await _execute(session, up_plan, options)


async def up_in(session: Session, options: UpOptions) -> UpResult:
    """`up` in a session a command holds already (snapshot restore, resume), from the units
    as they are now (the command may have stopped some)."""
    units = await project_units(session.project, session.manager, session.state)
    session = replace(session, units=units)
    return await _execute(session, await _plan(session, options.plan), options)


async def dry_run(project: Project, options: PlanOptions, connection: Connection) -> UpPlan:
    """What `up` would do, with causes; nothing is locked or changed."""
    async with open_session(project, connection, Reporter(), lock=False) as session:
        return await _plan(_scaled(session, options.scale), options)


def _scaled(session: Session, scale: Mapping[str, int]) -> Session:
    """The session with the replica counts of `up --scale` (its supervisor table too)."""
    if not scale:
        return session
    session.store.project = project = scaled(session.project, scale)
    return replace(session, project=project)


async def _plan(session: Session, options: PlanOptions) -> UpPlan:
    project, units = session.project, session.units
    units.refuse_foreign(project)  # the same name from another directory: its, not ours
    observed = await observe(project, units, session.state)
    supervisor = units.supervisor is not None and units.supervisor.active_state.running
    resources = observe_resources(project, session.state, supervisor)
    selected = (
        select(
            project.model,
            options.services,
            project=project.name,
            with_dependencies=not options.no_deps,
        )
        if options.services
        else None
    )
    return plan_up(
        project.model,
        observed,
        resources,
        selected=selected,
        no_recreate=options.no_recreate,
        force_recreate=options.force_recreate,
        remove_orphans=options.remove_orphans,
        remove=_scaled_away(project, observed, options),
        files=project.files,
        named=[i.name for i in select(project.model, options.services, project=project.name)]
        if options.services
        else None,
    )


def _scaled_away(project: Project, observed: Collection[str], options: PlanOptions) -> list[str]:
    """The replicas `up --scale` takes away: those of a scaled definition above its count."""
    gone = []
    for name in observed:
        definition, _, number = name.rpartition("-")
        count = options.scale.get(definition)
        if count is not None and number.isdigit() and int(number) > count:
            gone.append(name)
    return gone


async def _resumed(session: Session, todo: list[Action], options: UpOptions) -> dict[str, Resumed]:
    """The suspended VMs that start: from their states (or why their state no longer fits,
    for each to fail on)."""
    starting = [
        a.vm
        for a in todo
        if a.kind is ActionKind.START
        and a.vm not in options.incoming
        and session.paths.vm(a.vm).is_suspended
    ]
    if not starting:
        return {}
    qemu = await qemu_version()
    found: dict[str, Resumed] = {}
    for vm in starting:
        try:
            state = suspended_state(session, vm, qemu)
        except QemuComposeError as err:
            found[vm] = err
            continue
        if state is not None:
            found[vm] = state
    return found


async def _execute(session: Session, up_plan: UpPlan, options: UpOptions) -> UpResult:
    project, state = session.project, session.state
    by_name = {i.name: i for i in instances(project.model)}
    todo = [a for a in up_plan.actions if a.vm in by_name]
    for action in up_plan.actions:
        if action.kind is ActionKind.REMOVE:
            await remove_vm(session, action.vm)
        elif action.kind is ActionKind.ORPHAN:
            session.report(action.vm, Stage.PLAN, Status.SKIPPED, action.cause)
    run = UpRun(
        session,
        options,
        key=ensure_project_key(session.paths.ssh_dir, project.name),
        password=ensure_console_password(session.paths.console_password),
    )
    run.session = session = replace(session, report=session.report.also(run.note))
    if up_plan.networks and session.network_mode == "rootless":
        await require_rootless()  # before anything is fetched or made
    run.images = await prepare_images(session, up_plan.images)
    run.warm = await plan_warm(session, todo, run.images)
    await prepare_volumes(session, up_plan.volumes)
    run.networks = await prepare_networks(session, [n.name for n in up_plan.networks])
    await ensure_supervisor(session, set(state.vms) | {a.vm for a in todo})
    run.conditions = {a.vm: Conditions() for a in todo}
    run.loaded = Rendezvous({a.vm for a in todo if a.vm in options.incoming})
    run.resumed = await _resumed(session, todo, options)
    if up_plan.ports:  # a thread: the registry is locked and fsynced; ports are tried by binding
        fixed = fixed_ports(project.model.vms.values())
        run.ports = await trio.to_thread.run_sync(claim_ports, project.name, up_plan.ports, fixed)
    awaited = [
        (name, dep.condition)
        for other in instances(project.model)
        for name, dep in dependencies(project.model, other).items()
    ]
    run.awaited_completion = {n for n, c in awaited if c == "service_completed_successfully"}
    run.awaited_health = {n for n, c in awaited if c == "service_healthy"}
    limiter = trio.CapacityLimiter(options.parallel or math.inf)
    async with session.store.deferring(), trio.open_nursery() as nursery:
        sources = any(w.source for w in run.warm.values())  # their templates wait for ready
        if options.wait or run.awaited_health or sources:  # the supervisor's word, for all
            run.board = HealthBoard(EventLog(session.paths.events_dir))
            await nursery.start(run.board.run)
        async with trio.open_nursery() as vms:
            for action in todo:
                vms.start_soon(run_vm, run, by_name[action.vm], action, limiter)
        nursery.cancel_scope.cancel()
    failed = {n: c.failure for n, c in run.conditions.items() if c.failure}
    ready = tuple(n for n, c in run.conditions.items() if not c.failure)
    result = UpResult(up_plan.actions, ready, {n: str(f) for n, f in failed.items()}, up_plan)
    if failed:
        lines = "".join(f"\n  {vm}: {why}" for vm, why in failed.items())
        raise UpError(f"{len(failed)} of {len(todo)} VMs did not come up:{lines}", result)
    return result
