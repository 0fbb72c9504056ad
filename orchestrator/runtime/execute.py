"""`up`: observe, plan, prepare, then every VM as a task of one nursery.

A VM waits for the conditions of what it depends on, starts its transient unit (`start_vm`:
the effects of a launch that `vm_launch` decided), waits until it runs and is ready, and
reports each step as an event. A VM that fails does not orphan the others: every VM ends its
task, and `up` ends with a summary and an UpError that carries the result.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

import netcfg
from netcfg import Forward
from orchestrator.config.project import Project
from orchestrator.config.quantities import parse_size
from orchestrator.config.topology import Instance, dependencies, instances, select
from orchestrator.errors import QemuComposeError
from orchestrator.guest.accel import choose_accel, read_host_facts
from orchestrator.guest.cloudinit import seed_files, write_seed_iso
from orchestrator.guest.disks import create_overlay
from orchestrator.guest.knownhosts import forget_host
from orchestrator.guest.mounts import check_bind_sources
from orchestrator.guest.secrets import (
    ConsolePassword,
    ProjectKey,
    ensure_console_password,
    ensure_project_key,
)
from orchestrator.progress import Event, Reporter, Stage, Status
from orchestrator.state.files import VmState
from orchestrator.state.paths import ensure_socket_dir, vm_unit

from .launch import LaunchFacts, grace_period, vm_launch
from .observe import observe
from .plan import Action, ActionKind, Observed, config_hash, plan
from .ports import claim_ports
from .prepare import prepare_images, prepare_networks, prepare_volumes
from .readiness import Conditions, wait_completed, wait_for_dependencies, wait_ready, wait_running
from .session import Session, Settings, open_session, vm_failures
from .supervision import ensure_supervisor
from .teardown import remove_vm, stop_one


@dataclass(frozen=True, slots=True)
class UpResult:
    actions: tuple[Action, ...]
    ready: tuple[str, ...]
    failed: dict[str, str]


class UpError(QemuComposeError):
    """Some VMs did not come up; the message lists them and why, ``result`` has it all."""

    def __init__(self, message: str, result: UpResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class UpRun:
    """What one `up` holds while its VMs start."""

    session: Session
    key: ProjectKey
    password: ConsolePassword
    images: dict[str, Path] = field(default_factory=dict)
    networks: dict[str, netcfg.BridgeNetwork] = field(default_factory=dict)
    conditions: dict[str, Conditions] = field(default_factory=dict)
    awaited_completion: set[str] = field(default_factory=set)  # VMs a dependant waits to end
    ports: dict[str, list[Forward] | netcfg.NetcfgError] = field(default_factory=dict)
    reached: dict[str, Stage] = field(default_factory=dict)  # the stage each VM reported last

    def note(self, event: Event) -> None:
        if event.vm:
            self.reached[event.vm] = event.stage


async def up(
    project: Project, settings: Settings, report: Reporter, *, dry_run: bool = False
) -> UpResult:
    if dry_run:
        async with open_session(project, settings, report, lock=False) as session:
            actions = _plan(project, settings, await _observe(session))
            return UpResult(tuple(actions), (), {})
    async with open_session(project, settings, report) as session:
        actions = _plan(project, settings, await _observe(session))
        return await _execute(session, actions)


async def _observe(session: Session) -> dict[str, Observed]:
    return await observe(session.project, session.manager, session.state)


def _plan(project: Project, settings: Settings, observed: dict[str, Observed]) -> list[Action]:
    selected = (
        select(
            project.model,
            settings.services,
            project=project.name,
            with_dependencies=not settings.no_deps,
        )
        if settings.services
        else None
    )
    return plan(
        project.model,
        observed,
        selected=selected,
        no_recreate=settings.no_recreate,
        force_recreate=settings.force_recreate,
        remove_orphans=settings.remove_orphans,
    )


async def _execute(session: Session, actions: list[Action]) -> UpResult:
    project, state = session.project, session.state
    by_name = {i.name: i for i in instances(project.model)}
    todo = [a for a in actions if a.vm in by_name]
    for action in actions:
        if action.kind is ActionKind.REMOVE:
            await remove_vm(session, action.vm)
        elif action.kind is ActionKind.ORPHAN:
            session.report(action.vm, Stage.PLAN, Status.SKIPPED, action.cause)
    chosen = [by_name[a.vm] for a in todo]
    run = UpRun(
        session,
        key=ensure_project_key(session.paths.ssh_dir, project.name),
        password=ensure_console_password(session.paths.console_password),
    )
    run.session = session = replace(session, report=session.report.also(run.note))
    run.images = await prepare_images(session, chosen)
    await prepare_volumes(session, chosen)
    run.networks = await prepare_networks(session, chosen)
    await ensure_supervisor(session, set(state.vms) | {i.name for i in chosen})
    run.conditions = {i.name: Conditions() for i in chosen}
    starting = [
        (a.vm, by_name[a.vm].vm, state.vms[a.vm].ssh_port if a.vm in state.vms else None)
        for a in todo
        if a.kind not in (ActionKind.KEEP, ActionKind.RECREATE)  # a recreated VM holds its
    ]  # ports until it is stopped: it claims them then
    if starting:  # a thread: the registry is locked and fsynced; ports are tried by binding
        run.ports = await trio.to_thread.run_sync(claim_ports, project.name, starting)
    run.awaited_completion = {
        name
        for other in instances(project.model)
        for name, dep in dependencies(project.model, other).items()
        if dep.condition == "service_completed_successfully"
    }
    limiter = trio.CapacityLimiter(session.settings.parallel or math.inf)
    async with session.store.deferring(), trio.open_nursery() as nursery:
        for action in todo:
            nursery.start_soon(_run_vm, run, by_name[action.vm], action, limiter)
    failed = {n: c.failure for n, c in run.conditions.items() if c.failure}
    ready = tuple(n for n, c in run.conditions.items() if not c.failure)
    result = UpResult(tuple(actions), ready, {n: str(f) for n, f in failed.items()})
    if failed:
        lines = "".join(f"\n  {vm}: {why}" for vm, why in failed.items())
        raise UpError(f"{len(failed)} of {len(todo)} VMs did not come up:{lines}", result)
    return result


async def _run_vm(
    run: UpRun, inst: Instance, action: Action, limiter: trio.CapacityLimiter
) -> None:
    session = run.session
    me = run.conditions[inst.name]
    report = session.report
    unit = vm_unit(session.project.name, inst.name)
    try:
        with vm_failures(inst.name, unit, lambda: run.reached.get(inst.name, Stage.PLAN)):
            await wait_for_dependencies(session, run.conditions, inst)
            async with limiter:
                if action.kind is ActionKind.KEEP:  # its unit is active: QEMU runs, as before
                    report(inst.name, Stage.UNIT, Status.DONE, "already running")
                else:
                    await start_vm(run, inst, action)
                    await wait_running(session, inst)
            me.started.set()
            await wait_ready(session, inst)
            me.healthy.set()
            report(inst.name, Stage.READY, Status.DONE)
            if inst.name in run.awaited_completion:
                await wait_completed(session, inst, me)
    except QemuComposeError as err:  # a VmError, or one of ours (a dependency failed, ...)
        me.fail(str(err).splitlines()[0])
        report(inst.name, Stage.FAILED, Status.FAILED, str(err))
    except trio.TooSlowError:
        me.fail("not ready in time")
        limit = session.settings.ready_timeout
        report(inst.name, Stage.FAILED, Status.FAILED, f"not ready within {limit:g} s")


async def start_vm(run: UpRun, inst: Instance, action: Action) -> None:
    """Carry out a VM's launch: its directory, disk, ports, TAPs and seed, then its unit."""
    session = run.session
    vm, name, report = inst.vm, inst.name, session.report
    project = session.project.name
    paths = session.paths.vm(name)
    if action.kind is ActionKind.RECREATE:
        report(name, Stage.UNIT, Status.WORKING, "recreating: stopping the old VM")
        await stop_one(session, name, grace_period(vm))
        shutil.rmtree(paths.directory, ignore_errors=True)
        forget_host(session.paths, project, name)
    paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_socket_dir(paths.sockets)
    unit = vm_unit(project, name)
    if (await session.manager.status(unit)).is_failed:
        await session.manager.reset_failed(unit)
    check_bind_sources(name, vm.volumes)
    if vm.image is not None and not paths.disk.exists():
        report(name, Stage.DISK, Status.WORKING)
        size = parse_size(vm.disk.size) if vm.disk.size else None
        await create_overlay(run.images[vm.image.source], paths.disk, size)
        report(name, Stage.DISK, Status.DONE, str(paths.disk))
    saved = session.state.vms.get(name)
    claimed = run.ports.pop(name, None)
    if claimed is None:  # not claimed with the others (a lone start): claim them now
        previous = saved.ssh_port if saved else None
        wanted = [(name, vm, previous)]
        claimed = (await trio.to_thread.run_sync(claim_ports, project, wanted))[name]
    if isinstance(claimed, Exception):
        raise claimed
    forwards = claimed
    taps = {n: await netcfg.attach_tap(run.networks[n], name) for n in sorted(vm.networks)}
    named = session.project.files
    extra = vm.cloud_init.user_data
    accel = choose_accel(vm.accel, read_host_facts(), vm.cpu_model)
    launch = vm_launch(
        inst,
        LaunchFacts(
            project=project,
            paths=paths,
            accel=accel,
            forwards=forwards,
            taps=taps,
            volume_paths={
                m.source: session.paths.volume(m.source) for m in vm.volumes if m.type == "volume"
            },
            ssh_public_key=run.key.public_line,
            password_hash=run.password.crypt_hash,
            provision=[
                step.inline if step.inline is not None else named.scripts[step.script or ""]
                for step in vm.provision
            ],
            extra_user_data=named.user_data[extra] if isinstance(extra, str) else extra,
            qemu=shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64",
            python=sys.executable,
        ),
    )
    if launch.guest is not None:
        write_seed_iso(paths.seed, seed_files(launch.guest))
    report(name, Stage.UNIT, Status.WORKING, f"{accel.name}, {vm.cpu} CPU, {vm.memory} MiB")
    await session.manager.start(launch.unit)  # no settle: wait_running sees a QEMU that dies
    recorded = saved.config_hash if saved and session.settings.keep_config else None
    session.state.vms[name] = VmState(
        unit=launch.unit.name,
        config_hash=recorded or config_hash(session.project.model, inst),
        created_at=saved.created_at if saved and action.kind is ActionKind.START else time.time(),
        ssh_port=forwards[0].host_port,
        macs=launch.macs,
        ports=[f"{f.host_ip}:{f.host_port}->{f.guest_port}/{f.protocol}" for f in forwards[1:]],
        restart=vm.restart,
    )
    session.store.save()  # with the supervised VMs: its policy, as this QEMU runs it
    report(name, Stage.UNIT, Status.DONE, launch.unit.name)
