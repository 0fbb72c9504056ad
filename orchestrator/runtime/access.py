"""How to reach a created VM: the guest account its disk was made with, and its sshd.

Apart from launch (which decides a start) so that the commands that only read (ps, ssh,
inspect) and the supervisor's table import neither QEMU's command line nor cloud-init's seed.
"""

from __future__ import annotations

from orchestrator.config.model import Vm
from orchestrator.config.project import Project
from orchestrator.config.topology import Instance
from orchestrator.guest import probe
from orchestrator.guest.images import default_user
from orchestrator.state.files import ProjectState, VmState
from orchestrator.state.paths import ProjectPaths


def guest_user(vm: Vm, saved: VmState | None = None) -> str:
    """The guest account: the one its disk was made with, else the file's, else the image's
    default (``debian`` for a Debian image)."""
    if saved is not None and saved.user:
        return saved.user
    return vm.user or default_user(vm.image.source if vm.image else None)


def ssh_target(project: Project, inst: Instance, state: ProjectState) -> probe.SshTarget | None:
    """How to reach a created VM's sshd: its forwarded port, its user, the project's key."""
    saved = state.vms.get(inst.name)
    if saved is None or saved.ssh_port is None:
        return None
    user = inst.vm.ssh.user or guest_user(inst.vm, saved)
    paths = ProjectPaths(project.state_dir, project.name)
    return probe.SshTarget("127.0.0.1", saved.ssh_port, user, paths.ssh_dir / "id_ed25519")
