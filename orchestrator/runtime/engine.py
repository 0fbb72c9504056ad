"""The runtime: `up`, `stop`, `destroy` and `ps` against systemd, QEMU and the guests.

One trio nursery runs every VM as a task. A VM waits for the conditions of what it depends
on (started: its unit is active and QMP says it runs; healthy: SSH with the project key, then
its healthcheck, pass; completed successfully: it powered off cleanly), prepares its disk and
seed, starts its transient unit, and reports each step as an event. A VM that fails does not
orphan the others: every VM ends its task, and `up` ends with a summary and an error.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
import yaml

import netcfg
import qmp
import systemd_dbus
from netcfg import Forward
from orchestrator.config.model import Vm
from orchestrator.config.project import Project
from orchestrator.config.quantities import parse_duration, parse_size
from orchestrator.errors import QemuComposeError, UsageError
from orchestrator.guest import probe
from orchestrator.guest.accel import choose_accel, read_host_facts
from orchestrator.guest.cloudinit import (
    GuestConfig,
    Nic,
    default_user,
    instance_id,
    seed_files,
    write_seed_iso,
)
from orchestrator.guest.disks import create_overlay, create_volume
from orchestrator.guest.images import fetch, is_remote, record_use
from orchestrator.guest.knownhosts import forget_host
from orchestrator.guest.mounts import check_bind_sources, mount_layout
from orchestrator.guest.qemu_argv import DirectBoot, Drive, TapNic, UserNic, VmLaunch, qemu_argv
from orchestrator.guest.secrets import (
    ConsolePassword,
    ProjectKey,
    ensure_console_password,
    ensure_project_key,
)
from orchestrator.state.files import ProjectLock, ProjectState, StateDir, VmState
from orchestrator.state.paths import (
    ProjectPaths,
    dnsmasq_unit,
    ensure_socket_dir,
    project_unit_prefix,
    supervisor_unit,
    vm_of_unit,
    vm_unit,
)
from orchestrator.supervisor.service import GIVE_UP_SIGNAL, Watched, write_supervised
from qmp.eventlog import EventLog

from .events import Event, Reporter
from .plan import (
    Action,
    ActionKind,
    Instance,
    Observed,
    config_hash,
    dependencies,
    instances,
    plan,
    select,
)

DEFAULT_READY_TIMEOUT = 900.0  # SSH under TCG takes a minute; several at once, more
# systemd answers in milliseconds, but a host whose CPUs are all busy starting a hundred TCG
# guests can keep it from answering for more than the default 10 s
CALL_TIMEOUT = 60.0


class UpError(QemuComposeError):
    """Some VMs did not come up; the message lists them and why."""


@dataclass
class Conditions:
    started: trio.Event = field(default_factory=trio.Event)
    healthy: trio.Event = field(default_factory=trio.Event)
    completed: trio.Event = field(default_factory=trio.Event)
    failure: str | None = None
    completed_ok: bool = False

    def fail(self, why: str) -> None:
        self.failure = why
        for event in (self.started, self.healthy, self.completed):
            event.set()


@dataclass
class Settings:
    services: Sequence[str] = ()
    wait: bool = True  # until ready (SSH, healthchecks), not only started
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    parallel: int | None = None
    no_recreate: bool = False
    force_recreate: bool = False
    remove_orphans: bool = False
    no_deps: bool = False  # only the VMs named, not what they depend on
    keep_config: bool = False  # restart: a VM keeps its recorded config hash (`up` applies)
    wait_lock: bool = False
    bus: str = "user"
    journal_dir: Path | None = None


@dataclass
class Context:
    project: Project
    paths: ProjectPaths
    manager: systemd_dbus.SystemdManager
    report: Reporter
    state: ProjectState
    state_dir: StateDir
    settings: Settings
    key: ProjectKey | None = None
    password: ConsolePassword | None = None
    images: dict[str, Path] = field(default_factory=dict)
    networks: dict[str, netcfg.BridgeNetwork] = field(default_factory=dict)
    conditions: dict[str, Conditions] = field(default_factory=dict)
    awaited_completion: set[str] = field(default_factory=set)  # VMs a dependant waits to end
    ports: dict[str, list[Forward] | netcfg.NetcfgError] = field(default_factory=dict)
    deferred: bool = False  # while VMs start: saves are gathered, written by `flush` in a thread
    dirty: bool = False

    def save(self) -> None:
        if self.deferred:
            self.dirty = True
        else:
            self.state_dir.write_state(self.state)
            _write_supervised(self, set(self.state.vms))

    async def flush(self) -> None:
        """Write the state and the supervised VMs if they changed, off the event loop (each
        write fsyncs: done inline for every VM of a large project, it stalled them all)."""
        if not self.dirty:
            return
        self.dirty = False
        state = StateDir.encode(self.state)
        supervised = _supervised_table(self, set(self.state.vms))
        await trio.to_thread.run_sync(self.state_dir.write_encoded, state)
        await trio.to_thread.run_sync(write_supervised, self.paths.supervised_vms, supervised)

    async def flush_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            await self.flush()


# -- observing ----------------------------------------------------------------------------------


async def unit_states(project: Project, manager: systemd_dbus.SystemdManager) -> dict[str, str]:
    """The ActiveState of each of the project's VM units that systemd has loaded."""
    return {
        vm: u.active_state
        for u in await manager.list_units(project_unit_prefix(project.name))
        if (vm := vm_of_unit(project.name, u.name)) is not None
    }


