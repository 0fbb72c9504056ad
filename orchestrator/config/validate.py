"""Checks that span fields: references, cycles, subnets, addresses, ports, replicas. Pure.

Each problem is reported under the path of the field that is wrong, so it gets a line number.
"""

from __future__ import annotations

import ipaddress
import posixpath
from pathlib import Path
from typing import Protocol

from .graph import find_cycle
from .model import ComposeFile, Healthcheck, Vm
from .quantities import parse_duration, parse_size
from .topology import replica_names
from .yamlsource import PathKey


class Report(Protocol):
    def __call__(self, path: PathKey, message: str, key: bool = False) -> None: ...


MIN_VOLUME_BYTES = 1024 * 1024  # mkfs.ext4 needs some room
# qemu-compose-<project>-supervisor.service, and the entries of .qemu-compose/ beside the VMs'
RESERVED_VM_NAMES = frozenset(
    {"supervisor", "ssh", "events", "volumes", "networks", "lock", "console-password",
     "sockets-dir", "snapshots", "templates"}
)  # fmt: skip


def validate(compose: ComposeFile, state_dir: Path, report: Report) -> None:
    _names(compose, report)
    _dependencies(compose, report)
    subnets = _networks(compose, report)
    _volumes(compose, report)
    published: dict[tuple[str, str, int], PathKey] = {}
    for name, vm in compose.vms.items():
        path: PathKey = ("vms", name)
        _vm(name, vm, path, compose, subnets, state_dir, published, report)


def _names(compose: ComposeFile, report: Report) -> None:
    seen: dict[str, str] = {}
    for name in compose.vms:
        if name in RESERVED_VM_NAMES:
            what = "unit" if name == "supervisor" else "files (.qemu-compose/" + name + ")"
            report(("vms", name), f"{name!r} is reserved for qemu-compose's own {what}", key=True)
    for name, vm in compose.vms.items():
        for instance in replica_names(name, vm):
            if len(instance) > 63:
                report(("vms", name), f"the VM name {instance!r} is longer than 63", key=True)
            if instance in seen and seen[instance] != name:
                report(
                    ("vms", name),
                    f"the VM name {instance!r} is also the name of a replica of {seen[instance]!r}",
                    key=True,
                )
            seen.setdefault(instance, name)


def _dependencies(compose: ComposeFile, report: Report) -> None:
    edges: dict[str, list[str]] = {}
    for name, vm in compose.vms.items():
        edges[name] = []
        for dep in vm.depends_on:
            path: PathKey = ("vms", name, "depends_on", dep)
            if dep == name:
                report(path, f"{name!r} cannot depend on itself", key=True)
            elif dep not in compose.vms:
                report(path, f"depends on {dep!r}, which is not a VM of this file", key=True)
            else:
                edges[name].append(dep)
    cycle = find_cycle(edges)
    if cycle:
        report(
            ("vms", cycle[0], "depends_on", cycle[1]),
            "dependency cycle: " + " -> ".join(cycle),
            key=True,
        )


def _networks(compose: ComposeFile, report: Report) -> dict[str, ipaddress.IPv4Network]:
    subnets: dict[str, ipaddress.IPv4Network] = {}
    for name, net in compose.networks.items():
        path: PathKey = ("networks", name, "subnet")
        if net.subnet == "auto":
            continue
        try:
            subnet = ipaddress.IPv4Network(net.subnet, strict=True)
        except ValueError as err:
            report(path, f"invalid subnet {net.subnet!r}: {err}")
            continue
        if subnet.prefixlen > 29:
            report(path, f"the subnet {subnet} is too small: use a prefix of /29 or shorter")
            continue
        for other, taken in subnets.items():
            if subnet.overlaps(taken):
                report(path, f"the subnet {subnet} overlaps {taken} of network {other!r}")
        subnets[name] = subnet
    return subnets


def _volumes(compose: ComposeFile, report: Report) -> None:
    for name, volume in compose.volumes.items():
        if parse_size(volume.size) < MIN_VOLUME_BYTES:
            report(("volumes", name, "size"), "a volume needs at least 1M")


