"""Base images: the global cache, downloads that resume and verify, local images in place.

The cache is ``$XDG_DATA_HOME/qemu-compose/images`` (default ``~/.local/share/...``). A URL is
cached as ``<first 16 hex of sha256(url)>-<basename>``, so two URLs ending in the same file
name never collide. A download goes to ``<name>.part`` and resumes from there (HTTP Range);
it is checked against Content-Length and the optional checksum, and renamed into place only
when whole. file:// URLs and paths are used where they are (never copied).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import struct
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import msgspec
import trio

from orchestrator.errors import QemuComposeError
from orchestrator.progress import Reporter, Status
from orchestrator.state.files import NO_SPACE, atomic_write, no_space

if TYPE_CHECKING:
    import httpx

CHUNK = 1 << 20


class ImageError(QemuComposeError):
    """An image cannot be found, fetched or verified."""


def cache_dir() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "qemu-compose" / "images"


def cache_name(url: str) -> str:
    basename = Path(unquote(urlparse(url).path)).name or "image"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{basename}"


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def local_path(source: str) -> Path:
    """The file a file:// URL or a path names."""
    if source.startswith("file://"):
        return Path(unquote(urlparse(source).path))
    return Path(source)


def image_path(source: str, directory: Path | None = None) -> Path:
    """The file an image is: its place in the cache for a URL, else the file it names."""
    if is_remote(source):
        return (directory or cache_dir()) / cache_name(source)
    return local_path(source)


class Checksum(msgspec.Struct, frozen=True):
    algorithm: str  # sha256 or sha512
    digest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        algorithm, _, digest = text.partition(":")
        if algorithm not in ("sha256", "sha512") or not digest:
            raise ImageError(f"unsupported checksum {text!r}: use sha256:<hex> or sha512:<hex>")
        return cls(algorithm, digest.lower())


def file_digest(path: Path, algorithm: str) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


async def verify(path: Path, checksum: Checksum | None) -> None:
    if checksum is None:
        return
    actual = await trio.to_thread.run_sync(file_digest, path, checksum.algorithm)
    if actual != checksum.digest:
        raise ImageError(
            f"{path.name}: {checksum.algorithm} is {actual}, "
            f"the compose file says {checksum.digest}"
        )


async def fetch(
    source: str,
    *,
    checksum: str | None = None,
    directory: Path | None = None,
    report: Reporter | None = None,
    force: bool = False,
    timeout: float = 60.0,
    client: httpx.AsyncClient | None = None,
) -> Path:
    """The local file of an image: downloaded into the cache if it is a URL.

    A download reports its progress to ``report`` (a Transfer event each chunk)."""
    expected = Checksum.parse(checksum) if checksum else None
    if not is_remote(source):
        path = local_path(source)
        if not path.is_file():
            raise ImageError(f"no image at {path}")
        await verify(path, expected)
        return path
    target = image_path(source, directory)
    if target.exists() and not force:
        await verify(target, expected)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if force:
        part.unlink(missing_ok=True)
    import httpx  # here: ~80 ms that commands without downloads need not pay

    own_client = client is None
    http = client or httpx.AsyncClient(timeout=timeout, follow_redirects=True)
    try:
        await _download(http, source, part, report or Reporter())
    finally:
        if own_client:
            await http.aclose()
    try:
        await verify(part, expected)
    except ImageError:
        part.unlink(missing_ok=True)  # a bad download is not worth resuming
        raise
    os.replace(part, target)
    record_use(target, source, fetched=True)
    return target


