"""What saving and restoring share: a VM's writable disks, its hardware, QEMU's version, the
snapshot errors, the event log's project-wide record."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from orchestrator.config.topology import Instance, instances
from orchestrator.errors import QemuComposeError
from orchestrator.guest.accel import choose_accel, read_host_facts
from orchestrator.guest.clock import UPTIME_COMMAND, boot_epoch
from orchestrator.guest.disks import DiskError, internal_snapshots
from orchestrator.guest.mounts import volume_node
from orchestrator.guest.probe import GuestShell, Outcome
from orchestrator.state.snapshots import SnapshotDisk
from orchestrator.supervisor.eventlog import EventLog

from ..access import ssh_target
from ..changes import Change, changes, shape
from ..launch import qemu_binary
from ..session import Session

# What a state is loaded into must have the same devices: what shapes QEMU's hardware (and
# the disks the state was taken with). The other fields (ports, environment, ...) may change.
HARDWARE = (
    "image", "disk", "boot", "cpu", "memory", "machine", "cpu_model", "accel", "networks",
    "volumes", "warm",
)  # fmt: skip


class SnapshotError(QemuComposeError):
    """A snapshot could not be saved, restored or removed: what and why, VM by VM."""


def instance_map(session: Session) -> dict[str, Instance]:
    return {i.name: i for i in instances(session.project.model)}


def writable_disks(session: Session, inst: Instance) -> list[SnapshotDisk]:
    """The disks whose point in time a snapshot keeps: the root disk (if it has one) and the
    named volumes it may write to; read-only volumes and bind mounts are not its to keep."""
    found = []
    disk = session.paths.vm(inst.name).disk
    if inst.vm.image is not None and disk.exists():
        found.append(SnapshotDisk("root", str(disk)))
    for mount in inst.vm.volumes:
        if mount.type == "volume" and not mount.read_only:
            path = session.paths.volume(mount.source)
            found.append(SnapshotDisk(volume_node(mount.source), str(path), mount.source))
    return found


def current_shape(session: Session, inst: Instance) -> dict[str, str]:
    """The shape ``inst`` starts with now, as the compose file says."""
    return shape(session.project.model, inst, session.project.files)


def running_shape(session: Session, inst: Instance) -> dict[str, str]:
    """What the VM runs with (its record), else what the file says."""
    saved = session.state.vms.get(inst.name)
    return dict(saved.shape) if saved is not None and saved.shape else current_shape(session, inst)


def accel_of(inst: Instance) -> str:
    """The accelerator the VM runs on here (a state loads on the one it was saved on)."""
    return choose_accel(inst.vm.accel, read_host_facts(), inst.vm.cpu_model).name


def hardware_changes(saved: Mapping[str, str], now: Mapping[str, str]) -> list[Change]:
    """What of a VM's hardware differs from what a snapshot was taken with (a field it did
    not record is no difference)."""
    return [c for c in changes(saved, now) if c.field in HARDWARE and c.old is not None]


_VERSION = re.compile(r"version (\d+\.\d+\.\d+)")


async def qemu_version() -> str:
    """``7.2.13 Debian 1:7.2+dfsg-7+deb12u12`` of the QEMU that starts VMs: what a state is
    tied to."""
    result = await trio.run_process([qemu_binary(), "--version"], capture_stdout=True, check=False)
    first = result.stdout.decode(errors="replace").splitlines()[:1]
    return _version_text(first[0] if first else "")


def _version_text(line: str) -> str:
    match = _VERSION.search(line)
    if match is None:
        return line.strip()
    package = line[match.end() :].strip().removeprefix("(").removesuffix(")")
    return f"{match.group(1)} {package}".strip()


def version_of(answer: Mapping[str, Any]) -> str:
    """The same text from QMP's ``query-version``."""
    q = answer.get("qemu", {})
    number = f"{q.get('major', 0)}.{q.get('minor', 0)}.{q.get('micro', 0)}"
    package = str(answer.get("package", "")).strip()
    return f"{number} {package}".strip()


def log_project_event(session: Session, event: str, data: dict[str, Any]) -> None:
    """A project-wide record in the event log (SNAPSHOT_SAVE, SNAPSHOT_RESTORE, ...)."""
    with contextlib.suppress(OSError):  # the log is for watchers: a full disk fails nothing
        EventLog(session.paths.events_dir).append("", event, data, source="snapshot")


async def check_tags(disks: list[SnapshotDisk], tag: str) -> list[str]:
    """The disks that lack ``tag`` (or are gone): a snapshot that cannot be restored."""
    missing = []
    for disk in disks:
        path = Path(disk.path)
        try:
            tags = await internal_snapshots(path) if path.exists() else []
        except DiskError:
            tags = []
        if tag not in tags:
            missing.append(disk.volume or disk.node)
    return missing


async def in_guests(
    session: Session, names: Sequence[str], command: Callable[[float | None], str], timeout: float
) -> dict[str, Outcome]:
    """Run ``command(boot)`` in each guest that has an OS and SSH, all at once; each one's
    outcome (never raises). It is made once logged in, with the guest's boot on the host's
    clock then (`clock.boot_epoch`; None: its uptime could not be read)."""
    by_name = instance_map(session)
    found: dict[str, Outcome] = {}
    limiter = trio.CapacityLimiter(8)

    async def one(vm: str) -> None:
        inst = by_name.get(vm)
        target = ssh_target(session.project, inst, session.state) if inst else None
        if inst is None or not inst.vm.has_os or target is None:
            return
        shell = GuestShell(target)
        try:
            outcome = await shell.probe(UPTIME_COMMAND, timeout=timeout, handshakes=limiter)
            if outcome.exit_code == 0:
                boot = boot_epoch(outcome.output, time.time())
                outcome = await shell.probe(command(boot), timeout=timeout, handshakes=limiter)
        finally:
            await shell.aclose()
        found[vm] = outcome

    async with trio.open_nursery() as nursery:
        for vm in names:
            nursery.start_soon(one, vm)
    return {n: found[n] for n in names if n in found}
