"""A VM's mounts, from the compose model to QEMU devices and cloud-init entries. Pure.

Named volumes become virtio disks (serial from the volume's name) mounted by their
/dev/disk/by-id path; bind mounts become 9p shares (tags mount0, mount1, ... in the order
written) mounted with their options unless ``automount: false``. ``check_bind_sources`` is
the one check that needs the file system: a share must exist before QEMU starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.model import VolumeMount
from orchestrator.errors import QemuComposeError

from .cloudinit import Mount, share_mount, volume_mount
from .qemu_argv import Drive, Share, volume_serial


class MountError(QemuComposeError):
    """A bind mount's source is missing."""


@dataclass(frozen=True, slots=True)
class MountLayout:
    drives: tuple[Drive, ...]  # named volumes, after root and seed
    shares: tuple[Share, ...]
    mounts: tuple[Mount, ...]  # what cloud-init mounts, in the order written


def volume_node(name: str) -> str:
    return f"vol-{volume_serial(name)}"


def mount_layout(mounts: Sequence[VolumeMount], volume_paths: Mapping[str, Path]) -> MountLayout:
    """Devices and cloud-init mounts for a VM's ``volumes:`` (validated model entries)."""
    drives: list[Drive] = []
    shares: list[Share] = []
    guest: list[Mount] = []
    for mount in mounts:
        if mount.type == "volume":
            serial = volume_serial(mount.source)
            drives.append(
                Drive(
                    volume_node(mount.source),
                    str(volume_paths[mount.source]),
                    "qcow2",
                    serial,
                    read_only=mount.read_only,
                )
            )
            guest.append(volume_mount(serial, mount.target, read_only=mount.read_only))
        else:
            tag = f"mount{len(shares)}"
            shares.append(Share(tag, mount.source, read_only=mount.read_only))
            if mount.automount:
                guest.append(
                    share_mount(
                        tag,
                        mount.target,
                        read_only=mount.read_only,
                        extra_options=mount.mount_options,
                    )
                )
    return MountLayout(tuple(drives), tuple(shares), tuple(guest))


def check_bind_sources(vm: str, mounts: Sequence[VolumeMount]) -> None:
    for mount in mounts:
        if mount.type == "bind" and not Path(mount.source).exists():
            raise MountError(
                f"VM {vm!r}: the bind mount source {mount.source} does not exist "
                f"(for {mount.target}); create it, or fix the path"
            )
