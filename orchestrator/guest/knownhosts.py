"""The project's known_hosts: VM host keys trusted on first use, checked ever after.

ssh runs with StrictHostKeyChecking=accept-new and this file, under an alias per VM, so that
ports that move between runs do not matter; a recreated VM gets new host keys, so its entry
is forgotten with it.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.state.files import atomic_write
from orchestrator.state.paths import ProjectPaths


def host_alias(project: str, vm: str) -> str:
    return f"qemu-compose.{project}.{vm}"


def known_hosts(paths: ProjectPaths) -> Path:
    return paths.ssh_dir / "known_hosts"


def forget_host(paths: ProjectPaths, project: str, vm: str) -> None:
    """Drop a VM's recorded host key (it is being recreated or destroyed)."""
    path = known_hosts(paths)
    if not path.exists():
        return
    alias = host_alias(project, vm)
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.split(" ", 1)[0] != alias]
    if kept != lines:
        atomic_write(path, "".join(kept).encode())


def record_host(paths: ProjectPaths, project: str, vm: str, key: str) -> None:
    """Trust ``key`` (``<type> <base64>``) for the VM, in place of what was recorded for it
    (a warm clone made its own host key: it is known, not trusted on first use)."""
    path = known_hosts(paths)
    alias = host_alias(project, vm)
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    kept = [line for line in lines if line.split(" ", 1)[0] != alias]
    atomic_write(path, "".join([*kept, f"{alias} {key}\n"]).encode())
