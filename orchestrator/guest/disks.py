"""Disks of a VM: the overlay on its base image, named volumes, and their checks.

All through qemu-img and mkfs.ext4 with argument lists; no root, no qemu-nbd, no loop
mounts. A named volume is made as an ext4 filesystem in a raw file, then converted to
qcow2; existing volumes are never touched here, let alone deleted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from orchestrator.config.quantities import format_size
from orchestrator.errors import QemuComposeError
from orchestrator.state.files import free_space, private_dir

EXT4_LABEL_MAX = 16


class DiskError(QemuComposeError):
    """qemu-img or mkfs failed, or a size does not fit."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    virtual_size: int
    backing_file: str | None = None


async def _run(argv: list[str], what: str, writes: Path | None = None) -> str:
    """Run a disk tool; its failure is a DiskError saying what it said (and, when it found
    the disk full, how much is free where it wrote)."""
    try:
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    except FileNotFoundError as err:
        raise DiskError(f"{what}: {argv[0]} is not installed") from err
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip()
        if writes is not None and ("No space left" in said or "Disk quota exceeded" in said):
            said += f" ({free_space(writes.parent)})"
        raise DiskError(f"{what}: {said}")
    return result.stdout.decode()


async def image_info(path: Path, *, in_use: bool = False) -> ImageInfo:
    """What qemu-img says of an image; ``in_use``: a running VM's disk, read without its lock
    (-U: the size and format, which QEMU does not change)."""
    shared = ["-U"] if in_use else []
    argv = ["qemu-img", "info", *shared, "--output=json", "--", str(path)]
    out = await _run(argv, f"reading {path}")
    data = json.loads(out)
    return ImageInfo(data["format"], int(data["virtual-size"]), data.get("backing-filename"))


async def create_overlay(base: Path, path: Path, size: int | None = None) -> ImageInfo:
    """A qcow2 at ``path`` backed by ``base`` (its format detected), grown to ``size``."""
    info = await image_info(base)
    if size is not None and size < info.virtual_size:
        image_size = format_size(info.virtual_size)
        raise DiskError(f"disk size {format_size(size)} is smaller than the image ({image_size})")
    tmp = path.with_name(f".{path.name}.tmp")
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", info.format, "-b", str(base), str(tmp)]
    if size is not None:
        argv.append(str(size))
    try:
        await _run(argv, f"creating {path}", writes=path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed create leaves no half a disk behind
    return await image_info(path)


async def copy_file(source: Path, path: Path) -> None:
    """A private copy of ``source`` (a qcow2 disk stays backed by what it is backed by; a
    guest's RAM in a memfd, by its /proc path) at ``path``, whole or not at all: holes and
    zeros are holes, and blocks are shared where the filesystem can (reflink)."""
    tmp = path.with_name(f".{path.name}.tmp")
    argv = ["cp", "--sparse=always", "--reflink=auto", "--", str(source), str(tmp)]
    try:
        await _run(argv, f"copying {source}", writes=path)
        os.chmod(tmp, 0o600)
        await trio.to_thread.run_sync(_fsync, tmp)  # whole on disk before it is used
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def check_growable(path: Path, size: int) -> ImageInfo:
    """A DiskError when the disk at ``path`` is larger than ``size``: a disk never shrinks.
    The VM may still run."""
    info = await image_info(path, in_use=True)
    if size < info.virtual_size:
        raise DiskError(
            f"disk: {format_size(size)} is smaller than {path} ({format_size(info.virtual_size)}):"
            " a disk is never shrunk; --force-recreate replaces it"
        )
    return info


async def grow_disk(path: Path, size: int) -> None:
    """A VM's disk grown to ``size`` in place (it is stopped); one as large is left as it is,
    one larger is an error (`check_growable`)."""
    info = await check_growable(path, size)
    if size > info.virtual_size:
        await _run(
            ["qemu-img", "resize", "-q", "--", str(path), str(size)], f"growing {path}", path
        )


async def create_volume(path: Path, size: int, label: str) -> None:
    """A new qcow2 volume holding an empty ext4 filesystem; refuses to replace one."""
    if path.exists():
        raise DiskError(f"{path} exists already: volumes are never recreated")
    private_dir(path.parent)
    raw = path.with_name(f".{path.name}.raw")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with raw.open("wb") as fh:
            fh.truncate(size)
        await _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                label[:EXT4_LABEL_MAX],
                "-E",
                "root_owner=0:0",
                str(raw),
            ],
            f"formatting {path}",
            writes=path,
        )
        await _run(
            ["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(tmp)],
            f"converting {path}",
            writes=path,
        )
        os.replace(tmp, path)
    finally:
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


async def internal_snapshots(path: Path) -> list[str]:
    """The tags of the internal snapshots in a qcow2 image (read without its lock: a running
    VM's disk too)."""
    argv = ["qemu-img", "info", "-U", "--output=json", "--", str(path)]
    data = json.loads(await _run(argv, f"reading {path}"))
    return [str(s["name"]) for s in data.get("snapshots", [])]


async def snapshot_offline(path: Path, op: str, tag: str) -> None:
    """``op`` (create, apply, delete) the internal snapshot ``tag`` of an image no QEMU has
    open (qemu-img takes the image's lock: a running VM's disk is refused, never harmed)."""
    flag = {"create": "-c", "apply": "-a", "delete": "-d"}[op]
    await _run(["qemu-img", "snapshot", flag, tag, "--", str(path)], f"{op} {tag} of {path}", path)