async def observe(
    project: Project, manager: systemd_dbus.SystemdManager, state: ProjectState
) -> dict[str, Observed]:
    units = await unit_states(project, manager)
    paths = ProjectPaths(project.state_dir, project.name)
    observed = {}
    for name in set(units) | set(state.vms):
        saved = state.vms.get(name)
        created = saved is not None or paths.vm(name).disk.exists()
        observed[name] = Observed(
            units.get(name, "not-found"), created, saved.config_hash if saved else None
        )
    return observed


# -- up -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpResult:
    actions: tuple[Action, ...]
    ready: tuple[str, ...]
    failed: dict[str, str]


async def up(
    project: Project, settings: Settings, report: Reporter, *, dry_run: bool = False
) -> UpResult:
    state_dir = StateDir(project.state_dir)
    if dry_run:
        async with qmp.asyncio_loop(), systemd_dbus.connect(settings.bus) as manager:
            state = (
                state_dir.read_state(project.name) if state_dir.path.exists() else ProjectState()
            )
            actions = _plan(project, settings, await observe(project, manager, state))
            return UpResult(tuple(actions), (), {})
    state_dir.ensure()
    lock = ProjectLock(state_dir.path)
    await lock.acquire(wait=settings.wait_lock)
    try:
        async with (
            qmp.asyncio_loop(),
            systemd_dbus.connect(
                settings.bus, journal_dir=settings.journal_dir, call_timeout=CALL_TIMEOUT
            ) as manager,
        ):
            paths = ProjectPaths(project.state_dir, project.name)
            ctx = Context(
                project=project,
                paths=paths,
                manager=manager,
                report=report.also(_event_log_writer(paths)),
                state=state_dir.read_state(project.name),
                state_dir=state_dir,
                settings=settings,
            )
            ctx.state.project = project.name
            actions = _plan(project, settings, await observe(project, manager, ctx.state))
            return await _execute(ctx, actions)
    finally:
        lock.release()


