"""The QEMU command line of a VM, from decided facts. Pure; golden-tested.

Everything user-supplied is either a value of our own validated model, passed as a separate
argv element (kernel, initrd, cmdline, pidfile), escaped for QEMU's option syntax (commas
doubled: paths in -chardev and -fsdev), or sent as JSON (-blockdev). Disks are explicit
virtio-blk devices with serials, in a fixed order: root, seed, then volumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from netcfg import Forward, user_netdev
from qmp import check_socket_path, monitor_args, qemu_option_value

from .accel import Accel

VIRTIO_SERIAL_MAX = 20


@dataclass(frozen=True, slots=True)
class Drive:
    node: str  # the block node name, also the device id
    path: str
    format: str  # qcow2 or raw
    serial: str  # the guest sees /dev/disk/by-id/virtio-<serial>
    read_only: bool = False
    bootindex: int | None = None

    def __post_init__(self) -> None:
        if len(self.serial) > VIRTIO_SERIAL_MAX:
            raise ValueError(f"virtio-blk serials have at most 20 characters: {self.serial!r}")


@dataclass(frozen=True, slots=True)
class Share:
    """A host directory over virtio-9p."""

    tag: str  # the guest mounts it by this tag
    path: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class UserNic:
    netdev: str
    mac: str
    forwards: tuple[Forward, ...] = ()


@dataclass(frozen=True, slots=True)
class TapNic:
    netdev: str
    mac: str
    ifname: str
    helper: str | None = None  # rootless: QEMU gets the TAP from this helper (netcfg.taphelper)


@dataclass(frozen=True, slots=True)
class DirectBoot:
    kernel: str
    initrd: str | None = None
    cmdline: str = ""


@dataclass(frozen=True, slots=True)
class SharedRam:
    """The guest's RAM in a memfd that QEMU shares (a warm template's source: once it stands
    still, its memory is copied out of that memfd as the template's RAM file)."""


@dataclass(frozen=True, slots=True)
class RamFile:
    """The guest's RAM, a private mapping of a file (a warm clone: its template's RAM; the
    clones share the file's pages in the page cache, each page copied when one writes it;
    the file is never written)."""

    path: str


# The RAM block's name in the migration stream (q35 and pc): a backend of another name would
# not load a state saved with QEMU's own RAM
RAM_ID = "pc.ram"


def ram_args(ram: SharedRam | RamFile, memory_mib: int) -> list[str]:
    if isinstance(ram, SharedRam):
        backend = f"memory-backend-memfd,id={RAM_ID},size={memory_mib}M,share=on"
    else:
        path = qemu_option_value(ram.path)
        backend = f"memory-backend-file,id={RAM_ID},size={memory_mib}M,mem-path={path},share=off"
    return ["-object", backend, "-machine", f"memory-backend={RAM_ID}"]


def has_pc_ram(machine: str) -> bool:
    """Whether the machine's RAM block is `RAM_ID` (and can be given a backend of that name)."""
    return machine.split(",", maxsplit=1)[0].startswith(("q35", "pc"))


@dataclass(frozen=True, slots=True)
class Uefi:
    """OVMF on the machine's two flash chips: its code, read-only, and the VM's variables."""

    code: str
    variables: str


@dataclass(frozen=True, slots=True)
class VmLaunch:
    name: str
    accel: Accel
    cpus: int
    memory_mib: int
    machine: str
    console_socket: str
    console_log: str
    qmp_supervision: str
    qmp_control: str
    pidfile: str
    drives: tuple[Drive, ...] = ()
    shares: tuple[Share, ...] = ()
    nics: tuple[UserNic | TapNic, ...] = ()
    boot: DirectBoot | None = None
    qemu: str = "qemu-system-x86_64"
    # The supervisor restarts the guest in place (system_reset): QEMU stays after a poweroff
    # or a panic, paused, for it to decide. Otherwise a panic ends QEMU with a failure.
    restart_in_place: bool = False
    # Its memory and devices come from a saved state (a snapshot, a suspended VM): QEMU waits
    # for it (-incoming defer), and the guest does not boot.
    incoming: bool = False
    # A VM generation ID (ACPI): a guest started from a saved state shared with others (a
    # warm clone) learns that it is a copy, and its kernel reseeds its random numbers
    generation_id: bool = False
    ram: SharedRam | RamFile | None = None  # None: QEMU's own (anonymous memory)
    uefi: Uefi | None = None  # None: the machine's own firmware (SeaBIOS on q35 and pc)
    extra: tuple[str, ...] = field(default=())


