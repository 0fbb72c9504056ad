"""One VM of `up`, as a task: it waits for the conditions of what it depends on, starts
its transient unit (`start_vm`: the effects of the launch that `vm_launch` decided), waits
until it runs and is ready, and reports each step. What fails it is a VmError, reported; it
never orphans the other VMs' tasks.
"""

from __future__ import annotations

import ipaddress
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

import netcfg
import qmp
from netcfg import Forward, taphelper
from netcfg.plumbing import HOST
from orchestrator.config.quantities import parse_size
from orchestrator.config.topology import Instance
from orchestrator.errors import QemuComposeError
from orchestrator.guest.accel import Accel, choose_accel, read_host_facts
from orchestrator.guest.cloudinit import seed_files, write_seed_iso
from orchestrator.guest.disks import check_growable, copy_file, create_overlay, grow_disk
from orchestrator.guest.firmware import required_ovmf, vm_variables
from orchestrator.guest.knownhosts import forget_host
from orchestrator.guest.mounts import check_bind_sources
from orchestrator.guest.qemu_argv import RamFile, SharedRam, Uefi
from orchestrator.guest.secrets import ConsolePassword, ProjectKey
from orchestrator.progress import Event, Stage, Status
from orchestrator.state.files import VmState, private_dir
from orchestrator.state.identity import project_dir
from orchestrator.state.paths import make_socket_dir, vm_unit, write_record
from orchestrator.state.templates import TemplatePaths, TemplateRecord, Templates

from .changes import digest
from .clones import WarmStart, become_itself, make_template, shares_ram
from .faults import clear_faults, resume_if_paused
from .launch import LaunchFacts, grace_period, qemu_binary, recorded, vm_launch
from .observe import UnitTakenError
from .options import UpOptions
from .plan import Action, ActionKind
from .ports import claim_ports, fixed_ports
from .readiness import (
    Conditions,
    HealthBoard,
    wait_completed,
    wait_for_dependencies,
    wait_healthy,
    wait_running,
)
from .session import Session, vm_failures
from .snapshots.loading import discard_suspended, load_saved_state
from .teardown import remove_vm, stop_one

Resumed = Path | QemuComposeError  # a suspended VM's state, or why it no longer fits


@dataclass
class UpRun:
    """What one `up` holds while its VMs start."""

    session: Session
    options: UpOptions
    key: ProjectKey
    password: ConsolePassword
    images: dict[str, Path] = field(default_factory=dict)
    networks: dict[str, netcfg.BridgeNetwork] = field(default_factory=dict)
    conditions: dict[str, Conditions] = field(default_factory=dict)
    board: HealthBoard | None = None  # wakes the VMs waiting for the supervisor's health
    awaited_completion: set[str] = field(default_factory=set)  # VMs a dependant waits to end
    awaited_health: set[str] = field(default_factory=set)  # VMs a dependant waits to be healthy
    ports: dict[str, list[Forward] | netcfg.NetcfgError] = field(default_factory=dict)
    reached: dict[str, Stage] = field(default_factory=dict)  # the stage each VM reported last
    loaded: Rendezvous | None = None  # the VMs starting from a saved state wait for each other
    resumed: dict[str, Resumed] = field(default_factory=dict)  # suspended VMs: their states
    warm: dict[str, WarmStart] = field(default_factory=dict)  # warm definitions' starts

    def template_source(self, inst: Instance) -> WarmStart | None:
        """The warm start whose template this VM's state becomes, if it is that replica."""
        start = self.warm.get(inst.definition)
        return start if start is not None and start.source == inst.name else None

    def clone_start(self, inst: Instance) -> WarmStart | None:
        """The warm start this VM is a clone of, if it is one."""
        start = self.warm.get(inst.definition)
        return start if start is not None and inst.name in start.clones else None

    def note(self, event: Event) -> None:
        if event.vm:
            self.reached[event.vm] = event.stage


class Rendezvous:
    """Where the VMs that start from a saved state wait until all of them are loaded (or
    failed): they resume together."""

    def __init__(self, names: set[str]) -> None:
        self._waiting = set(names)
        self._all = trio.Event()
        if not self._waiting:
            self._all.set()

    def leave(self, name: str) -> None:
        self._waiting.discard(name)
        if not self._waiting:
            self._all.set()

    async def arrive(self, name: str) -> None:
        self.leave(name)
        await self._all.wait()