def _plan(project: Project, settings: Settings, observed: dict[str, Observed]) -> list[Action]:
    selected = (
        select(project.model, settings.services, with_dependencies=not settings.no_deps)
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


async def _execute(ctx: Context, actions: list[Action]) -> UpResult:
    project = ctx.project
    by_name = {i.name: i for i in instances(project.model)}
    todo = [a for a in actions if a.vm in by_name]
    for action in actions:
        if action.kind is ActionKind.REMOVE:
            await _remove_vm(ctx, action.vm)
        elif action.kind is ActionKind.ORPHAN:
            ctx.report(action.vm, "plan", "skipped", action.cause)
    chosen = [by_name[a.vm] for a in todo]
    ctx.key = ensure_project_key(ctx.paths.ssh_dir, project.name)
    ctx.password = ensure_console_password(ctx.paths.console_password)
    await _prepare_images(ctx, chosen)
    await _prepare_volumes(ctx, chosen)
    await _prepare_networks(ctx, chosen)
    await _ensure_supervisor(ctx, set(ctx.state.vms) | {i.name for i in chosen})
    ctx.conditions = {i.name: Conditions() for i in chosen}
    starting = [
        (a.vm, by_name[a.vm].vm, ctx.state.vms[a.vm].ssh_port if a.vm in ctx.state.vms else None)
        for a in todo
        if a.kind not in (ActionKind.KEEP, ActionKind.RECREATE)  # a recreated VM holds its
    ]  # ports until it is stopped: it claims them then
    if starting:  # a thread: the registry is locked and fsynced; ports are tried by binding
        ctx.ports = await trio.to_thread.run_sync(_claim_ports, project.name, starting)
    ctx.awaited_completion = {
        name
        for other in instances(project.model)
        for name, dep in dependencies(project.model, other).items()
        if dep.condition == "service_completed_successfully"
    }
    limiter = trio.CapacityLimiter(ctx.settings.parallel or math.inf)
    ctx.deferred = True
    try:
        async with trio.open_nursery() as saver:
            saver.start_soon(ctx.flush_every, 0.2)
            async with trio.open_nursery() as nursery:
                for action in todo:
                    nursery.start_soon(_run_vm, ctx, by_name[action.vm], action, limiter)
            saver.cancel_scope.cancel()
    finally:
        ctx.deferred = False
        ctx.dirty = False
        ctx.save()  # whatever happened (cancelled too): what was started is recorded
    failed = {n: c.failure for n, c in ctx.conditions.items() if c.failure}
    ready = tuple(n for n, c in ctx.conditions.items() if not c.failure)
    result = UpResult(tuple(actions), ready, {n: str(f) for n, f in failed.items()})
    if failed:
        lines = "".join(f"\n  {vm}: {why}" for vm, why in failed.items())
        raise UpError(f"{len(failed)} of {len(todo)} VMs did not come up:{lines}")
    return result


def _event_log_writer(paths: ProjectPaths) -> Callable[[Event], None]:
    """What `up`, `stop` and `destroy` do to each VM goes to the event log too (for `watch`)."""
    log = EventLog(paths.events_dir)

    def write(event: Event) -> None:
        if event.vm:
            with contextlib.suppress(OSError):  # the log is for watchers: never fail a VM on it
                data = {"status": event.status, "detail": event.detail}
                log.append(event.vm, event.stage.upper(), data, source="up")

    return write


def _bus_address(settings: Settings) -> str:
    if settings.bus == "system":
        return "system"
    return systemd_dbus.bus_address(settings.bus)[0]


async def _ensure_supervisor(ctx: Context, names: set[str]) -> None:
    """Tell the project's supervisor which VMs to watch; start it if it does not run."""
    _write_supervised(ctx, names)
    unit = supervisor_unit(ctx.project.name)
    await _start_supervisor(ctx, unit)


def _write_supervised(ctx: Context, names: set[str]) -> None:
    write_supervised(ctx.paths.supervised_vms, _supervised_table(ctx, names))


def _supervised_table(ctx: Context, names: set[str]) -> dict[str, Watched]:
    """The VMs to watch, each with the policy its QEMU runs with (the state's, which is the
    file's of its last start: a VM not restarted since the file changed keeps the old one)."""
    by_name = {i.name: i for i in instances(ctx.project.model)}

    def policy(name: str) -> str:
        saved = ctx.state.vms.get(name)
        if saved is not None:
            return saved.restart
        return by_name[name].vm.restart if name in by_name else "no"

    return {
        name: Watched(
            qmp=str(ctx.paths.vm(name).qmp_socket),
            unit=vm_unit(ctx.project.name, name),
            restart=policy(name),
        )
        for name in names
    }


async def _start_supervisor(ctx: Context, unit: str) -> None:
    status = await ctx.manager.status(unit)
    if status.active_state in ("active", "activating", "reloading"):
        return
    if status.active_state == "failed":
        await ctx.manager.reset_failed(unit)
    argv = [sys.executable, "-m", "orchestrator.supervisor"]
    argv += ["--state-dir", str(ctx.project.state_dir), "--bus", _bus_address(ctx.settings)]
    await ctx.manager.start(
        systemd_dbus.TransientUnit(
            unit,
            argv,
            description=f"qemu-compose supervisor of {ctx.project.name}",
            working_directory=str(ctx.project.state_dir),
            restart="on-failure",
            restart_sec=1.0,
        ),
    )
    ctx.report("", "supervisor", "done", unit)


async def _stop_supervisor(ctx: Context) -> None:
    unit = supervisor_unit(ctx.project.name)
    status = await ctx.manager.status(unit)
    if status.load_state == "not-found":
        return
    await ctx.manager.stop(unit, timeout=30)
    if (await ctx.manager.status(unit)).active_state == "failed":
        await ctx.manager.reset_failed(unit)


async def _prepare_images(ctx: Context, chosen: Sequence[Instance]) -> None:
    sources = {i.vm.image.source: i.vm.image.checksum for i in chosen if i.vm.image is not None}

    async def one(source: str, checksum: str | None) -> None:
        ctx.report("", "image", "working", source)
        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            if time.monotonic() - last[0] > 1 and total:
                last[0] = time.monotonic()
                ctx.report("", "image", "working", f"{source} {100 * done // total}%")

        ctx.images[source] = await fetch(source, checksum=checksum, progress=progress)
        if is_remote(source):  # for `image ls` (last used) and `image prune` (who uses it)
            record_use(ctx.images[source], source, state_dir=ctx.project.state_dir)
        ctx.report("", "image", "done", str(ctx.images[source]))

    async with trio.open_nursery() as nursery:
        for source, checksum in sources.items():
            nursery.start_soon(one, source, checksum)


async def _prepare_volumes(ctx: Context, chosen: Sequence[Instance]) -> None:
    names = {m.source for i in chosen for m in i.vm.volumes if m.type == "volume"}
    for name in sorted(names):
        path = ctx.paths.volume(name)
        if not path.exists():
            ctx.report("", "volume", "working", name)
            await create_volume(path, parse_size(ctx.project.model.volumes[name].size), name)
            ctx.report("", "volume", "done", f"{name} ({ctx.project.model.volumes[name].size})")


async def _prepare_networks(ctx: Context, chosen: Sequence[Instance]) -> None:
    model = ctx.project.model
    used = sorted({n for i in chosen for n in i.vm.networks})
    if not used:
        return
    netcfg.require_net_admin()
    project = ctx.project.name
    own_bridges = [netcfg.bridge_name(project, n) for n in model.networks]
    host = await netcfg.host_subnets(exclude=own_bridges)
    with netcfg.Registry().claims() as claims:
        avoid = host + [ipaddress.IPv4Network(s) for s in claims.subnets_of_others(project)]
        previous = {n: ipaddress.IPv4Network(s) for n, s in ctx.state.subnets.items()}
        subnets = netcfg.allocate_subnets(
            [netcfg.SubnetRequest(n, model.networks[n].subnet) for n in used],
            previous=previous,
            avoid=avoid,
        )
        for name, subnet in subnets.items():
            claims.subnets[f"{project}/{name}"] = str(subnet)
            ctx.state.subnets[name] = str(subnet)
    everyone = instances(model)  # addresses for all VMs of a network, not only these
    macs = netcfg.assign_macs(project, [(i.name, n) for i in everyone for n in i.vm.networks])
    for name in used:
        members = [i for i in everyone if name in i.vm.networks]
        previous_ips = {
            vm: ipaddress.IPv4Address(a) for vm, a in ctx.state.addresses.get(name, {}).items()
        }
        addresses = netcfg.assign_addresses(
            subnets[name],
            [(i.name, i.vm.networks[name].ipv4_address) for i in members],
            previous=previous_ips,
        )
        ctx.state.addresses[name] = {vm: str(a) for vm, a in addresses.items()}
        hosts = [
            netcfg.Host(
                i.name, i.vm.networks[name].mac_address or macs[(i.name, name)], addresses[i.name]
            )
            for i in members
        ]
        spec = model.networks[name]
        network = netcfg.BridgeNetwork(
            project=project,
            name=name,
            subnet=subnets[name],
            directory=ctx.paths.network_dir(name),
            nat=spec.nat,
            upstream=tuple(spec.upstream_dns),
        )
        ctx.networks[name] = network
        ctx.report("", "network", "working", f"{name} {subnets[name]}")
        await netcfg.ensure_network(network, hosts, _dnsmasq_starter(ctx, name))
        ctx.report("", "network", "done", f"{name} {subnets[name]} on {network.bridge}")
    ctx.save()


def _dnsmasq_starter(ctx: Context, network: str) -> netcfg.network.StartDnsmasq:
    unit = dnsmasq_unit(ctx.project.name, network)

    async def start(argv: list[str], changed: bool) -> None:
        status = await ctx.manager.status(unit)
        if status.is_active and not changed:
            return
        if status.load_state != "not-found":
            await ctx.manager.stop(unit)
            if status.active_state == "failed":
                await ctx.manager.reset_failed(unit)
        binary = shutil.which(argv[0]) or f"/usr/sbin/{argv[0]}"
        await ctx.manager.start(
            systemd_dbus.TransientUnit(
                unit,
                [binary, *argv[1:]],
                description=f"qemu-compose DHCP and DNS of {ctx.project.name}/{network}",
            ),
            settle=0.5,
        )

    return start


# -- one VM ---------------------------------------------------------------------------------------


def _mac(ctx: Context, inst: Instance, network: str) -> str:
    fixed = inst.vm.networks[network].mac_address if network else None
    return fixed or netcfg.mac_address(ctx.project.name, inst.name, network or "user")


async def _run_vm(
    ctx: Context, inst: Instance, action: Action, limiter: trio.CapacityLimiter
) -> None:
    me = ctx.conditions[inst.name]
    report = ctx.report
    try:
        await _wait_for_dependencies(ctx, inst)
        async with limiter:
            if action.kind is ActionKind.KEEP:  # its unit is active: QEMU runs, as before
                report(inst.name, "unit", "done", "already running")
            else:
                await _start_vm(ctx, inst, action)
                await _wait_running(ctx, inst)
        me.started.set()
        await _wait_ready(ctx, inst)
        me.healthy.set()
        report(inst.name, "ready", "done")
        if inst.name in ctx.awaited_completion:
            await _wait_completed(ctx, inst)
    except (
        QemuComposeError,
        systemd_dbus.SystemdError,
        qmp.QmpError,
        netcfg.NetcfgError,
        OSError,
    ) as err:
        me.fail(str(err).splitlines()[0])
        report(inst.name, "failed", "failed", str(err))
    except trio.TooSlowError:
        me.fail("not ready in time")
        report(inst.name, "failed", "failed", f"not ready within {ctx.settings.ready_timeout:g} s")


async def _wait_for_dependencies(ctx: Context, inst: Instance) -> None:
    for name, dependency in dependencies(ctx.project.model, inst).items():
        theirs = ctx.conditions.get(name)
        if theirs is None:  # not part of this run: it runs already (or was selected out)
            continue
        event = {
            "service_started": theirs.started,
            "service_healthy": theirs.healthy,
            "service_completed_successfully": theirs.completed,
        }[dependency.condition]
        if not event.is_set():
            ctx.report(inst.name, "depends", "waiting", f"{name} ({dependency.condition})")
            await event.wait()
        broken = theirs.failure or (
            dependency.condition == "service_completed_successfully" and not theirs.completed_ok
        )
        if broken and dependency.required:
            raise QemuComposeError(
                f"{name} failed: {theirs.failure or 'did not complete successfully'}"
            )


async def _start_vm(ctx: Context, inst: Instance, action: Action) -> None:
    vm, name, report = inst.vm, inst.name, ctx.report
    paths = ctx.paths.vm(name)
    unit = vm_unit(ctx.project.name, name)
    if action.kind is ActionKind.RECREATE:
        report(name, "unit", "working", "recreating: stopping the old VM")
        await _stop_one(ctx, name, _grace(vm))
        shutil.rmtree(paths.directory, ignore_errors=True)
        forget_host(ctx.paths, ctx.project.name, name)
    paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_socket_dir(paths.sockets)
    status = await ctx.manager.status(unit)
    if status.active_state == "failed":
        await ctx.manager.reset_failed(unit)
    check_bind_sources(name, vm.volumes)
    layout = mount_layout(
        vm.volumes, {m.source: ctx.paths.volume(m.source) for m in vm.volumes if m.type == "volume"}
    )
    root: Drive | None = None
    if vm.image is not None:
        if not paths.disk.exists():
            report(name, "disk", "working")
            size = parse_size(vm.disk.size) if vm.disk.size else None
            await create_overlay(ctx.images[vm.image.source], paths.disk, size)
            report(name, "disk", "done", str(paths.disk))
        root = Drive("root", str(paths.disk), "qcow2", "root", bootindex=0)
    saved = ctx.state.vms.get(name)
    claimed = ctx.ports.pop(name, None)
    if claimed is None:  # not claimed with the others (a lone start): claim them now
        previous = saved.ssh_port if saved else None
        claimed = (
            await trio.to_thread.run_sync(_claim_ports, ctx.project.name, [(name, vm, previous)])
        )[name]
    if isinstance(claimed, Exception):
        raise claimed
    forwards = claimed
    ssh_port = forwards[0].host_port
    nics: list[UserNic | TapNic] = [UserNic("nic0", _mac(ctx, inst, ""), tuple(forwards))]
    guest_nics = [Nic(nics[0].mac, "user")]
    for i, network in enumerate(sorted(vm.networks), start=1):
        tap = await netcfg.attach_tap(ctx.networks[network], name)
        nics.append(TapNic(f"nic{i}", _mac(ctx, inst, network), tap))
        guest_nics.append(Nic(nics[-1].mac, "bridge"))
    seed: Drive | None = None
    if vm.image is not None or vm.boot is not None:
        assert ctx.key is not None
        assert ctx.password is not None
        user = vm.user or default_user(vm.image.source if vm.image else None)
        provision = [
            step.inline if step.inline is not None else Path(step.script or "").read_text()
            for step in vm.provision
        ]
        extra = vm.cloud_init.user_data
        if isinstance(extra, str):
            extra = yaml.safe_load(Path(extra).read_text())
        config = GuestConfig(
            hostname=vm.hostname or name,
            domain=ctx.project.name,
            user=user,
            ssh_public_key=ctx.key.public_line,
            password_hash=ctx.password.crypt_hash,
            instance_id=instance_id(ctx.project.name, name),
            mounts=layout.mounts,
            environment=vm.environment,
            provision=provision,
            nics=guest_nics,
            extra_user_data=extra if isinstance(extra, dict) else None,
        )
        write_seed_iso(paths.seed, seed_files(config))
        seed = Drive("seed", str(paths.seed), "raw", "cidata", read_only=True)
    accel = choose_accel(vm.accel, read_host_facts(), vm.cpu_model)
    boot = DirectBoot(vm.boot.kernel, vm.boot.initrd, vm.boot.cmdline) if vm.boot else None
    launch = VmLaunch(
        name=name,
        accel=accel,
        cpus=vm.cpu,
        memory_mib=vm.memory,
        machine=vm.machine,
        console_socket=str(paths.console_socket),
        console_log=str(paths.console_log),
        qmp_supervision=str(paths.qmp_socket),
        qmp_control=str(paths.qmp_control_socket),
        pidfile=str(paths.pidfile),
        drives=tuple(d for d in (root, seed) if d is not None) + layout.drives,
        shares=layout.shares,
        nics=tuple(nics),
        boot=boot,
        qemu=shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64",
        restart_in_place=vm.restart != "no",  # the supervisor restarts the guest
    )
    grace = _grace(vm)
    restart = "no" if vm.restart == "no" else "on-failure"  # systemd's: when QEMU crashes
    extra_props = []
    if restart != "no":  # the supervisor's giving up is final
        extra_props.append(
            systemd_dbus.ExtraProperty("RestartPreventExitStatus", "(aiai)", ([], [GIVE_UP_SIGNAL]))
        )
    if vm.restart.startswith("on-failure:"):
        extra_props.append(
            systemd_dbus.ExtraProperty("StartLimitBurst", "u", int(vm.restart.split(":")[1]))
        )
    report(name, "unit", "working", f"{accel.name}, {vm.cpu} CPU, {vm.memory} MiB")
    await ctx.manager.start(
        systemd_dbus.TransientUnit(
            unit,
            qemu_argv(launch),
            description=f"qemu-compose VM {ctx.project.name}/{name}",
            working_directory=str(paths.directory),
            exec_stop=[
                sys.executable,
                "-m",
                "qmp.stopvm",
                str(paths.qmp_control_socket),
                "--grace",
                f"{grace:g}",
            ],
            kill_mode="mixed",
            timeout_stop=grace + 15,
            collect_mode="inactive",  # a failed VM stays listed, failed, until reset
            restart=restart,  # type: ignore[arg-type]
            restart_sec=2.0 if restart != "no" else None,
            extra=extra_props,
        ),
    )  # no settle: _wait_running sees a QEMU that dies at once, with its journal
    recorded = saved.config_hash if saved and ctx.settings.keep_config else None
    ctx.state.vms[name] = VmState(
        unit=unit,
        config_hash=recorded or config_hash(ctx.project.model, inst),
        created_at=saved.created_at if saved and action.kind is ActionKind.START else time.time(),
        ssh_port=ssh_port,
        macs={n.netdev: n.mac for n in nics},
        ports=[f"{f.host_ip}:{f.host_port}->{f.guest_port}/{f.protocol}" for f in forwards[1:]],
        restart=vm.restart,
    )
    ctx.save()  # with the supervised VMs: its policy, as this QEMU runs it
    report(name, "unit", "done", unit)


PortClaim = tuple[str, Vm, int | None]  # VM, its definition, the SSH port it had last time


def _claim_ports(
    project: str, wanted: Sequence[PortClaim]
) -> dict[str, list[Forward] | netcfg.NetcfgError]:
    """Host ports of the VMs (SSH first, then published ports), claimed in the registry in
    one transaction (it is locked and fsynced: once per VM, it made a queue at 100 VMs).

    A VM whose port cannot be had gets its error, not the others'.
    """
    chosen: dict[str, list[Forward] | netcfg.NetcfgError] = {}
    with netcfg.Registry().claims() as claims:
        for name, vm, previous_ssh in wanted:
            try:
                chosen[name] = _choose_ports(claims, project, name, vm, previous_ssh)
            except netcfg.NetcfgError as err:
                chosen[name] = err
    return chosen


def _choose_ports(
    claims: netcfg.Claims, project: str, name: str, vm: Vm, previous_ssh: int | None
) -> list[Forward]:
    taken = claims.ports_of_others(project, name)
    try:
        ssh_port = netcfg.choose_port(name, vm.ssh.port or previous_ssh, taken=taken)
    except netcfg.PortInUseError:
        if vm.ssh.port:
            raise
        ssh_port = netcfg.choose_port(name, None, taken=taken)  # last run's port is taken now
    forwards = [Forward(ssh_port, 22)]
    for port in vm.ports:
        mine = {f.host_port for f in forwards}
        if port.published:  # honoured, or a clear error naming the VM and the port
            published = netcfg.choose_port(
                name, port.published, taken=taken, protocol=port.protocol
            )
        else:
            published = netcfg.choose_port(
                name, None, taken=taken | mine, start=32768, protocol=port.protocol
            )
        forwards.append(Forward(published, port.target, port.host_ip, port.protocol))
    claims.ports[f"{project}/{name}"] = [f.host_port for f in forwards]
    return forwards


async def _wait_running(ctx: Context, inst: Instance) -> None:
    """Until QMP says the VM runs; a QEMU that dies first fails with its unit's journal.

    One connection, however long QEMU takes to greet (seconds, on a host busy with many TCG
    guests: retrying would only queue more connections), raced against the unit's end.
    """
    socket = str(ctx.paths.vm(inst.name).qmp_control_socket)
    unit = vm_unit(ctx.project.name, inst.name)
    ended: list[systemd_dbus.UnitStatus] = []

    async def watch_unit(scope: trio.CancelScope) -> None:
        async with ctx.manager.watch([unit]) as changes:
            async for status in changes:
                if status.has_stopped:
                    ended.append(status)
                    scope.cancel()
                    return

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_unit, nursery.cancel_scope)
            try:
                async with qmp.open_session(socket, timeout=60) as session:
                    if not (await session.query_status()).running:
                        await session.execute("cont")
                nursery.cancel_scope.cancel()
            except (qmp.QmpConnectError, qmp.VmGoneError):
                await trio.sleep(5)  # the unit's end, if that is why, comes and cancels this
                raise
    if ended:
        status = ended[0]
        journal = await systemd_dbus.last_lines(
            unit,
            user=ctx.settings.bus != "system",
            directory=ctx.settings.journal_dir,
            pid=status.exec_main_pid,
        )
        lines = "".join(f"\n    {line}" for line in journal[-10:])
        raise UpError(f"QEMU ended at once ({status.describe_exit()}){lines}")
    ctx.report(inst.name, "running", "done", "QEMU runs")


