"""Disks with the real qemu-img and mkfs.ext4; images from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.guest.disks import (
    DiskError,
    create_overlay,
    create_volume,
    grow_disk,
    image_info,
)
from orchestrator.guest.images import ImageError, cache_name, fetch
from orchestrator.guest.secrets import ensure_console_password, ensure_project_key
from orchestrator.progress import Event, Reporter, Transfer
from tests.support.http import Files

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None, reason="qemu-img is not installed"
)


async def test_overlay_on_a_raw_base_grows_to_its_size(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    base.write_bytes(b"\0" * (1 << 20))
    info = await create_overlay(base, tmp_path / "disk.qcow2", 64 << 20)
    assert (info.format, info.virtual_size, info.backing_file) == ("qcow2", 64 << 20, str(base))
    again = await create_overlay(tmp_path / "disk.qcow2", tmp_path / "layer2.qcow2")
    assert again.virtual_size == 64 << 20
    with pytest.raises(DiskError, match="smaller than the image"):
        await create_overlay(base, tmp_path / "small.qcow2", 4096)
    assert not (tmp_path / "small.qcow2").exists()


async def test_a_volume_is_an_ext4_filesystem_and_never_recreated(tmp_path: Path) -> None:
    path = tmp_path / "volumes" / "data" / "disk.qcow2"
    await create_volume(path, 32 << 20, "data")
    assert (await image_info(path)).format == "qcow2"
    raw = tmp_path / "check.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(raw)], check=True)
    probe = subprocess.run(
        ["blkid", "-o", "export", str(raw)], capture_output=True, text=True, check=False
    )
    assert "TYPE=ext4" in probe.stdout
    assert "LABEL=data" in probe.stdout
    assert (await image_info(path)).virtual_size == 32 << 20
    before = path.stat().st_mtime_ns
    with pytest.raises(DiskError, match="never recreated"):
        await create_volume(path, 64 << 20, "data")
    assert path.stat().st_mtime_ns == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["disk.qcow2"]


async def test_qemu_img_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="reading"):
        await image_info(tmp_path / "missing.qcow2")


def test_project_key_and_console_password_are_private(tmp_path: Path) -> None:
    key = ensure_project_key(tmp_path / "ssh", "demo")
    assert key.public_line.startswith("ssh-ed25519 ")
    assert key.public_line.endswith(" qemu-compose@demo")
    assert (tmp_path / "ssh").stat().st_mode & 0o777 == 0o700
    assert key.private_key.stat().st_mode & 0o777 == 0o600
    assert key.private_key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert ensure_project_key(tmp_path / "ssh", "demo") == key  # made once
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key.private_key)],
        capture_output=True,
        text=True,
        check=False,
    )
    if derived.returncode == 0:  # ssh-keygen is there: the pair really belongs together
        assert derived.stdout.split()[:2] == key.public_line.split()[:2]
    password = ensure_console_password(tmp_path / "console-password")
    assert len(password.password) >= 16
    assert password.crypt_hash.startswith("$6$")
    assert (tmp_path / "console-password").stat().st_mode & 0o777 == 0o600
    assert ensure_console_password(tmp_path / "console-password") == password
    check = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", password.crypt_hash.split("$")[2], "-stdin"],
        input=password.password, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert check.stdout.strip() == password.crypt_hash


async def test_download_into_the_cache_with_checksum(
    server: tuple[str, type[Files]], tmp_path: Path
) -> None:
    base, files = server
    url = f"{base}/images/disk.qcow2"
    digest = hashlib.sha256(files.content).hexdigest()
    seen: list[Event] = []
    path = await fetch(
        url, checksum=f"sha256:{digest}", directory=tmp_path, report=Reporter(seen.append)
    )
    assert path == tmp_path / cache_name(url)
    assert path.read_bytes() == files.content
    transfers = [e for e in seen if isinstance(e, Transfer)]
    assert len(transfers) == len(seen) == 3  # a chunk each MiB
    assert {(e.source, e.stage, e.status) for e in transfers} == {(url, "image", "working")}
    assert [e.done for e in transfers] == [1 << 20, 2 << 20, 3 << 20]
    assert transfers[-1].total == len(files.content)
    assert not list(tmp_path.glob("*.part"))
    # cached: no second request
    assert await fetch(url, directory=tmp_path) == path
    assert len(files.ranges) == 1


def test_same_basename_different_urls_do_not_collide() -> None:
    assert cache_name("https://a.example/x/disk.img") != cache_name("https://b.example/y/disk.img")
    assert cache_name("https://a.example/x/disk.img").endswith("-disk.img")


async def test_an_interrupted_download_resumes(
    server: tuple[str, type[Files]], tmp_path: Path
) -> None:
    base, files = server
    url = f"{base}/disk.img"
    files.cut = 1 << 20
    with pytest.raises(ImageError, match="run again to resume"):
        await fetch(url, directory=tmp_path)
    part = tmp_path / (cache_name(url) + ".part")
    assert 0 < part.stat().st_size < len(files.content)
    files.cut = None
    path = await fetch(url, directory=tmp_path)
    assert path.read_bytes() == files.content
    assert files.ranges[-1] == f"bytes={1 << 20}-"


async def test_a_wrong_checksum_is_refused_and_not_kept(
    server: tuple[str, type[Files]], tmp_path: Path
) -> None:
    base, _ = server
    with pytest.raises(ImageError, match="the compose file says 00"):
        await fetch(f"{base}/disk.img", checksum="sha256:" + "00" * 32, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


async def test_local_images_are_used_in_place(tmp_path: Path) -> None:
    image = tmp_path / "local image.qcow2"
    image.write_bytes(b"qcow")
    assert await fetch(str(image)) == image
    assert await fetch(f"file://{tmp_path}/local%20image.qcow2") == image
    with pytest.raises(ImageError, match="no image at"):
        await fetch(str(tmp_path / "missing.qcow2"))


async def test_http_errors(server: tuple[str, type[Files]], tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="download interrupted"):
        await fetch("http://127.0.0.1:1/nothing.img", directory=tmp_path)


async def test_a_disk_grows_in_place_and_never_shrinks(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * (1 << 20))
    disk = tmp_path / "disk.qcow2"
    await create_overlay(base, disk, 2 << 20)
    inode = disk.stat().st_ino
    await grow_disk(disk, 4 << 20)
    assert (await image_info(disk)).virtual_size == 4 << 20
    assert disk.stat().st_ino == inode  # the same file, grown
    await grow_disk(disk, 4 << 20)  # as large: left as it is
    with pytest.raises(DiskError, match="never shrunk"):
        await grow_disk(disk, 2 << 20)
    assert (await image_info(disk)).virtual_size == 4 << 20