async def run_vm(run: UpRun, inst: Instance, action: Action, limiter: trio.CapacityLimiter) -> None:
    try:
        await _run_vm(run, inst, action, limiter)
    finally:
        if run.loaded is not None:
            run.loaded.leave(inst.name)  # a failed one holds nobody up
        source = run.template_source(inst)
        if source is not None:  # its clones boot instead
            source.give(None, f"{inst.name} did not come up")


async def _run_vm(
    run: UpRun, inst: Instance, action: Action, limiter: trio.CapacityLimiter
) -> None:
    session = run.session
    me = run.conditions[inst.name]
    report = session.report
    unit = session.vm_unit(inst.name)
    try:
        with vm_failures(inst.name, unit, lambda: run.reached.get(inst.name, Stage.PLAN)):
            if inst.name not in run.options.incoming:  # those resume together, at the saved
                await wait_for_dependencies(session, run.conditions, inst)  # instant: all up
            resumed = run.resumed.get(inst.name)
            if isinstance(resumed, QemuComposeError):
                raise resumed
            template = await _template_for(run, inst)
            state = run.options.incoming.get(inst.name)  # a snapshot's: loaded with others
            async with limiter:
                if action.kind is ActionKind.KEEP:  # its unit is active: QEMU runs, as before
                    _record_kept(session, inst.name, action)
                    if discard_suspended(session.paths.vm(inst.name)):  # a suspend cut short:
                        report(inst.name, Stage.SUSPEND, Status.SKIPPED, "it runs on")  # stale
                    if await resume_if_paused(session, inst.name):  # up makes it run
                        report(inst.name, Stage.UNIT, Status.DONE, "already running")
                    else:
                        why = "its QEMU waited for a saved state (a restore cut short)"
                        report(inst.name, Stage.UNIT, Status.WORKING, f"{why}: started anew")
                        await stop_one(session, inst.name, 0.0)
                        await start_vm(run, inst, action)
                        await wait_running(session, inst)
                elif template is not None:
                    try:
                        await start_vm(run, inst, action, template)
                        state_file = template_paths(run, inst).state
                        loaded = await load_saved_state(
                            session, inst.name, state_file, shared_ram=template.ram_bytes > 0
                        )
                        await become_itself(session, inst, template, loaded)
                    except BaseException:  # a failure, or up cut short: never a copy left,
                        with trio.CancelScope(shield=True):  # nor a half-made clone to boot
                            await stop_one(session, inst.name, 0.0)
                            await remove_vm(session, inst.name)
                        raise
                    await wait_running(session, inst)
                else:
                    await start_vm(run, inst, action)
                    if state is not None:
                        await load_saved_state(session, inst.name, Path(state))
                    else:
                        if isinstance(resumed, Path):
                            await load_saved_state(session, inst.name, resumed)
                            discard_suspended(session.paths.vm(inst.name))  # it runs on
                        await wait_running(session, inst)
            if state is not None and action.kind is not ActionKind.KEEP:
                if run.loaded is not None:  # (not holding a token: all have to get here)
                    await run.loaded.arrive(inst.name)  # they resume together
                if run.options.paused:
                    me.started.set()
                    report(inst.name, Stage.READY, Status.DONE, "paused, as asked")
                    return
                await wait_running(session, inst)
            me.started.set()
            source = run.template_source(inst)
            awaited = run.options.wait or inst.name in run.awaited_health or source is not None
            if run.board is not None and awaited:
                await wait_healthy(session, run.board, inst, run.options.ready_timeout)
            if source is not None:
                await _save_template(run, inst, source)
            me.healthy.set()
            report(inst.name, Stage.READY, Status.DONE)
            if inst.name in run.awaited_completion:
                await wait_completed(session, inst, me)
    except QemuComposeError as err:  # a VmError, or one of ours (a dependency failed, ...)
        me.fail(str(err).splitlines()[0])
        report(inst.name, Stage.FAILED, Status.FAILED, str(err))
    except trio.TooSlowError:
        me.fail("not ready in time")
        limit = run.options.ready_timeout
        report(inst.name, Stage.FAILED, Status.FAILED, f"not ready within {limit:g} s")


