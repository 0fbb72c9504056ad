"""The faults in force (`fault link`, `fault disk`, `fault partition`), kept in faults.json in
the state directory: what `ps`, `inspect` and `fault ls` show, what `fault clear`, `stop` and
`destroy` undo, and what the supervisor takes away when a restart policy restarts a VM.

A link cut, a disk throttle or its errors, a NIC's shaping: each lives in QEMU, so it ends
with the QEMU that had it; each records that QEMU's PID, and counts as in force only while
that process is the VM's QEMU (a NIC's shaper unit ends with QEMU's sockets). A
partition lives in the project's nftables table (bridge family) as drops between TAPs, which
outlive QEMU: it lasts until it is healed, or until every VM of one side has left it.

Pause is not kept here: QEMU's own status says it. Commands change the record holding the
project lock; the supervisor holds none, so every change also holds ``faults.lock`` (flock)
around its read and write. The file is written whole (atomic_write) or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import trio
from trio.lowlevel import RunVar

from netcfg.shaping import Shape

from .files import atomic_write, read_struct

FAULTS_FILE = "faults.json"
FAULTS_LOCK = "faults.lock"


class LinkFault(msgspec.Struct, frozen=True, tag="link"):
    """A NIC's link set down (QMP set_link): the guest sees its carrier lost."""

    vm: str
    network: str  # a bridge network, or "" for the user-mode NIC
    nic: str  # QEMU's netdev id of that NIC
    qemu_pid: int
    since: float

    def describe(self) -> str:
        return f"link {self.network or 'user'} down"

    def involves(self, vm: str) -> bool:
        return vm == self.vm


class DiskFault(msgspec.Struct, frozen=True, tag="disk"):
    """A disk throttled (QMP block_set_io_throttle): at most ``iops`` and ``bps`` (0: no limit)."""

    vm: str
    drive: str  # the device id: "root", or the block node of a named volume
    label: str  # what the user named: "root" or the volume's name
    iops: int
    bps: int
    qemu_pid: int
    since: float

    def describe(self) -> str:
        limits = {"iops": self.iops, "bps": self.bps}
        return f"disk {self.label} " + " ".join(f"{k}={v}" for k, v in limits.items() if v)

    def involves(self, vm: str) -> bool:
        return vm == self.vm


class DiskErrorFault(msgspec.Struct, frozen=True, tag="disk-error"):
    """A disk whose reads or writes fail (EIO): a blkdebug node inserted between the disk's
    format node and its file (blockdev-add, then blockdev-reopen of the format node)."""

    vm: str
    drive: str  # the format node, also the device id
    label: str
    kind: str  # read, write, all
    file: str  # the format node's file child before (what the undoing puts back)
    backing: str | None  # its backing child (a reopen must name it)
    read_only: bool
    qemu_pid: int
    since: float

    def describe(self) -> str:
        return f"disk {self.label} {'I/O' if self.kind == 'all' else self.kind} errors"

    def involves(self, vm: str) -> bool:
        return vm == self.vm

    @property
    def node(self) -> str:
        return f"qc-error-{self.drive}"

    def reopen(self, file: str) -> dict[str, Any]:
        """blockdev-reopen's arguments: the format node as it was opened, on ``file``."""
        options: dict[str, Any] = {"driver": "qcow2", "node-name": self.drive,
                                   "read-only": self.read_only, "file": file}  # fmt: skip
        if self.backing is not None:
            options["backing"] = self.backing
        return {"options": [options]}


