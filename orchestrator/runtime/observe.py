"""What is there: the project's units as systemd knows them, its instance directories, and
the images, volumes and networks its VMs need."""

from __future__ import annotations

import systemd_dbus
from orchestrator.config.project import Project
from orchestrator.guest.images import image_path
from orchestrator.state.files import ProjectState
from orchestrator.state.paths import ProjectPaths, project_unit_prefix, vm_of_unit

from .plan import Observed, Resources


async def unit_states(
    project: Project, manager: systemd_dbus.SystemdManager
) -> dict[str, systemd_dbus.ActiveState]:
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
            units.get(name),
            created,
            saved.config_hash if saved else None,
            saved.ssh_port if saved else None,
        )
    return observed


def observe_resources(project: Project, state: ProjectState, supervisor_running: bool) -> Resources:
    """Which of the file's images are here (cached, or local files), which named volumes
    exist, which networks are created; and whether the project's supervisor runs."""
    paths = ProjectPaths(project.state_dir, project.name)
    sources = {vm.image.source for vm in project.model.vms.values() if vm.image is not None}
    return Resources(
        cached_images=frozenset(s for s in sources if image_path(s).is_file()),
        volumes=frozenset(n for n in project.model.volumes if paths.volume(n).exists()),
        subnets=dict(state.subnets),
        supervisor_running=supervisor_running,
    )