def ssh_target(project: Project, inst: Instance, state: ProjectState) -> probe.SshTarget | None:
    saved = state.vms.get(inst.name)
    if saved is None or saved.ssh_port is None:
        return None
    user = (
        inst.vm.ssh.user
        or inst.vm.user
        or default_user(inst.vm.image.source if inst.vm.image else None)
    )
    paths = ProjectPaths(project.state_dir, project.name)
    return probe.SshTarget("127.0.0.1", saved.ssh_port, user, paths.ssh_dir / "id_ed25519")


def _grace(vm: Vm | None, override: float | None = None) -> float:
    """Seconds a VM gets to power off; none for firmware-only VMs (nothing there to hear it)."""
    if vm is not None and vm.image is None and vm.boot is None:
        return 0.0
    if override is not None:
        return override
    return parse_duration(vm.stop_grace_period) if vm is not None else 60.0


def _probes_ssh(vm: Vm) -> bool:
    """A VM with an operating system and no healthcheck: {disable: true} is probed by SSH."""
    disabled = vm.healthcheck is not None and (
        vm.healthcheck.disable or vm.healthcheck.test[:1] == ["NONE"]
    )
    return (vm.image is not None or vm.boot is not None) and not disabled


async def _wait_ready(ctx: Context, inst: Instance) -> None:
    vm = inst.vm
    if not ctx.settings.wait or not _probes_ssh(vm):
        return
    target = ssh_target(ctx.project, inst, ctx.state)
    assert target is not None
    ctx.report(inst.name, "ssh", "working", f"{target.user}@127.0.0.1:{target.port}")
    with trio.fail_after(ctx.settings.ready_timeout):
        await probe.wait_ready(target)
    ctx.report(inst.name, "ssh", "done")
    check = vm.healthcheck
    if check is None or not check.test:
        return
    command = probe.healthcheck_command(check.test)
    start_period = parse_duration(check.start_period)
    began = trio.current_time()
    failures = 0
    ctx.report(inst.name, "health", "working", command)
    with trio.fail_after(ctx.settings.ready_timeout):
        while True:
            try:
                result = await probe.run(target, command, timeout=parse_duration(check.timeout))
                ok = result.exit_status == 0
            except Exception:
                ok = False
            if ok:
                ctx.report(inst.name, "health", "done", "healthy")
                return
            in_start = trio.current_time() - began < start_period
            if not in_start:
                failures += 1
                if failures >= check.retries:
                    raise QemuComposeError(f"unhealthy: {command!r} failed {failures} times")
            await trio.sleep(parse_duration(check.start_interval if in_start else check.interval))


