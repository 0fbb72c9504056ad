"""Base images: the global cache, downloads that resume and verify, local images in place.

The cache is ``$XDG_DATA_HOME/qemu-compose/images`` (default ``~/.local/share/...``). A URL is
cached as ``<first 16 hex of sha256(url)>-<basename>``, so two URLs ending in the same file
name never collide. A download goes to ``<name>.part`` and resumes from there (HTTP Range);
it is checked against Content-Length and the optional checksum, and renamed into place only
when whole. file:// URLs and paths are used where they are (never copied).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
import trio

from .errors import QemuComposeError

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)
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


@dataclass(frozen=True, slots=True)
class Checksum:
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
    progress: Progress | None = None,
    force: bool = False,
    timeout: float = 60.0,
    client: httpx.AsyncClient | None = None,
) -> Path:
    """The local file of an image: downloaded into the cache if it is a URL."""
    expected = Checksum.parse(checksum) if checksum else None
    if not is_remote(source):
        path = local_path(source)
        if not path.is_file():
            raise ImageError(f"no image at {path}")
        await verify(path, expected)
        return path
    target = (directory or cache_dir()) / cache_name(source)
    if target.exists() and not force:
        await verify(target, expected)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if force:
        part.unlink(missing_ok=True)
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=timeout, follow_redirects=True)
    try:
        await _download(http, source, part, progress)
    finally:
        if own_client:
            await http.aclose()
    try:
        await verify(part, expected)
    except ImageError:
        part.unlink(missing_ok=True)  # a bad download is not worth resuming
        raise
    os.replace(part, target)
    return target


async def _download(
    http: httpx.AsyncClient, url: str, part: Path, progress: Progress | None
) -> None:
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
                    if progress:
                        progress(done, total)
    except httpx.HTTPError as err:
        raise ImageError(f"{url}: download interrupted ({err}); run again to resume") from err
    if total is not None and done != total:
        raise ImageError(f"{url}: got {done} of {total} bytes; run again to resume")
