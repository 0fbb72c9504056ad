"""Names and places of a project's things: systemd units, files, sockets.

Units are ``qemu-compose-<project>-<vm>.service``, ``qemu-compose-dnsmasq-<project>-<network>
.service`` and ``qemu-compose-<project>-supervisor.service``, as the spec names them; whose
a unit is, is recorded on it (state.identity). Units of earlier versions had each part
escaped as ``systemd-escape`` does; they are found by what they record, not by name.
A VM's files live in ``.qemu-compose/<vm>/``; its sockets too, unless that path is longer
than a unix socket allows, then under ``$XDG_RUNTIME_DIR/qemu-compose/`` or, without a
runtime directory, in a private directory made by mkdtemp (see `make_socket_dir`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import msgspec

from orchestrator.errors import StateError
from orchestrator.state.files import (
    VmState,
    atomic_write,
    check_owner,
    check_private_dir,
    private_dir,
    read_struct,
)
from qmp import check_socket_path

log = logging.getLogger(__name__)

UNIT_PREFIX = "qemu-compose-"
SHARED_NETWORKS = Path("/var/lib/qemu-compose/networks")


def vm_unit(project: str, vm: str) -> str:
    """``qemu-compose-<project>-<vm>.service``, as the spec has it. The names are not unique
    across projects ("a-b"/"c" and "a"/"b-c"): whose a unit is, its Description says, and a
    unit of another owner is never taken (see state.identity)."""
    return f"{UNIT_PREFIX}{project}-{vm}.service"


def dnsmasq_unit(project: str, network: str) -> str:
    return f"{UNIT_PREFIX}dnsmasq-{project}-{network}.service"


def supervisor_unit(project: str) -> str:
    return f"{UNIT_PREFIX}{project}-supervisor.service"


def shaper_unit(project: str, vm: str) -> str:
    """The unit that shapes a VM's traffic (`fault net`): it ends with the VM's QEMU."""
    return f"{UNIT_PREFIX}shaper-{project}-{vm}.service"


class VmPaths(msgspec.Struct, frozen=True):
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
    def efi_variables(self) -> Path:
        return self.directory / "efivars.fd"  # firmware: uefi (guest.firmware)

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def health(self) -> Path:
        """The supervisor's kept health of the VM (supervisor.health.HealthRecord)."""
        return self.directory / "health.json"

    @property
    def run_record(self) -> Path:
        """What the supervisor keeps of the VM's run (supervisor.runs.RunRecord)."""
        return self.directory / "run.json"

    @property
    def suspended(self) -> Path:
        """The state of a suspended VM (memory and devices), for its resume."""
        return self.directory / "suspended.state"

    @property
    def suspended_record(self) -> Path:
        """What a suspended VM ran with (state.snapshots.SuspendRecord), written last: a VM
        is suspended when this is there."""
        return self.directory / "suspended.json"

    @property
    def is_suspended(self) -> bool:
        """Suspended: its state and the record written after it are there."""
        return self.suspended_record.is_file() and self.suspended.is_file()

    @property
    def cloning(self) -> Path:
        """There while a warm clone runs as a copy of its template, not yet itself: a VM
        with it is removed by the next `up` (and made again)."""
        return self.directory / "cloning"

    @property
    def console_socket(self) -> Path:
        return self.sockets / "console.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.sockets / "qmp.sock"

    @property
    def qmp_control_socket(self) -> Path:
        return self.sockets / "qmp-ctl.sock"

    @property
    def record(self) -> Path:
        """The VM's own record of its state (as state.json has it): survives a lost state."""
        return self.directory / "vm-state.json"


class ProjectPaths(msgspec.Struct, frozen=True):
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
        """dnsmasq's files of a network. As root, dnsmasq reads them after it has dropped to
        an unprivileged user, who cannot enter the private state directory: they live under
        /var/lib/qemu-compose then (names and addresses only, nothing secret)."""
        if os.geteuid() == 0:
            digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
            return SHARED_NETWORKS / f"{digest}-{name}"
        return self.state_dir / "networks" / name

    @property
    def sockets_record(self) -> Path:
        """Where the project's private socket directory under /tmp is recorded (when there is
        no $XDG_RUNTIME_DIR and an instance directory's path is too long for a socket)."""
        return self.state_dir / "sockets-dir"

    def vm(self, name: str) -> VmPaths:
        directory = self.state_dir / name
        try:
            check_socket_path(str(directory / "qmp-ctl.sock"))
        except ValueError:
            return VmPaths(directory, self._socket_base() / self._socket_leaf(name))
        return VmPaths(directory, directory)

    def _socket_leaf(self, name: str) -> str:
        if os.environ.get("XDG_RUNTIME_DIR"):  # shared by the user's projects
            return f"{hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]}-{name}"
        return name

    def _socket_base(self) -> Path:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            return Path(runtime) / "qemu-compose"
        return self.recorded_socket_base() or Path("/nonexistent/qemu-compose-sockets")

    def recorded_socket_base(self) -> Path | None:
        """The private directory recorded for this project's sockets, if it is still there
        and still this user's own (after a reboot anyone may have made one of that name)."""
        try:
            base = Path(self.sockets_record.read_text().strip())
            check_private_dir(base)
        except (OSError, StateError, ValueError):
            return None
        return base


def make_socket_dir(paths: ProjectPaths, name: str) -> VmPaths:
    """Create a VM's socket directory, private, and return its paths. Every directory on the
    way is this user's and closed to others ($XDG_RUNTIME_DIR is checked); without a runtime
    directory the project's sockets go to a directory of an unguessable name made by mkdtemp
    and recorded in the state directory, never to a name another user could make first."""
    vm = paths.vm(name)
    if vm.sockets == vm.directory:
        private_dir(vm.directory)
        return vm
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        check_private_dir(Path(runtime))
        private_dir(Path(runtime) / "qemu-compose")
    elif paths.recorded_socket_base() is None:
        base = Path(tempfile.mkdtemp(prefix="qemu-compose-"))
        atomic_write(paths.sockets_record, str(base).encode())
    vm = paths.vm(name)
    private_dir(vm.sockets)
    return vm


def remove_socket_dir(paths: ProjectPaths, name: str) -> None:
    """A destroyed VM's socket directory, when it is not its instance directory; the
    project's private base under /tmp too once it is empty."""
    vm = paths.vm(name)
    if vm.sockets == vm.directory:
        return
    try:
        check_owner(vm.sockets)
        shutil.rmtree(vm.sockets)
    except FileNotFoundError:
        pass
    except StateError as err:  # not ours: not to delete, and no reason to fail destroy
        log.warning("left %s alone: %s", vm.sockets, err)
    base = paths.recorded_socket_base()
    if base is not None and not any(base.iterdir()):
        base.rmdir()
        paths.sockets_record.unlink(missing_ok=True)


def write_record(vm: VmPaths, state: VmState) -> None:
    atomic_write(vm.record, msgspec.json.encode(state))


def read_record(vm: VmPaths) -> VmState | None:
    """A VM's own record, if it has one that can be read."""
    return read_struct(vm.record, VmState)