async def _wait_completed(ctx: Context, inst: Instance) -> None:
    me = ctx.conditions[inst.name]
    unit = vm_unit(ctx.project.name, inst.name)
    ctx.report(inst.name, "complete", "waiting", "until it powers off")
    async with ctx.manager.watch([unit]) as changes:
        async for status in changes:
            if status.has_stopped:
                me.completed_ok = status.result in ("success", "")
                break
    me.completed.set()
    ctx.report(inst.name, "complete", "done" if me.completed_ok else "failed", status.result)


# -- stop, destroy, ps ----------------------------------------------------------------------------


async def _stop_one(ctx: Context, name: str, grace: float) -> None:
    unit = vm_unit(ctx.project.name, name)
    status = await ctx.manager.status(unit)
    if not status.is_active and status.active_state != "activating":
        if status.active_state == "failed":
            await ctx.manager.reset_failed(unit)
        return
    ctx.report(name, "stop", "working", f"power button, {grace:g} s grace" if grace else "quit")
    outcome = "stopped"
    socket = ctx.paths.vm(name).qmp_control_socket
    try:
        async with qmp.open_session(str(socket), timeout=5) as session:
            outcome = (await session.powerdown(grace=grace)).value
    except qmp.QmpError as err:
        outcome = f"no QMP ({err})"
    await ctx.manager.stop(unit, timeout=grace + 60)
    status = await ctx.manager.status(unit)
    if status.active_state == "failed":
        await ctx.manager.reset_failed(unit)
    ctx.report(name, "stop", "done", outcome)