def _blockdev(drive: Drive) -> str:
    node = {
        "driver": drive.format,
        "node-name": drive.node,
        "read-only": drive.read_only,
        "file": {"driver": "file", "filename": drive.path},
    }
    return json.dumps(node, separators=(",", ":"))


def qemu_argv(vm: VmLaunch) -> list[str]:
    check_socket_path(vm.console_socket)
    argv = [
        vm.qemu,
        "-name", f"{qemu_option_value(vm.name)},debug-threads=on",
        "-machine", vm.machine,
        *vm.accel.args(),
        "-smp", str(vm.cpus),
        "-m", str(vm.memory_mib),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-chardev",
        f"socket,id=console,path={qemu_option_value(vm.console_socket)},server=on,wait=off,"
        f"logfile={qemu_option_value(vm.console_log)},logappend=on",
        "-serial", "chardev:console",
        *monitor_args(vm.qmp_supervision, vm.qmp_control),
        "-pidfile", vm.pidfile,
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
    ]  # fmt: skip
    if vm.ram is not None and has_pc_ram(vm.machine):
        argv += ram_args(vm.ram, vm.memory_mib)
    if vm.uefi is not None:
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_option_value(vm.uefi.code)}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={qemu_option_value(vm.uefi.variables)}",
        ]
    if vm.machine.startswith(("q35", "pc")):
        argv += ["-device", "pvpanic"]  # the guest reports a kernel panic: GUEST_PANICKED
        if vm.generation_id:
            argv += ["-device", "vmgenid,guid=auto"]  # a new one in each QEMU
    if vm.restart_in_place:
        argv += ["-no-shutdown", "-action", "panic=pause"]
    else:
        argv += ["-action", "panic=exit-failure"]
    if vm.boot is not None:
        argv += ["-kernel", vm.boot.kernel]
        if vm.boot.initrd:
            argv += ["-initrd", vm.boot.initrd]
        if vm.boot.cmdline:
            argv += ["-append", vm.boot.cmdline]
    for drive in vm.drives:
        device = f"virtio-blk-pci,drive={drive.node},id={drive.node},serial={drive.serial}"
        if drive.bootindex is not None and vm.boot is None:  # -kernel takes bootindex 0
            device += f",bootindex={drive.bootindex}"
        argv += ["-blockdev", _blockdev(drive), "-device", device]
    for i, share in enumerate(vm.shares):
        fsdev = f"local,id=fs{i},path={qemu_option_value(share.path)},security_model=passthrough"
        if share.read_only:
            fsdev += ",readonly=on"
        argv += ["-fsdev", fsdev, "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={share.tag}"]
    for nic in vm.nics:
        if isinstance(nic, UserNic):
            argv += ["-netdev", user_netdev(nic.netdev, nic.forwards)]
        elif nic.helper is not None:
            helper = qemu_option_value(nic.helper)
            argv += ["-netdev", f"bridge,id={nic.netdev},br={nic.ifname},helper={helper}"]
        else:
            argv += [
                "-netdev",
                f"tap,id={nic.netdev},ifname={nic.ifname},script=no,downscript=no,vhost=off",
            ]
        # romfile=: no iPXE option ROM. qemu-compose never boots from the network, and a VM
        # without a disk would otherwise spend its first seconds of CPU in PXE (a lot, on TCG)
        argv += ["-device", f"virtio-net-pci,netdev={nic.netdev},mac={nic.mac},romfile="]
    if vm.incoming:
        argv += ["-incoming", "defer"]
    return argv + list(vm.extra)


def volume_serial(name: str) -> str:
    """A virtio serial for a named volume: the name itself when it fits, else a hash of it."""
    if len(name) <= VIRTIO_SERIAL_MAX:
        return name
    return "vol-" + hashlib.sha256(name.encode()).hexdigest()[: VIRTIO_SERIAL_MAX - 4]


def drives_in_order(
    root: Drive | None, seed: Drive | None, volumes: Sequence[Drive]
) -> tuple[Drive, ...]:
    return tuple(d for d in (root, seed) if d is not None) + tuple(volumes)