def _vm(
    name: str,
    vm: Vm,
    path: PathKey,
    compose: ComposeFile,
    subnets: dict[str, ipaddress.IPv4Network],
    state_dir: Path,
    published: dict[tuple[str, str, int], PathKey],
    report: Report,
) -> None:
    if vm.image is not None and "://" in vm.image.source:
        scheme = vm.image.source.split("://", 1)[0]
        if scheme not in ("http", "https", "file"):
            report(
                (*path, "image", "source"),
                f"unsupported URL scheme {scheme!r}: use https, http, file or a path",
            )
    if vm.disk.size is not None and parse_size(vm.disk.size) < MIN_VOLUME_BYTES:
        report((*path, "disk", "size"), "a disk needs at least 1M")
    if vm.replicas > 1 and vm.hostname:
        report((*path, "hostname"), "cannot be set with replicas > 1: each replica is named <vm>-N")
    if vm.warm:
        _warm(vm, path, report)
    if vm.firmware == "uefi" and not vm.machine.startswith(("q35", "pc")):
        report((*path, "firmware"), "uefi needs a q35 or pc machine (OVMF's flash chips)")
    _vm_networks(vm, path, compose, subnets, report)
    _vm_mounts(vm, path, compose, state_dir, report)
    _vm_ports(vm, path, published, report)
    for i, step in enumerate(vm.provision):
        if (step.inline is None) == (step.script is None):
            report((*path, "provision", i), "give exactly one of inline: or script:")
    if vm.healthcheck is not None and not vm.healthcheck.disable:
        _healthcheck(vm.healthcheck, (*path, "healthcheck"), report)


def _warm(vm: Vm, path: PathKey, report: Report) -> None:
    """What a clone cannot be made of: a guest without an OS (its identity is set inside
    it), 9p shares (QEMU cannot save a guest while it has one mounted), and volumes it
    writes (every clone would have the template's view of what is on them)."""
    if not vm.has_os:
        report((*path, "warm"), "needs an image or boot: a clone gets its identity in its guest")
    for i, mount in enumerate(vm.volumes):
        if mount.type == "bind":
            report(
                (*path, "volumes", i),
                "a warm VM cannot have bind mounts (QEMU cannot save a guest that has a 9p"
                " share mounted)",
            )
        elif not mount.read_only:
            report(
                (*path, "volumes", i),
                "a warm VM's named volumes must be read_only (each clone would start with the"
                " template's view of a volume it writes)",
            )


def _vm_networks(
    vm: Vm,
    path: PathKey,
    compose: ComposeFile,
    subnets: dict[str, ipaddress.IPv4Network],
    report: Report,
) -> None:
    for net_name, attachment in vm.networks.items():
        npath: PathKey = (*path, "networks", net_name)
        if net_name not in compose.networks:
            report(
                npath,
                f"network {net_name!r} is not defined under the top-level networks:",
                key=True,
            )
            continue
        if vm.replicas > 1 and (attachment.ipv4_address or attachment.mac_address):
            report(npath, "fixed addresses cannot be shared by replicas")
        if attachment.mac_address and int(attachment.mac_address[:2], 16) & 1:
            report((*npath, "mac_address"), "a multicast MAC address cannot be a NIC's")
        if attachment.ipv4_address:
            _address(
                attachment.ipv4_address, subnets.get(net_name), (*npath, "ipv4_address"), report
            )