async def _remove_vm(ctx: Context, name: str) -> None:
    inst = {i.name: i for i in instances(ctx.project.model)}.get(name)
    await _stop_one(ctx, name, _grace(inst.vm if inst else None))
    for network in ctx.state.addresses.values():
        network.pop(name, None)
    shutil.rmtree(ctx.paths.vm(name).directory, ignore_errors=True)
    forget_host(ctx.paths, ctx.project.name, name)
    ctx.state.vms.pop(name, None)
    with netcfg.Registry().claims() as claims:
        claims.ports.pop(f"{ctx.project.name}/{name}", None)
    ctx.save()
    ctx.report(name, "destroy", "done", "instance directory removed")


@asynccontextmanager
async def _session(
    project: Project, settings: Settings, report: Reporter, *, lock: bool = True
) -> AsyncIterator[Context]:
    """The project locked (unless only reading), its state read, systemd connected."""
    state_dir = StateDir(project.state_dir)
    held: ProjectLock | None = None
    if lock:
        state_dir.ensure()
        held = ProjectLock(state_dir.path)
        await held.acquire(wait=settings.wait_lock)
    try:
        state = state_dir.read_state(project.name) if state_dir.path.exists() else ProjectState()
        paths = ProjectPaths(project.state_dir, project.name)
        async with (
            qmp.asyncio_loop(),
            systemd_dbus.connect(
                settings.bus, journal_dir=settings.journal_dir, call_timeout=CALL_TIMEOUT
            ) as manager,
        ):
            yield Context(
                project=project,
                paths=paths,
                manager=manager,
                report=report.also(_event_log_writer(paths)) if lock else report,
                state=state,
                state_dir=state_dir,
                settings=settings,
            )
    finally:
        if held is not None:
            held.release()


