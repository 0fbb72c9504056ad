"""From a VM's volumes: to QEMU devices and cloud-init mounts."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.model import VolumeMount
from orchestrator.guest.cloudinit import Mount
from orchestrator.guest.mounts import MountError, check_bind_sources, mount_layout
from orchestrator.guest.qemu_argv import Drive, Share


def test_layout_of_named_volumes_and_bind_mounts() -> None:
    mounts = [
        VolumeMount(type="volume", source="postgres_data", target="/var/lib/postgresql/data"),
        VolumeMount(type="bind", source="/p/config", target="/etc/myapp"),
        VolumeMount(
            type="bind", source="/p/nginx.conf", target="/etc/nginx/nginx.conf", read_only=True
        ),
        VolumeMount(type="bind", source="/p/scripts", target="/opt/scripts", automount=False),
        VolumeMount(
            type="bind", source="/p/cache", target="/var/cache/app", mount_options="cache=loose"
        ),
        VolumeMount(type="volume", source="app_data", target="/mnt/shared", read_only=True),
    ]
    layout = mount_layout(
        mounts, {"postgres_data": Path("/v/pg.qcow2"), "app_data": Path("/v/app.qcow2")}
    )
    assert layout.drives == (
        Drive("vol-postgres_data", "/v/pg.qcow2", "qcow2", "postgres_data"),
        Drive("vol-app_data", "/v/app.qcow2", "qcow2", "app_data", read_only=True),
    )
    assert layout.shares == (
        Share("mount0", "/p/config"),
        Share("mount1", "/p/nginx.conf", read_only=True),
        Share("mount2", "/p/scripts"),
        Share("mount3", "/p/cache"),
    )
    nine_p = "trans=virtio,version=9p2000.L,msize=262144,nofail"
    assert layout.mounts == (
        Mount(
            "/dev/disk/by-id/virtio-postgres_data",
            "/var/lib/postgresql/data",
            "ext4",
            "defaults,nofail",
        ),
        Mount("mount0", "/etc/myapp", "9p", nine_p),
        Mount("mount1", "/etc/nginx/nginx.conf", "9p", nine_p + ",ro"),
        Mount("mount3", "/var/cache/app", "9p", nine_p + ",cache=loose"),
        Mount("/dev/disk/by-id/virtio-app_data", "/mnt/shared", "ext4", "defaults,nofail,ro"),
    )


def test_bind_sources_must_exist(tmp_path: Path) -> None:
    here = VolumeMount(type="bind", source=str(tmp_path), target="/x")
    gone = VolumeMount(type="bind", source=str(tmp_path / "gone"), target="/y")
    check_bind_sources("web", [here, VolumeMount(type="volume", source="data", target="/d")])
    with pytest.raises(
        MountError, match=f"VM 'web': the bind mount source {tmp_path}/gone does not exist"
    ):
        check_bind_sources("web", [here, gone])