async def _template_for(run: UpRun, inst: Instance) -> TemplateRecord | None:
    """The template a clone starts from, once there (None: not a clone, or it boots)."""
    start = run.clone_start(inst)
    if start is None:
        return None
    if not start.done.is_set():
        said = f"for the template of {start.source}"
        run.session.report(inst.name, Stage.CLONE, Status.WAITING, said)
        await start.done.wait()
    if start.template is None:
        why = f"no template ({start.why_not}): it boots"
        run.session.report(inst.name, Stage.CLONE, Status.SKIPPED, why)
    return start.template


def template_paths(run: UpRun, inst: Instance) -> TemplatePaths:
    return Templates(run.session.paths.state_dir).paths(inst.definition)


async def _save_template(run: UpRun, inst: Instance, start: WarmStart) -> None:
    """The ready source's state saved for its clones; a failure makes them boot (the
    source itself runs on, as a replica like any other)."""
    try:
        record = await make_template(run.session, inst, run.images)
    except (qmp.QmpError, OSError, QemuComposeError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        run.session.report(inst.name, Stage.TEMPLATE, Status.SKIPPED, f"not saved: {why}")
        start.give(None, f"{inst.name}'s state was not saved: {why}")
    else:
        start.give(record)


async def start_vm(
    run: UpRun, inst: Instance, action: Action, template: TemplateRecord | None = None
) -> None:
    """Carry out a VM's launch: its directory, disk, ports, TAPs and seed, then its unit
    (a clone's disk is a copy of its template's, and its QEMU waits for the state)."""
    session = run.session
    vm, name, report = inst.vm, inst.name, session.report
    project = session.project.name
    paths = session.paths.vm(name)
    if action.kind is ActionKind.RECREATE:
        report(name, Stage.UNIT, Status.WORKING, "recreating: stopping the old VM")
        await clear_faults(session, [name], why="recreated")
        await stop_one(session, name, grace_period(vm))
        shutil.rmtree(paths.directory, ignore_errors=True)
        forget_host(session.paths, project, name)
    elif action.kind is ActionKind.RESTART:  # on its disk: what changed needs a new QEMU
        if action.grow_disk and vm.disk.size is not None and paths.disk.exists():
            await check_growable(paths.disk, parse_size(vm.disk.size))  # before it stops
        report(name, Stage.UNIT, Status.WORKING, f"restarting: {action.cause}")
        await clear_faults(session, [name], why="restarted")
        await stop_one(session, name, grace_period(vm))
    private_dir(paths.directory)
    paths = make_socket_dir(session.paths, name)
    await _clear_unit(session, name)
    check_bind_sources(name, vm.volumes)
    if template is not None and template.has_disk and not paths.disk.exists():
        report(name, Stage.DISK, Status.WORKING, "a copy of the template's")
        source = Templates(session.paths.state_dir).paths(inst.definition).disk
        await copy_file(source, paths.disk)
        report(name, Stage.DISK, Status.DONE, str(paths.disk))
    elif vm.image is not None and not paths.disk.exists():
        report(name, Stage.DISK, Status.WORKING)
        size = parse_size(vm.disk.size) if vm.disk.size else None
        await create_overlay(run.images[vm.image.source], paths.disk, size)
        report(name, Stage.DISK, Status.DONE, str(paths.disk))
    elif action.grow_disk and vm.disk.size is not None and paths.disk.exists():
        report(name, Stage.DISK, Status.WORKING, f"growing to {vm.disk.size}")
        await grow_disk(paths.disk, parse_size(vm.disk.size))
        report(name, Stage.DISK, Status.DONE, f"{paths.disk} ({vm.disk.size})")
    saved = session.state.vms.get(name)
    claimed = run.ports.pop(name, None)
    if claimed is None:  # not claimed with the others (a lone start): claim them now
        previous = saved.ssh_port if saved else None
        wanted = [(name, vm, previous)]
        fixed = fixed_ports(session.project.model.vms.values())
        claimed = (await trio.to_thread.run_sync(claim_ports, project, wanted, fixed))[name]
    if isinstance(claimed, Exception):
        raise claimed
    forwards = claimed
    links = await session.links() if vm.networks else None
    taps = {
        n: await netcfg.attach_tap(run.networks[n], name, plumbing=links or HOST)
        for n in sorted(vm.networks)
    }
    accel = choose_accel(vm.accel, read_host_facts(), vm.cpu_model)
    new_disk = action.kind in (ActionKind.CREATE, ActionKind.RECREATE)
    user = saved.user if saved is not None and not new_disk else None  # its disk has that one
    if template is not None:
        user = template.user
    facts = _facts(run, inst, accel, forwards, taps, user)
    if taps and session.namespace is not None:  # rootless: QEMU gets its TAPs from the helper
        helper = taphelper.helper_path()
        facts = replace(facts, netns=session.namespace.token(), tap_helper=helper)
    if name in run.options.incoming or name in run.resumed or template is not None:
        facts = replace(facts, incoming=True)
    if template is not None and template.ram_bytes:  # its clones map the RAM it saved
        facts = replace(facts, ram=RamFile(str(template_paths(run, inst).ram)))
    elif run.template_source(inst) is not None and shares_ram(vm):  # it saves its RAM as such
        facts = replace(facts, ram=SharedRam())
    if vm.firmware == "uefi":
        ovmf = required_ovmf()
        variables = await trio.to_thread.run_sync(vm_variables, ovmf, paths.efi_variables)
        facts = replace(facts, uefi=Uefi(str(ovmf.code), str(variables)))
    launch = vm_launch(inst, facts)
    if launch.guest is not None:
        write_seed_iso(paths.seed, seed_files(launch.guest))
    report(name, Stage.UNIT, Status.WORKING, f"{accel.name}, {vm.cpu} CPU, {vm.memory} MiB")
    if saved is not None and action.record is None:
        shape, recorded_hash = saved.shape, saved.config_hash  # what is recorded stays
    else:
        shape = dict(action.record or {})
        recorded_hash = digest(shape)
    state = VmState(
        unit=launch.unit.name,
        config_hash=recorded_hash,
        shape=shape,
        created_at=saved.created_at
        if saved and action.kind in (ActionKind.START, ActionKind.RESTART)
        else time.time(),
        ssh_port=forwards[0].host_port,
        macs=launch.macs,
        ports=[f"{f.host_ip}:{f.host_port}->{f.guest_port}/{f.protocol}" for f in forwards[1:]],
        restart=vm.restart,
        user=launch.guest.user if launch.guest is not None else None,
    )
    write_record(paths, state)  # the VM's own copy, for when the state file is lost
    await session.manager.start(recorded(launch.unit, state))  # no settle: wait_running
    session.state.vms[name] = state  # sees a QEMU that dies
    session.store.save()  # with the supervised VMs: its policy, as this QEMU runs it
    report(name, Stage.UNIT, Status.DONE, launch.unit.name)


def _record_kept(session: Session, name: str, action: Action) -> None:
    """A running VM kept as it is records what changed without needing a restart."""
    saved = session.state.vms.get(name)
    if saved is None or action.record is None or saved.shape == dict(action.record):
        return
    saved.shape = dict(action.record)
    saved.config_hash = digest(saved.shape)
    write_record(session.paths.vm(name), saved)
    session.store.save()


async def _clear_unit(session: Session, name: str) -> None:
    """Make way for the VM's unit: a failed one (of an earlier run, or of an earlier version
    under its escaped name) is reset; one that another project made is never taken."""
    unit = vm_unit(session.project.name, name)
    old = session.units.vms.get(name)
    for candidate in dict.fromkeys([unit, *([old.name] if old else [])]):
        status = await session.manager.status(candidate)
        other = session.taken(status, "vm", name)
        if other is not None:
            raise UnitTakenError(
                f"{candidate} is taken by {other}: the names collide; rename the VM, or the "
                "project with -p"
            )
        if status.is_failed:
            await session.manager.reset_failed(candidate)


def _facts(
    run: UpRun,
    inst: Instance,
    accel: Accel,
    forwards: list[Forward],
    taps: dict[str, str],
    user: str | None,
) -> LaunchFacts:
    """What the launch of ``inst`` depends on besides its definition."""
    session, vm = run.session, inst.vm
    named = session.project.files
    extra = vm.cloud_init.user_data
    return LaunchFacts(
        project=session.project.name,
        paths=session.paths.vm(inst.name),
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
        hosts=[
            (address, other)
            for network in sorted(vm.networks)
            for other, address in sorted(session.state.addresses.get(network, {}).items())
        ],  # itself too: a warm clone's copy names every replica, the one it was saved from too
        dns={
            network: str(netcfg.gateway(ipaddress.IPv4Network(session.state.subnets[network])))
            for network in vm.networks
            if network in session.state.subnets
        },
        qemu=qemu_binary(),
        python=sys.executable,
        project_dir=project_dir(session.project),
        user=user,
    )