def _names(project: Project, state: ProjectState, services: Sequence[str]) -> list[str]:
    """The instances a command acts on: the named ones, else all (the file's and orphans)."""
    everything = [i.name for i in instances(project.model)]
    everything += [n for n in state.vms if n not in everything]
    if not services:
        return everything
    return [
        i.name
        for i in select(project.model, services)
        if i.name in services or i.definition in services
    ]


async def stop(
    project: Project, settings: Settings, report: Reporter, *, timeout: float | None = None
) -> list[str]:
    """Power the VMs down gracefully (grace: --timeout, else each VM's stop_grace_period)."""
    async with _session(project, settings, report) as ctx:
        names = _names(project, ctx.state, settings.services)
        by_name = {i.name: i for i in instances(project.model)}

        async def one(name: str) -> None:
            inst = by_name.get(name)
            await _stop_one(ctx, name, _grace(inst.vm if inst else None, timeout))

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        if not settings.services or not await unit_states(project, ctx.manager):
            await _stop_supervisor(ctx)  # nothing left to watch
        return names


async def destroy(
    project: Project, settings: Settings, report: Reporter, *, volumes: bool = False
) -> list[str]:
    """Stop and remove VMs; then the networks nobody uses; named volumes only if asked."""
    async with _session(project, settings, report) as ctx:
        names = [
            n
            for n in _names(project, ctx.state, settings.services)
            if n in ctx.state.vms or ctx.paths.vm(n).directory.exists()
        ]
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(_remove_vm, ctx, name)
        await _remove_unused_networks(ctx)
        if not ctx.state.vms:  # (each removal saved the supervised VMs without it)
            await _stop_supervisor(ctx)
        if volumes and not settings.services:
            for name in project.model.volumes:
                path = ctx.paths.volume(name).parent
                if path.exists():
                    shutil.rmtree(path)
                    report("", "volume", "done", f"{name} removed")
        if not ctx.state.vms:
            with netcfg.Registry().claims() as claims:
                claims.forget_project(project.name)
        ctx.save()
        return names


def _networks_in_use(state: ProjectState) -> dict[str, list[str]]:
    """Each network's created VMs (those with an address on it)."""
    return {
        n: sorted(vm for vm in members if vm in state.vms)
        for n, members in state.addresses.items()
        if any(vm in state.vms for vm in members)
    }


async def _remove_unused_networks(ctx: Context) -> None:
    in_use = _networks_in_use(ctx.state)
    await _remove_networks(ctx, [n for n in ctx.state.subnets if n not in in_use])


