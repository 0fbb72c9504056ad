"""`pull`: images fetched into the cache in parallel, each one's progress reported as Transfer
events (the CLI shows them as bars on a terminal, lines otherwise)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import trio

from orchestrator.progress import Reporter, Status

from .images import ImageError, fetch, image_path, image_users, is_remote


async def pull(
    sources: Mapping[str, str | None],
    *,
    force: bool,
    report: Reporter,
    directory: Path | None = None,
) -> dict[str, str]:
    """Fetch every URL (with its checksum, if any); returns the failures by URL."""
    failures: dict[str, str] = {}

    def failed(url: str, why: str) -> None:
        failures[url] = why
        report.transfer(url, Status.FAILED, detail=why)

    async def one(url: str, checksum: str | None) -> None:
        cached = image_path(url, directory)
        if cached.exists():
            users = image_users(cached) if force else []
            if users:  # a new file under their disks would ruin them
                failed(url, f"VM disks are built on it ({', '.join(users)}): destroy them first")
                return
            if not force:
                try:
                    await fetch(url, checksum=checksum, directory=directory)  # verifies it
                except ImageError as err:
                    failed(url, str(err))
                    return
                size = cached.stat().st_size
                report.transfer(url, Status.CACHED, done=size, total=size, detail=str(cached))
                return
        report.transfer(url, Status.WORKING)
        try:
            path = await fetch(
                url, checksum=checksum, directory=directory, force=force, report=report
            )
        except ImageError as err:
            failed(url, str(err))
            return
        size = path.stat().st_size
        report.transfer(url, Status.DONE, done=size, total=size, detail=str(path))

    async with trio.open_nursery() as nursery:
        for url, checksum in sources.items():
            if is_remote(url):
                nursery.start_soon(one, url, checksum)
            else:
                report.transfer(url, Status.DONE, detail="a local image: used where it is")
    return failures
