"""Names and places of a project's things: systemd units, files, sockets. Pure.

Units are ``qemu-compose-<project>-<vm>.service``, ``qemu-compose-dnsmasq-<project>-<network>
.service`` and ``qemu-compose-<project>-supervisor.service``, each part escaped as
``systemd-escape`` does ("-" becomes ``\\x2d``), so that no two projects' units can collide.
A VM's files live in ``.qemu-compose/<vm>/``; its sockets too, unless that path is longer
than a unix socket allows, then under ``$XDG_RUNTIME_DIR/qemu-compose/``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import StateError
from qmp import check_socket_path
from systemd_dbus import escape, unescape

UNIT_PREFIX = "qemu-compose-"


def vm_unit(project: str, vm: str) -> str:
    return f"{UNIT_PREFIX}{escape(project)}-{escape(vm)}.service"


def dnsmasq_unit(project: str, network: str) -> str:
    return f"{UNIT_PREFIX}dnsmasq-{escape(project)}-{escape(network)}.service"


def supervisor_unit(project: str) -> str:
    return f"{UNIT_PREFIX}{escape(project)}-supervisor.service"


def project_unit_prefix(project: str) -> str:
    """Every VM unit of the project starts with this (and nothing of another project does)."""
    return f"{UNIT_PREFIX}{escape(project)}-"


def vm_of_unit(project: str, unit: str) -> str | None:
    """The VM a unit of this project runs, or None for its other units."""
    prefix = project_unit_prefix(project)
    if not unit.startswith(prefix) or not unit.endswith(".service"):
        return None
    name = unit[len(prefix) : -len(".service")]
    if name == "supervisor" or "-" in name:  # escaped VM names contain no bare "-"
        return None
    return unescape(name)


def ensure_socket_dir(path: Path) -> Path:
    """Create a VM's socket directory 0700 and refuse one that someone else made."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise StateError(f"{path} is not a private directory of this user: remove it")
    return path


@dataclass(frozen=True, slots=True)
class VmPaths:
    directory: Path
    sockets: Path  # the directory the sockets are in (see module docstring)

    @property
    def disk(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.directory / "seed.iso"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def console_socket(self) -> Path:
        return self.sockets / "console.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.sockets / "qmp.sock"

    @property
    def qmp_control_socket(self) -> Path:
        return self.sockets / "qmp-ctl.sock"


@dataclass(frozen=True, slots=True)
class ProjectPaths:
    state_dir: Path
    project: str

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def console_password(self) -> Path:
        return self.state_dir / "console-password"

    @property
    def events_dir(self) -> Path:
        return self.state_dir / "events"

    @property
    def supervised_vms(self) -> Path:
        return self.state_dir / "supervised-vms.json"

    def volume(self, name: str) -> Path:
        return self.state_dir / "volumes" / name / "disk.qcow2"

    def network_dir(self, name: str) -> Path:
        return self.state_dir / "networks" / name

    def vm(self, name: str) -> VmPaths:
        directory = self.state_dir / name
        sockets = directory
        try:
            check_socket_path(str(directory / "qmp-ctl.sock"))
        except ValueError:
            # /tmp only without a runtime dir; ensure_socket_dir refuses one that is not ours
            runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/qemu-compose-{os.getuid()}"  # noqa: S108
            digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
            sockets = Path(runtime) / "qemu-compose" / f"{digest}-{name}"
        return VmPaths(directory, sockets)
