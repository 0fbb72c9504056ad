"""What is there: the project's units as systemd knows them (and whose they are, as each
unit records it), its instance directories, and the images, volumes and networks its VMs
need; and what the state file lost, rebuilt from them."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import systemd_dbus
from orchestrator.config.project import Project
from orchestrator.config.topology import instances
from orchestrator.errors import QemuComposeError
from orchestrator.guest.images import image_path
from orchestrator.state.files import ProjectState
from orchestrator.state.identity import Owner, owner_of, project_dir, state_of, subnet_of
from orchestrator.state.paths import UNIT_PREFIX, ProjectPaths, read_record

if TYPE_CHECKING:  # imported where used: the commands that only read (ps) never plan
    from .plan import Observed, Resources

log = logging.getLogger(__name__)
EARLIER = "elsewhere (started by an earlier qemu-compose)"  # an old unit this project never had


class ProjectConflictError(QemuComposeError):
    """Another project of the same name (another directory) has units: they are its."""


class UnitTakenError(QemuComposeError):
    """A unit's name is another project's unit (plain names can collide: "a-b"/"c" and
    "a"/"b-c" are both qemu-compose-a-b-c.service)."""


@dataclass
class ProjectUnits:
    """The units of one project (by the owner each records), and those of another project
    of the same name."""

    vms: dict[str, systemd_dbus.UnitSummary] = field(default_factory=dict)  # by VM
    networks: dict[str, systemd_dbus.UnitSummary] = field(default_factory=dict)  # dnsmasq
    supervisor: systemd_dbus.UnitSummary | None = None
    shapers: dict[str, systemd_dbus.UnitSummary] = field(default_factory=dict)  # by VM
    foreign: list[tuple[Owner, systemd_dbus.UnitSummary]] = field(default_factory=list)

    def vm_states(self) -> dict[str, systemd_dbus.ActiveState]:
        return {vm: unit.active_state for vm, unit in self.vms.items()}

    def refuse_foreign(self, project: Project) -> None:
        """ProjectConflictError when another directory's project of this name has units."""
        if not self.foreign:
            return
        where = sorted({o.directory or "?" for o, _ in self.foreign})
        vms = sorted(o.name for o, _ in self.foreign if o.kind == "vm")
        networks = sorted(o.name for o, _ in self.foreign if o.kind == "dnsmasq")
        what = f"its VMs: {', '.join(vms)}" if vms else f"its networks: {', '.join(networks)}"
        raise ProjectConflictError(
            f"project {project.name!r} already runs from {', '.join(where)} ({what}); stop or "
            f"destroy it there, or choose another name with -p"
        )


async def project_units(
    project: Project, manager: systemd_dbus.SystemdManager, state: ProjectState | None = None
) -> ProjectUnits:
    """One ListUnits call: every qemu-compose unit, sorted by the owner it records. A unit of
    an earlier version records no directory: it is this project's only if this project knows
    it (its state names the unit, or the VM's directory or the network is there)."""
    units = ProjectUnits()
    directory = project_dir(project)
    for row in await manager.list_units(UNIT_PREFIX):
        owner = owner_of(row.description)
        if owner is None or owner.project != project.name:
            continue
        if owner.directory is None and not _known(project, state, owner, row):
            owner = Owner(owner.kind, owner.project, owner.name, EARLIER)
        if not owner.is_of(project.name, directory):
            units.foreign.append((owner, row))
            continue
        table = {"vm": units.vms, "dnsmasq": units.networks, "shaper": units.shapers}.get(
            owner.kind
        )
        if table is None:
            units.supervisor = _preferred(units.supervisor, row)
        else:  # an earlier version's unit beside this one's: the running one
            table[owner.name] = _preferred(table.get(owner.name), row)
    return units


def _preferred(
    before: systemd_dbus.UnitSummary | None, row: systemd_dbus.UnitSummary
) -> systemd_dbus.UnitSummary:
    if before is None or (row.active_state.running and not before.active_state.running):
        return row
    return before