def _vm_mounts(
    vm: Vm, path: PathKey, compose: ComposeFile, state_dir: Path, report: Report
) -> None:
    targets: set[str] = set()
    for i, mount in enumerate(vm.volumes):
        mpath: PathKey = (*path, "volumes", i)
        target = mount.target
        if posixpath.normpath(target) != target or target.startswith("//"):
            report(
                (*mpath, "target"),
                f"{target!r} is not a normalised path (no '..', '.', '//' or trailing '/')",
            )
        elif target == "/":
            report((*mpath, "target"), "cannot mount over the guest's root directory")
        elif any(c.isspace() for c in target):  # fstab (cloud-init's mounts:) splits on it
            report((*mpath, "target"), f"{target!r} cannot contain white space")
        if target in targets:
            report((*mpath, "target"), f"{target!r} is already a mount target of this VM")
        targets.add(target)
        if mount.type == "volume":
            if mount.source not in compose.volumes:
                report(
                    (*mpath, "source"),
                    f"volume {mount.source!r} is not defined under the top-level volumes:",
                )
            if not mount.automount:
                report((*mpath, "automount"), "named volumes are always mounted")
            if mount.mount_options:
                report((*mpath, "mount_options"), "only bind mounts take mount options")
        else:
            source = Path(mount.source)
            if source == state_dir or state_dir in source.parents:
                report(
                    (*mpath, "source"),
                    f"cannot share qemu-compose's own state directory {state_dir}",
                )


def _vm_ports(
    vm: Vm, path: PathKey, published: dict[tuple[str, str, int], PathKey], report: Report
) -> None:
    many = vm.replicas > 1
    for i, port in enumerate(vm.ports):
        ppath: PathKey = (*path, "ports", i)
        try:
            ipaddress.IPv4Address(port.host_ip)
        except ValueError:
            report((*ppath, "host_ip"), f"invalid IPv4 address {port.host_ip!r}")
        offered = port.host_range
        if offered is not None:  # its first free port, at `up`: no claim here
            if not offered:
                report((*ppath, "published"), f"the range {port.published} descends")
            elif offered[0] < 1 or offered[-1] > 65535:
                report((*ppath, "published"), f"ports are 1-65535, got {port.published}")
            elif len(offered) < vm.replicas:
                report(
                    ppath,
                    f"the host ports {port.published} are too few for {vm.replicas} replicas",
                )
        elif isinstance(port.published, int):
            if many:
                report(
                    ppath,
                    f"host port {port.published} cannot be published by {vm.replicas} replicas",
                )
            _claim(published, (port.host_ip, port.protocol, port.published), ppath, report)
    if vm.ssh.port is not None:
        if many:
            report((*path, "ssh", "port"), "a fixed SSH port cannot be shared by replicas")
        _claim(published, ("127.0.0.1", "tcp", vm.ssh.port), (*path, "ssh", "port"), report)


def _healthcheck(health: Healthcheck, hpath: PathKey, report: Report) -> None:
    if not health.test:
        report((*hpath, "test"), "a test is required unless disable: true")
    elif health.test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        report((*hpath, "test"), "must start with CMD, CMD-SHELL or NONE, or be a string")
    elif health.test[0] != "NONE" and len(health.test) < 2:
        report((*hpath, "test"), f"{health.test[0]} needs a command after it")
    elif health.test[0] == "CMD-SHELL" and len(health.test) != 2:
        report((*hpath, "test"), "CMD-SHELL takes one command string")
    for key in ("interval", "timeout", "start_interval"):
        if parse_duration(getattr(health, key)) <= 0:
            report((*hpath, key), "must be longer than 0s")


def _address(
    text: str, subnet: ipaddress.IPv4Network | None, path: PathKey, report: Report
) -> None:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        report(path, f"invalid IPv4 address {text!r}")
        return
    if subnet is None:
        report(path, "a fixed address needs the network's subnet to be set (not auto)")
        return
    if address not in subnet:
        report(path, f"{address} is not in the network's subnet {subnet}")
    elif address in (subnet.network_address, subnet.broadcast_address, subnet.network_address + 1):
        report(path, f"{address} is reserved (network, gateway or broadcast address)")


def _claim(
    table: dict[tuple[str, str, int], PathKey],
    key: tuple[str, str, int],
    path: PathKey,
    report: Report,
) -> None:
    for (ip, proto, port), owner in table.items():
        same_ip = ip == key[0] or "0.0.0.0" in (ip, key[0])  # noqa: S104 (a comparison)
        if proto == key[1] and port == key[2] and same_ip:
            where = ".".join(str(p) for p in owner[:2])
            report(path, f"host port {port}/{proto} is already used by {where}")
            return
    table[key] = path