class NetFault(msgspec.Struct, frozen=True, tag="net"):
    """One direction of a NIC shaped (netcfg.shaping): QEMU hands its frames, through a
    filter-redirector and two chardevs, to the VM's shaper unit, which hands them back late,
    twice, corrupted or not at all. ``direction``: egress (what the VM sends) or ingress."""

    vm: str
    network: str  # a bridge network, or "" for the user-mode NIC
    nic: str
    direction: str
    shape: Shape
    qemu_pid: int
    since: float

    def describe(self) -> str:
        return f"net {self.network or 'user'} {self.direction} {self.shape.describe()}"

    def involves(self, vm: str) -> bool:
        return vm == self.vm

    @property
    def ids(self) -> tuple[str, str, str]:
        """QEMU's ids of the filter and of its outdev and indev chardevs."""
        base = f"qc-shape-{self.nic}-{self.direction}"  # (runtime: SHAPE_PREFIX)
        return base, f"{base}-out", f"{base}-in"

    def sockets(self, directory: Path) -> tuple[Path, Path]:
        """The outdev's and the indev's sockets (QEMU listens), in the VM's socket directory:
        names as short as the others there (the 108-byte limit)."""
        leaf = f"{self.nic.removeprefix('nic')}{self.direction[0]}"
        return directory / f"shape{leaf}o.sock", directory / f"shape{leaf}i.sock"


class PartitionFault(msgspec.Struct, frozen=True, tag="partition"):
    """Traffic dropped between groups of VMs on bridge networks. ``one_way``: only from the
    first group to the others. ``drops``: (from TAP, to TAP), each a VM's TAP (``taps``)."""

    id: str  # which one: a context manager heals its own
    groups: tuple[tuple[str, ...], ...]
    one_way: bool
    networks: tuple[str, ...]
    taps: dict[str, str]  # TAP -> its VM
    drops: tuple[tuple[str, str], ...]
    qemu_pids: dict[str, int]  # VM -> its QEMU when it was made: a new QEMU leaves it
    since: float

    def describe(self) -> str:
        sep = " -> " if self.one_way else " | "
        return "partition " + sep.join(",".join(g) for g in self.groups)

    def involves(self, vm: str) -> bool:
        return any(vm in group for group in self.groups)

    def without(self, vm: str) -> PartitionFault | None:
        """The partition once ``vm`` has left it (its restart, its stop); None when what is
        left divides nothing (fewer than two groups, a one-way one without its source, or
        no drop left)."""
        groups = tuple(tuple(n for n in g if n != vm) for g in self.groups)
        if self.one_way and not groups[0]:
            return None
        groups = tuple(g for g in groups if g)
        if len(groups) < 2:
            return None
        gone = {tap for tap, owner in self.taps.items() if owner == vm}
        drops = tuple(d for d in self.drops if not gone & set(d))
        if not drops:
            return None  # what is left shares no network
        return msgspec.structs.replace(
            self,
            groups=groups,
            taps={t: v for t, v in self.taps.items() if t not in gone},
            drops=drops,
            qemu_pids={v: p for v, p in self.qemu_pids.items() if v != vm},
        )


Fault = LinkFault | DiskFault | DiskErrorFault | NetFault | PartitionFault


class KeptFaults(msgspec.Struct):
    table: str = ""  # the project's nftables table (bridge family) of the partitions
    faults: list[Fault] = msgspec.field(default_factory=list)

    def drops(self) -> list[tuple[str, str]]:
        """Every (from TAP, to TAP) pair the partitions drop, once each, in order."""
        seen: dict[tuple[str, str], None] = {}
        for fault in self.faults:
            if isinstance(fault, PartitionFault):
                seen.update(dict.fromkeys(fault.drops))
        return list(seen)


def faults_file(state_dir: Path) -> Path:
    return state_dir / FAULTS_FILE


def read_faults(state_dir: Path) -> KeptFaults:
    """What is kept (nothing, when there is no file or it cannot be read)."""
    return read_struct(faults_file(state_dir), KeptFaults) or KeptFaults()


_IN_PROCESS: RunVar[trio.Lock] = RunVar("qemu_compose_faults_lock")


@contextlib.asynccontextmanager
async def changing_faults(state_dir: Path) -> AsyncIterator[KeptFaults]:
    """The kept faults, to change in place: written back whole on leaving (if changed), the
    lock held meanwhile (also across what the block awaits: the drops in force follow the
    record). An exception leaves the file as it was."""
    try:
        in_process = _IN_PROCESS.get()
    except LookupError:
        in_process = trio.Lock()
        _IN_PROCESS.set(in_process)
    # the flock serialises processes; the lock, a process's tasks (without it they would
    # queue on the flock, each in a worker thread of its own)
    async with in_process, _flocked(state_dir / FAULTS_LOCK):
        kept = read_faults(state_dir)
        before = msgspec.json.encode(kept)
        yield kept
        after = msgspec.json.encode(kept)
        if after != before:
            atomic_write(faults_file(state_dir), after)


