"""Read-only questions: `ps`, `network ls`, and how to reach a VM over SSH."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence

import msgspec

import netcfg
import systemd_dbus
from netcfg.plumbing import HOST, Links, OneShotAgent
from orchestrator.config.project import Project
from orchestrator.config.topology import instances, select_one
from orchestrator.errors import UsageError
from orchestrator.guest.knownhosts import host_alias, known_hosts
from orchestrator.progress import Reporter
from orchestrator.state.faults import NetFault, faults_file, in_force, qemu_pid, read_faults
from orchestrator.state.files import ProjectState, check_owner, check_private_dir
from orchestrator.state.paths import ProjectPaths
from orchestrator.supervisor.health import has_health, read_health
from orchestrator.supervisor.runs import read_run

from .access import ssh_target
from .netmode import running_namespace
from .options import Connection
from .session import Session, open_session, with_scale


class VmRow(msgspec.Struct, frozen=True):
    name: str
    state: str  # not-created, starting, running, paused, restarting, stopping, exited, failed,
    # suspended
    status: str  # as docker shows it: "running (healthy) 12m", "exited (0) 2m ago", ...
    health: str | None  # starting, healthy, unhealthy; None: none kept (no OS, not running)
    started_at: float | None  # when its QEMU started (seconds since the epoch), if it runs
    ports: list[str]  # published: "127.0.0.1:8080->80/tcp"
    restarts: int  # of its guest in place (restart policy) and of QEMU by systemd
    unit: str
    cpu: int | None
    memory: int | None
    disk: str | None
    addresses: dict[str, str]
    ssh_port: int | None
    faults: list[str] = []  # in force (`fault ...`): "link lan down", "partition a | b", ...


async def ps(
    project: Project, vms: Sequence[str], connection: Connection, *, all_vms: bool = True
) -> list[VmRow]:
    """The status of every VM, from systemd and what the supervisor keeps (no SSH)."""
    async with open_session(project, connection, Reporter(), lock=False) as session:
        rows = await vm_rows(session, session.names(vms))
        return rows if all_vms else [r for r in rows if r.state not in ("not-created", "exited")]


_STATES = {
    systemd_dbus.ActiveState.ACTIVE: "running",
    systemd_dbus.ActiveState.RELOADING: "running",
    systemd_dbus.ActiveState.ACTIVATING: "starting",
    systemd_dbus.ActiveState.DEACTIVATING: "stopping",
    systemd_dbus.ActiveState.FAILED: "failed",
}


# a VM unit in these runs its QEMU, started (activating: not yet; the faults need it started)
RUNNING_STATES = (systemd_dbus.ActiveState.ACTIVE, systemd_dbus.ActiveState.RELOADING)


async def vm_rows(session: Session, names: Sequence[str]) -> list[VmRow]:
    """A row for each VM named, in that order: two small Gets a running VM (one batch for
    all), no SSH."""
    project = session.project
    by_name = {i.name: i for i in instances(project.model)}
    units = session.units.vm_states()  # as the session found them
    now = time.time()
    found = session.units.vms
    running = {  # VM -> its unit, for the running ones
        n: found[n].name if n in found else session.vm_unit(n)
        for n in names
        if units.get(n) in RUNNING_STATES
    }
    started = await session.manager.started(running.values())  # collected since: left out
    shaping = {vm for vm, unit in session.units.shapers.items() if unit.active_state.running}
    faults = faults_in_force(session.paths, running, shaping)

    def one(name: str) -> VmRow:
        inst = by_name.get(name)
        saved = session.state.vms.get(name)
        paths = session.paths.vm(name)
        unit = units.get(name)
        created = saved is not None or paths.disk.exists()
        state = _STATES.get(unit) if unit is not None else None
        state = state or ("exited" if created else "not-created")
        if state in ("exited", "failed") and paths.is_suspended:
            state = "suspended"  # its QEMU ended, its state saved: `resume` (or `up`)
        run = read_run(paths)
        since, restarts, health = 0, 0, None
        if name in running:
            since, restarts = started.get(running[name], (0, 0))
            if since == 0:  # collected since ListUnits: as if not running
                state = "exited" if created else "not-created"
            guest = ""
            if run is not None and run.is_of(since):
                restarts += run.restarts
                guest = run.guest
            if guest == "paused":
                state = "paused"
            elif guest in ("shutdown", "guest-panicked"):  # its restart policy's backoff
                state = "restarting"
            if inst is not None and has_health(inst.vm) and state in ("running", "paused"):
                kept = read_health(paths)
                health = kept.status.value if kept is not None and kept.is_of(since) else "starting"
        started_at = since / 1e6 if since else None
        vm = inst.vm if inst else None
        size = None
        if vm is not None and vm.image is not None:
            size = vm.disk.size or "image"
        ended = run if run is not None and run.ended_at is not None and not since else None
        return VmRow(
            name=name,
            state=state,
            status=status_text(
                state,
                health,
                started_at,
                ended.ended_at if ended else None,
                ended.exit_code if ended else None,
                now,
            ),
            health=health,
            started_at=started_at,
            ports=list(saved.ports) if saved and since else [],
            restarts=restarts,
            unit=session.vm_unit(name),
            cpu=vm.cpu if vm else None,
            memory=vm.memory if vm else None,
            disk=size if created else None,
            addresses={n: a[name] for n, a in session.state.addresses.items() if name in a},
            ssh_port=saved.ssh_port if saved else None,
            faults=faults.get(name, []) if since else [],
        )

    return [one(n) for n in names]


def faults_in_force(
    paths: ProjectPaths, running: Iterable[str], shaping: Collection[str] = ()
) -> dict[str, list[str]]:
    """The faults in force on each running VM, described (state.faults); one stat when no
    fault was ever made. ``shaping``: the VMs whose shaper unit runs (without it, a shaped
    NIC's frames go nowhere: said so)."""
    if not faults_file(paths.state_dir).exists():
        return {}
    kept = read_faults(paths.state_dir)
    pids: dict[str, int | None] = {}

    def pid_of(vm: str) -> int | None:
        if vm not in pids:
            pids[vm] = qemu_pid(paths.vm(vm).pidfile)
        return pids[vm]

    found: dict[str, list[str]] = {}
    for vm in running:
        found[vm] = [
            f.describe() + (" (its shaper ended: frames lost)" if vm not in shaping else "")
            if isinstance(f, NetFault)
            else f.describe()
            for f in kept.faults
            if f.involves(vm) and in_force(f, pid_of)
        ]
    return {vm: described for vm, described in found.items() if described}


def status_text(
    state: str,
    health: str | None,
    started_at: float | None,
    ended_at: float | None,
    exit_code: int | None,
    now: float,
) -> str:
    """STATUS as docker shows it, shorter: ``running (healthy) 12m``, ``exited (0) 2m ago``."""
    if state in ("running", "paused") and started_at is not None:
        kept = f" ({health})" if health else ""
        return f"{state}{kept} {age(now - started_at)}"
    if state in ("exited", "failed") and ended_at is not None:
        code = f" ({exit_code})" if exit_code is not None else ""
        return f"{state}{code} {age(now - ended_at)} ago"
    return state


def age(seconds: float) -> str:
    """40s, 12m, 5h, 3d: seconds under a minute, minutes under two hours, hours under two
    days (as docker's "About an hour" does not say how long)."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class NetworkRow(msgspec.Struct, frozen=True):
    name: str
    driver: str
    subnet: str | None  # None: not created yet
    bridge: str
    bridge_exists: bool | None  # None: not known (cannot read the host's links)
    dhcp: str  # the state of its dnsmasq unit
    vms: list[str]  # created VMs attached to it
    in_file: bool  # False: an orphan, left by an earlier version of the file


async def networks(project: Project, connection: Connection) -> list[NetworkRow]:
    """The project's networks: those of the file and those still created."""
    async with open_session(project, connection, Reporter(), lock=False) as session:
        in_use = session.state.networks_in_use()
        links: Links | None = HOST
        if session.network_mode == "rootless":  # its bridges: in the user's namespace, if any
            namespace = await running_namespace(session.manager)
            links = OneShotAgent(namespace) if namespace is not None else None
        rows = []
        for name in sorted(set(project.model.networks) | set(session.state.subnets)):
            bridge = netcfg.bridge_name(project.name, name)
            exists: bool | None
            try:
                exists = links is not None and await netcfg.link_present(bridge, plumbing=links)
            except Exception:  # no netlink here (a sandbox, say): say we do not know
                exists = None
            dhcp = await session.manager.status(session.dnsmasq_unit(name))
            spec = project.model.networks.get(name)
            rows.append(
                NetworkRow(
                    name=name,
                    driver=spec.driver if spec else "bridge",
                    subnet=session.state.subnets.get(name),
                    bridge=bridge,
                    bridge_exists=exists,
                    dhcp=dhcp.active_state if dhcp.exists else "none",
                    vms=in_use.get(name, []),
                    in_file=spec is not None,
                )
            )
        return rows


def ssh_argv(project: Project, vm: str, state: ProjectState, command: list[str]) -> list[str]:
    project = with_scale(project, state)
    inst = select_one(project.model, vm, project=project.name)
    target = ssh_target(project, inst, state)
    if target is None:
        raise UsageError(f"VM {vm!r} has no SSH port yet; run `qemu-compose up {vm}`")
    paths = ProjectPaths(project.state_dir, project.name)
    check_private_dir(paths.ssh_dir)  # the key and known_hosts must be this user's own
    for path in (target.key, known_hosts(paths)):
        if path.exists() or path.is_symlink():
            check_owner(path)
    return [
        "ssh",
        "-i", str(target.key),
        "-p", str(target.port),
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={known_hosts(paths)}",
        "-o", f"HostKeyAlias={host_alias(project.name, vm)}",
        "-o", "HashKnownHosts=no",  # knownhosts.forget_host finds a VM's entry by its alias
        "-o", "LogLevel=ERROR",
        f"{target.user}@{target.host}",
        *command,
    ]  # fmt: skip
