"""Snapshots of a project: what `snapshot save` kept, where it lives, and the names it takes.

A snapshot NAME is a directory, ``.qemu-compose/snapshots/NAME/``, holding ``snapshot.json``
(the record, written last and whole) and, for a snapshot with memory, ``<vm>.state`` per VM:
QEMU's migration stream of its RAM and devices, each written under a temporary name and
renamed once whole. The disks' point in time is an internal qcow2 snapshot tagged
``qemu-compose-NAME`` in each writable disk (a VM's root disk, its named volumes): copy on
write, in the image itself. A save writes ``saving.json`` first, naming the tags it is about to
make: a directory with it (and no record) is an interrupted save, which the next `snapshot
save` or `snapshot rm` of that name undoes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import msgspec

from orchestrator.errors import UsageError

from .files import atomic_write, private_dir, read_struct

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
VERSION = 1


def check_name(name: str) -> str:
    """A snapshot's name: letters, digits, ``_ . -``, starting with a letter or digit."""
    if not NAME.match(name):
        raise UsageError(
            f"bad snapshot name {name!r}: up to 63 letters, digits, '_', '.' or '-', starting"
            " with a letter or a digit"
        )
    return name


def disk_tag(name: str) -> str:
    """The internal qcow2 snapshot that holds a disk's point in time of snapshot ``name``."""
    return f"qemu-compose-{name}"


class SnapshotDisk(msgspec.Struct, frozen=True):
    node: str  # QEMU's block node: root, or vol-<serial>
    path: str  # the qcow2 image
    volume: str | None = None  # the named volume, for a volume's disk


class SnapshotVm(msgspec.Struct, frozen=True, kw_only=True):
    shape: dict[str, str]  # what it ran with (runtime.changes): its hardware must match
    accel: str  # the accelerator it ran on (tcg, kvm): a state loads on the same
    disks: list[SnapshotDisk] = []
    state: str | None = None  # the file of its memory and devices (a snapshot with memory)
    state_bytes: int = 0
    was: str = "running"  # running, paused (a fault), stopped (disks only: not running)


class SnapshotRecord(msgspec.Struct, frozen=True, kw_only=True):
    version: int = VERSION
    name: str
    created_at: float  # the instant (host clock) the VMs were frozen
    memory: bool
    qemu: str  # QEMU's version: a state loads into the same
    vms: dict[str, SnapshotVm]
    frozen_for: float = 0.0  # seconds the VMs stood still for it
    duration: float = 0.0  # seconds the save took in all

    @property
    def size(self) -> int:
        """Bytes of its own files (the disks' points in time share the images' clusters)."""
        return sum(vm.state_bytes for vm in self.vms.values())


class SavingRecord(msgspec.Struct, frozen=True):
    """What an unfinished save had begun to make: the disks' tags to undo."""

    name: str
    vms: dict[str, list[SnapshotDisk]]  # VM -> its disks


class SuspendRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A suspended VM: what its state needs to be loaded (see `SnapshotVm`)."""

    suspended_at: float
    qemu: str
    shape: dict[str, str]
    accel: str
    state_bytes: int = 0
    was: str = "running"


class Snapshots:
    """The project's snapshots under ``<state_dir>/snapshots``."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "snapshots"

    def path(self, name: str) -> Path:
        return self.directory / check_name(name)

    def make(self, name: str) -> Path:
        private_dir(self.directory)
        return private_dir(self.path(name))

    def record(self, name: str) -> SnapshotRecord | None:
        return read_struct(self.path(name) / "snapshot.json", SnapshotRecord)

    def saving(self, name: str) -> SavingRecord | None:
        return read_struct(self.path(name) / "saving.json", SavingRecord)

    def names(self) -> list[str]:
        """Every snapshot's name, finished or not, sorted."""
        try:
            entries = sorted(p.name for p in self.directory.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        return [n for n in entries if NAME.match(n)]

    def begin(self, name: str, disks: dict[str, list[SnapshotDisk]]) -> Path:
        """The snapshot's directory, with the record of a save under way; neither, if the
        record cannot be written (a full disk: `snapshot ls` would show it incomplete)."""
        directory = self.make(name)
        try:
            atomic_write(directory / "saving.json", msgspec.json.encode(SavingRecord(name, disks)))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return directory

    def finish(self, record: SnapshotRecord) -> None:
        directory = self.path(record.name)
        atomic_write(directory / "snapshot.json", msgspec.json.encode(record))
        (directory / "saving.json").unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        """The snapshot's files: its record first (so that nothing half-removed is whole)."""
        directory = self.path(name)
        (directory / "snapshot.json").unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