@contextlib.asynccontextmanager
async def _flocked(path: Path) -> AsyncIterator[None]:
    lock = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        await trio.to_thread.run_sync(fcntl.flock, lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def qemu_pid(pidfile: Path) -> int | None:
    """The PID of the QEMU that wrote ``pidfile``, if that process still lives."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def qemu_of(fault: Fault, vm: str) -> int | None:
    """The PID of ``vm``'s QEMU when ``fault`` was made (None: it does not involve ``vm``)."""
    if isinstance(fault, PartitionFault):
        return fault.qemu_pids.get(vm)
    return fault.qemu_pid if fault.vm == vm else None


def set_link_args(nic: str, *, up: bool) -> dict[str, Any]:
    return {"name": nic, "up": up}


def throttle_args(drive: str, *, iops: int, bps: int) -> dict[str, Any]:
    """block_set_io_throttle's arguments: totals only (0: no limit; all 0: unthrottled). The
    disk is the virtio-blk device inside the PCI device of that id (which has no disk)."""
    return {"id": f"{drive}/virtio-backend", "bps": bps, "bps_rd": 0, "bps_wr": 0,
            "iops": iops, "iops_rd": 0, "iops_wr": 0}  # fmt: skip


def undo_commands(fault: Fault) -> list[tuple[str, dict[str, Any]]]:
    """The QMP commands that take ``fault`` out of its QEMU (none: it is not in QEMU)."""
    if isinstance(fault, LinkFault):
        return [("set_link", set_link_args(fault.nic, up=True))]
    if isinstance(fault, DiskFault):
        return [("block_set_io_throttle", throttle_args(fault.drive, iops=0, bps=0))]
    if isinstance(fault, DiskErrorFault):  # the file back under the disk, then no blkdebug
        return [("blockdev-reopen", fault.reopen(fault.file)),
                ("blockdev-del", {"node-name": fault.node})]  # fmt: skip
    if isinstance(fault, NetFault):  # the filter first: frames flow past it again
        name, out, into = fault.ids
        return [("object-del", {"id": name}), ("chardev-remove", {"id": out}),
                ("chardev-remove", {"id": into})]  # fmt: skip
    return []


# what QEMU answers a command that undoes what is not there (undone already, or never made)
_GONE = ("not found", "Failed to find", "does not exist")


def already_undone(error: str) -> bool:
    """Whether a QMP error from an undoing command says there was nothing left to undo."""
    return any(gone in error for gone in _GONE)


def in_force(fault: Fault, pid_of: Callable[[str], int | None]) -> bool:
    """Whether ``fault`` still holds: one in QEMU only while its QEMU runs."""
    if isinstance(fault, PartitionFault):
        return True
    return pid_of(fault.vm) == fault.qemu_pid


def forget_ended(kept: KeptFaults, pid_of: Callable[[str], int | None]) -> list[Fault]:
    """Drop the faults whose QEMU has ended (they ended with it); returns them."""
    ended = [f for f in kept.faults if not in_force(f, pid_of)]
    kept.faults = [f for f in kept.faults if f not in ended]
    return ended


def without_vms(kept: KeptFaults, vms: Iterable[str]) -> list[Fault]:
    """Take ``vms`` out of every fault (theirs end; partitions shrink or end); returns the
    faults that changed, as they were."""
    names = set(vms)
    changed: list[Fault] = []
    left: list[Fault] = []
    for fault in kept.faults:
        if not any(fault.involves(vm) for vm in names):
            left.append(fault)
            continue
        changed.append(fault)
        if isinstance(fault, PartitionFault):
            shrunk: PartitionFault | None = fault
            for vm in names:
                shrunk = shrunk.without(vm) if shrunk is not None else None
            if shrunk is not None:
                left.append(shrunk)
    kept.faults = left
    return changed