def _known(
    project: Project, state: ProjectState | None, owner: Owner, row: systemd_dbus.UnitSummary
) -> bool:
    paths = ProjectPaths(project.state_dir, project.name)
    if owner.kind == "vm":
        saved = state.vms.get(owner.name) if state else None
        return (saved is not None and saved.unit == row.name) or paths.vm(
            owner.name
        ).directory.exists()
    if owner.kind == "dnsmasq":
        return (state is not None and owner.name in state.subnets) or paths.network_dir(
            owner.name
        ).exists()
    return project.state_dir.exists()


async def unit_states(
    project: Project, manager: systemd_dbus.SystemdManager
) -> dict[str, systemd_dbus.ActiveState]:
    """The ActiveState of each of the project's own VM units that systemd has loaded."""
    return (await project_units(project, manager)).vm_states()


async def rebuild(
    project: Project, manager: systemd_dbus.SystemdManager, state: ProjectState, units: ProjectUnits
) -> list[str]:
    """What the state file lost, taken back from the live system: each running VM's record
    from its unit, each stopped VM's from its instance directory, each network's subnet from
    its dnsmasq unit and its addresses from dnsmasq's files. Returns what was rebuilt."""
    paths = ProjectPaths(project.state_dir, project.name)
    rebuilt = []
    for vm, row in units.vms.items():
        if vm not in state.vms and row.active_state.running:
            saved = state_of((await manager.status(row.name)).environment)
            if saved is not None:
                state.vms[vm] = saved
                rebuilt.append(vm)
    for entry in sorted(project.state_dir.glob("*/vm-state.json")):
        vm = entry.parent.name
        if vm not in state.vms and (saved := read_record(paths.vm(vm))) is not None:
            state.vms[vm] = saved
            rebuilt.append(vm)
    for network, row in units.networks.items():
        if network not in state.subnets:
            subnet = subnet_of((await manager.status(row.name)).environment)
            if subnet is not None:
                state.subnets[network] = subnet
                state.addresses[network] = _addresses(paths, network)
                rebuilt.append(f"network {network}")
    if rebuilt:
        log.warning("the state file had lost %s: rebuilt from systemd", ", ".join(rebuilt))
    return rebuilt


def _addresses(paths: ProjectPaths, network: str) -> dict[str, str]:
    """dnsmasq's reservations of a network (a file a VM: MAC,address,name)."""
    found = {}
    for entry in (paths.network_dir(network) / "dhcp-hosts").glob("*"):
        try:
            _, address, name = entry.read_text().strip().split(",")
            found[name] = str(ipaddress.IPv4Address(address))
        except (OSError, ValueError):
            continue
    return found


async def observe(
    project: Project, units: ProjectUnits, state: ProjectState
) -> dict[str, Observed]:
    from .plan import Observed

    states = units.vm_states()
    paths = ProjectPaths(project.state_dir, project.name)
    with_image = {i.name for i in instances(project.model) if i.vm.image is not None}
    observed = {}
    for name in set(states) | set(state.vms):
        saved = state.vms.get(name)
        disk = paths.vm(name).disk.exists()
        # a VM with an image is created when its disk is there (a recreate killed after the
        # old disk went is made anew); one without, when it has a record
        created = disk if name in with_image else saved is not None or disk
        observed[name] = Observed(
            states.get(name),
            created,
            saved.config_hash if saved else None,
            saved.ssh_port if saved else None,
            saved.shape if saved else None,
        )
    return observed


def observe_resources(project: Project, state: ProjectState, supervisor_running: bool) -> Resources:
    """Which of the file's images are here (cached, or local files), which named volumes
    exist, which networks are created; and whether the project's supervisor runs."""
    from .plan import Resources

    paths = ProjectPaths(project.state_dir, project.name)
    sources = {vm.image.source for vm in project.model.vms.values() if vm.image is not None}
    return Resources(
        cached_images=frozenset(s for s in sources if image_path(s).is_file()),
        volumes=frozenset(n for n in project.model.volumes if paths.volume(n).exists()),
        subnets=dict(state.subnets),
        supervisor_running=supervisor_running,
    )