async def _download(http: httpx.AsyncClient, url: str, part: Path, report: Reporter) -> None:
    import httpx

    have = part.stat().st_size if part.exists() else 0
    done, total = have, None
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        async with http.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and have:  # we have it all already
                return
            if response.status_code not in (200, 206):
                raise ImageError(f"{url}: HTTP {response.status_code}")
            if response.status_code == 200:
                have = 0  # the server ignored Range: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            done = have
            with part.open("ab" if have else "wb") as fh:
                async for chunk in response.aiter_bytes(CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    report.transfer(url, Status.WORKING, done=done, total=total)
    except httpx.HTTPError as err:
        raise ImageError(f"{url}: download interrupted ({err}); run again to resume") from err
    except OSError as err:
        if err.errno in NO_SPACE:  # what came so far stays: the next run resumes from it
            raise ImageError(str(no_space(part, err))) from err
        raise
    if total is not None and done != total:
        raise ImageError(f"{url}: got {done} of {total} bytes; run again to resume")


# -- the cache's index: what each file is, where it came from, who uses it -------------------------


class ImageMeta(msgspec.Struct, kw_only=True):
    """``<image>.json`` beside each cached image."""

    source: str
    fetched_at: float = 0.0
    last_used: float = 0.0
    used_by: list[str] = []  # state directories of projects whose up used it


class ImageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `image ls`. An image without an index entry (cached by an older version) has
    unknown users: ``in_use_by`` then says so, and prune keeps it."""

    name: str
    path: str
    size: int  # bytes on disk
    format: str  # qcow2, raw, ...
    source: str | None  # the URL, when known
    fetched_at: float | None
    last_used: float | None
    in_use_by: list[str]  # VM disks that use it as their backing file

    @property
    def users_unknown(self) -> bool:
        """Cached by an older version, without an index entry: who uses it is not known."""
        return self.in_use_by == [UNKNOWN_USERS]


def _meta_path(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def read_meta(image: Path) -> ImageMeta | None:
    try:
        return msgspec.json.decode(_meta_path(image).read_bytes(), type=ImageMeta)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


@contextlib.contextmanager
def _index_locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_use(
    image: Path, source: str, *, state_dir: Path | None = None, fetched: bool = False
) -> None:
    """Note in the image's index entry that it was fetched and/or used (by a project)."""
    with _index_locked(image.parent):
        meta = read_meta(image) or ImageMeta(source=source)
        meta.source = source
        now = time.time()
        if fetched or not meta.fetched_at:
            meta.fetched_at = now
        if state_dir is not None:
            meta.last_used = now
            if str(state_dir) not in meta.used_by:
                meta.used_by.append(str(state_dir))
        atomic_write(_meta_path(image), msgspec.json.encode(meta), mode=0o644)


_MAGIC = [(b"QFI\xfb", "qcow2"), (b"KDMV", "vmdk"), (b"vhdxfile", "vhdx"), (b"conectix", "vpc")]


def image_format(path: Path) -> str:
    """The format by its first bytes (what qemu-img would probe), raw when none matches."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError:
        return "unknown"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), "raw")


def backing_file(disk: Path) -> str | None:
    """The backing file a qcow2 header names (None: not qcow2, or none)."""
    try:
        with disk.open("rb") as fh:
            header = fh.read(20)
            if len(header) < 20 or not header.startswith(b"QFI\xfb"):
                return None
            offset, size = struct.unpack(">QI", header[8:20])
            if not offset or not size or size > 4096:
                return None
            fh.seek(offset)
            return fh.read(size).decode(errors="replace")
    except OSError:
        return None


UNKNOWN_USERS = "unknown (no index entry): `image rm` it if nothing uses it"


def image_users(image: Path) -> list[str]:
    """The VM disks built on a cached image (or UNKNOWN_USERS without an index entry)."""
    return _users(image, read_meta(image))


def _users(image: Path, meta: ImageMeta | None) -> list[str]:
    """The VM disks, in the projects that used the image, that have it as their backing file."""
    if meta is None:
        return [UNKNOWN_USERS]
    found = []
    for state_dir in meta.used_by:
        for disk in sorted(Path(state_dir).glob("*/disk.qcow2")):
            backing = backing_file(disk)
            if backing and os.path.realpath(disk.parent / backing) == os.path.realpath(image):
                found.append(str(disk))
    return found


def list_images(directory: Path | None = None) -> list[ImageInfo]:
    directory = directory or cache_dir()
    rows = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(".") or entry.suffix in (".json", ".part"):
                continue
            if not entry.is_file():
                continue
            meta = read_meta(entry)
            rows.append(
                ImageInfo(
                    name=entry.name,
                    path=str(entry),
                    size=entry.stat().st_blocks * 512,
                    format=image_format(entry),
                    source=meta.source if meta else None,
                    fetched_at=meta.fetched_at if meta else None,
                    last_used=meta.last_used or None if meta else None,
                    in_use_by=_users(entry, meta),
                )
            )
    return rows


def find_image(key: str, directory: Path | None = None) -> ImageInfo:
    """A cached image by its name in the cache or its URL."""
    for info in list_images(directory):
        if key in (info.name, info.source):
            return info
    raise ImageError(f"no cached image {key!r} (see `qemu-compose image ls`)")


def remove_image(info: ImageInfo, *, force: bool = False) -> None:
    """Delete a cached image and its index entry; refused while a VM disk is built on it."""
    if info.in_use_by and not info.users_unknown and not force:
        raise ImageError(
            f"{info.name} is the base of {', '.join(info.in_use_by)}: destroy those VMs first "
            "(or --force, which breaks them)"
        )
    path = Path(info.path)
    with _index_locked(path.parent):
        path.unlink(missing_ok=True)
        _meta_path(path).unlink(missing_ok=True)
        path.with_name(path.name + ".part").unlink(missing_ok=True)


def prune(directory: Path | None = None, *, keep: Collection[str] = ()) -> list[ImageInfo]:
    """Remove every cached image no VM disk uses and no URL in ``keep`` names."""
    removed = []
    for info in list_images(directory):
        if info.in_use_by or (info.source is not None and info.source in keep):
            continue
        remove_image(info)
        removed.append(info)
    return removed


# Default users of the cloud images people use, found from the image's name (as the spec).
_OS_USERS = (
    ("fedora", "fedora"),
    ("ubuntu", "ubuntu"),
    ("debian", "debian"),
    ("centos", "centos"),
    ("rhel", "cloud-user"),
    ("rocky", "rocky"),
    ("alma", "almalinux"),
)
FALLBACK_USER = "cloud-user"


def detect_os(image: str | None) -> str | None:
    """The OS an image's URL or path names (fedora, ubuntu, ...), if any."""
    if not image:
        return None
    name = re.split(r"[/\\]", image)[-1].lower() or image.lower()
    for os_name, _ in _OS_USERS:
        if os_name in name:
            return os_name
    return None


def default_user(image: str | None) -> str:
    found = detect_os(image)
    return dict(_OS_USERS).get(found, FALLBACK_USER) if found else FALLBACK_USER
