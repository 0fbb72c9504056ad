"""The ssh command line for a VM (see knownhosts for how its host key is kept)."""

from __future__ import annotations

from orchestrator.config.project import Project
from orchestrator.errors import UsageError
from orchestrator.runtime.engine import ssh_target
from orchestrator.runtime.plan import instances
from orchestrator.state.files import ProjectState
from orchestrator.state.paths import ProjectPaths

from .knownhosts import host_alias, known_hosts


def ssh_argv(project: Project, vm: str, state: ProjectState, command: list[str]) -> list[str]:
    inst = next((i for i in instances(project.model) if i.name == vm), None)
    if inst is None:
        raise UsageError(f"no VM named {vm!r} in {project.compose_file}")
    target = ssh_target(project, inst, state)
    if target is None:
        raise UsageError(f"VM {vm!r} has no SSH port yet; run `qemu-compose up {vm}`")
    paths = ProjectPaths(project.state_dir, project.name)
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
