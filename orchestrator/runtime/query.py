"""Read-only questions: `ps`, `network ls`, and how to reach a VM over SSH."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import trio

import netcfg
import systemd_dbus
from orchestrator.config.project import Project
from orchestrator.config.topology import instances, select_one
from orchestrator.errors import UsageError
from orchestrator.guest import probe
from orchestrator.guest.knownhosts import host_alias, known_hosts
from orchestrator.progress import Reporter
from orchestrator.state.files import ProjectState, check_owner, check_private_dir
from orchestrator.state.paths import ProjectPaths
from orchestrator.supervisor.health import has_health

from .launch import ssh_target
from .options import Connection
from .session import Session, open_session
from .teardown import networks_in_use


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


async def ps(
    project: Project, vms: Sequence[str], connection: Connection, *, all_vms: bool = True
) -> list[VmRow]:
    """The status of every VM; SSH probed in parallel (2 s each) for running ones."""
    async with open_session(project, connection, Reporter(), lock=False) as session:
        rows = await vm_rows(session, session.names(vms))
        return rows if all_vms else [r for r in rows if r.status not in ("not-created", "stopped")]


async def vm_rows(session: Session, names: Sequence[str]) -> list[VmRow]:
    """A row for each VM named, in that order."""
    project = session.project
    by_name = {i.name: i for i in instances(project.model)}
    units = session.units.vm_states()  # as the session found them
    rows: dict[str, VmRow] = {}

    async def one(name: str) -> None:
        inst = by_name.get(name)
        saved = session.state.vms.get(name)
        unit = units.get(name)
        created = saved is not None or session.paths.vm(name).disk.exists()
        if unit is not None and unit.running:
            status = "active"
            if inst is not None and has_health(inst.vm):
                target = ssh_target(project, inst, session.state)
                ok = target is not None and await probe.reachable(target, timeout=2)
                status = "ready" if ok else "starting"
        elif unit is systemd_dbus.ActiveState.FAILED:
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
            unit=session.vm_unit(name),
            cpu=vm.cpu if vm else None,
            memory=vm.memory if vm else None,
            disk=size if created else None,
            addresses={n: a[name] for n, a in session.state.addresses.items() if name in a},
            ssh_port=saved.ssh_port if saved else None,
        )

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return [rows[n] for n in names]


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


async def networks(project: Project, connection: Connection) -> list[NetworkRow]:
    """The project's networks: those of the file and those still created."""
    async with open_session(project, connection, Reporter(), lock=False) as session:
        in_use = networks_in_use(session.state)
        rows = []
        for name in sorted(set(project.model.networks) | set(session.state.subnets)):
            bridge = netcfg.bridge_name(project.name, name)
            exists: bool | None
            try:
                exists = await netcfg.link_present(bridge)
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