async def _remove_networks(ctx: Context, names: Sequence[str]) -> None:
    model = ctx.project.model
    for name in names:
        network = netcfg.BridgeNetwork(
            ctx.project.name,
            name,
            ipaddress.IPv4Network(ctx.state.subnets[name]),
            ctx.paths.network_dir(name),
        )
        unit = dnsmasq_unit(ctx.project.name, name)

        async def stop_dnsmasq(unit: str = unit) -> None:
            await ctx.manager.stop(unit)

        if netcfg.has_net_admin():
            await netcfg.remove_network(network, stop_dnsmasq)
        else:
            await stop_dnsmasq()
        ctx.state.subnets.pop(name, None)
        ctx.state.addresses.pop(name, None)
        with netcfg.Registry().claims() as claims:
            claims.subnets.pop(f"{ctx.project.name}/{name}", None)
        ctx.report(
            "",
            "network",
            "done",
            f"{name} removed" + ("" if name in model.networks else " (orphan)"),
        )


@dataclass(frozen=True, slots=True)
class VmRow:
    name: str
    status: str  # not-created, stopped, starting, ready, active, failed, unknown
    unit: str
    cpu: int | None
    memory: int | None
    disk: str | None
    addresses: dict[str, str]
    ssh_port: int | None


async def ps(project: Project, settings: Settings, *, all_vms: bool = True) -> list[VmRow]:
    """The status of every VM; SSH probed in parallel (2 s each) for running ones."""
    async with _session(project, settings, Reporter(), lock=False) as ctx:
        by_name = {i.name: i for i in instances(project.model)}
        names = _names(project, ctx.state, settings.services)
        units = await unit_states(project, ctx.manager)
        rows: dict[str, VmRow] = {}

        async def one(name: str) -> None:
            inst = by_name.get(name)
            saved = ctx.state.vms.get(name)
            unit_state = units.get(name, "not-found")
            created = saved is not None or ctx.paths.vm(name).disk.exists()
            if unit_state in ("active", "activating"):
                status = "active"
                if inst is not None and _probes_ssh(inst.vm):
                    target = ssh_target(project, inst, ctx.state)
                    ok = target is not None and await probe.reachable(target, timeout=2)
                    status = "ready" if ok else "starting"
            elif unit_state == "failed":
                status = "failed"
            elif created:
                status = "stopped"
            else:
                status = "not-created"
            vm = inst.vm if inst else None
            size = None
            if vm is not None and vm.image is not None:
                size = vm.disk.size or "image"
            rows[name] = VmRow(
                name=name,
                status=status,
                unit=vm_unit(project.name, name),
                cpu=vm.cpu if vm else None,
                memory=vm.memory if vm else None,
                disk=size if created else None,
                addresses={n: a[name] for n, a in ctx.state.addresses.items() if name in a},
                ssh_port=saved.ssh_port if saved else None,
            )

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        ordered = [rows[n] for n in names]
        return (
            ordered
            if all_vms
            else [r for r in ordered if r.status not in ("not-created", "stopped")]
        )


@dataclass(frozen=True, slots=True)
class NetworkRow:
    name: str
    driver: str
    subnet: str | None  # None: not created yet
    bridge: str
    bridge_exists: bool | None  # None: not known (cannot read the host's links)
    dhcp: str  # the state of its dnsmasq unit
    vms: list[str]  # created VMs attached to it
    in_file: bool  # False: an orphan, left by an earlier version of the file


async def networks(project: Project, settings: Settings) -> list[NetworkRow]:
    """The project's networks: those of the file and those still created."""
    async with _session(project, settings, Reporter(), lock=False) as ctx:
        in_use = _networks_in_use(ctx.state)
        rows = []
        for name in sorted(set(project.model.networks) | set(ctx.state.subnets)):
            bridge = netcfg.bridge_name(project.name, name)
            exists: bool | None
            try:
                exists = await netcfg.link_present(bridge)
            except Exception:  # no netlink here (a sandbox, say): say we do not know
                exists = None
            dhcp = await ctx.manager.status(dnsmasq_unit(project.name, name))
            spec = project.model.networks.get(name)
            rows.append(
                NetworkRow(
                    name=name,
                    driver=spec.driver if spec else "bridge",
                    subnet=ctx.state.subnets.get(name),
                    bridge=bridge,
                    bridge_exists=exists,
                    dhcp=dhcp.active_state if dhcp.load_state != "not-found" else "none",
                    vms=in_use.get(name, []),
                    in_file=spec is not None,
                )
            )
        return rows


async def remove_networks(
    project: Project, settings: Settings, report: Reporter, names: Sequence[str]
) -> list[str]:
    """Remove networks no created VM uses: bridge, dnsmasq unit, subnet claim."""
    async with _session(project, settings, report) as ctx:
        in_use = _networks_in_use(ctx.state)
        known = set(project.model.networks) | set(ctx.state.subnets)
        for name in names:
            if name not in known:
                raise UsageError(f"no network named {name!r} in {project.name}")
            if name in in_use:
                users = ", ".join(in_use[name])
                raise UsageError(
                    f"network {name!r} is in use by {users}: `qemu-compose destroy {users}` first"
                )
        created = [n for n in names if n in ctx.state.subnets]
        for name in names:
            if name not in created:
                report("", "network", "skipped", f"{name} is not created")
        await _remove_networks(ctx, created)
        ctx.save()
        return created
