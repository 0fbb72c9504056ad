"""`pull`: images fetched in parallel, with a progress bar each on a terminal, lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

import trio

from .images import ImageError, cache_dir, cache_name, fetch, image_users, is_remote

# (url, bytes so far, total or None, status: "working", "done", "cached", "failed", detail)
Show = Callable[[str, int, int | None, str, str], None]


async def pull(
    sources: Mapping[str, str | None], *, force: bool, show: Show, directory: Path | None = None
) -> dict[str, str]:
    """Fetch every URL (with its checksum, if any); returns the failures by URL."""
    failures: dict[str, str] = {}

    async def one(url: str, checksum: str | None) -> None:
        cached = (directory or cache_dir()) / cache_name(url)
        if cached.exists():
            users = image_users(cached) if force else []
            if users:  # a new file under their disks would ruin them
                why = f"VM disks are built on it ({', '.join(users)}): destroy them first"
                failures[url] = why
                show(url, 0, None, "failed", why)
                return
            if not force:
                try:
                    await fetch(url, checksum=checksum, directory=directory)  # verifies it
                except ImageError as err:
                    failures[url] = str(err)
                    show(url, 0, None, "failed", str(err))
                    return
                size = cached.stat().st_size
                show(url, size, size, "cached", str(cached))
                return
        show(url, 0, None, "working", "")
        try:
            path = await fetch(
                url,
                checksum=checksum,
                directory=directory,
                force=force,
                progress=lambda done, total: show(url, done, total, "working", ""),
            )
        except ImageError as err:
            failures[url] = str(err)
            show(url, 0, None, "failed", str(err))
            return
        size = path.stat().st_size
        show(url, size, size, "done", str(path))

    async with trio.open_nursery() as nursery:
        for url, checksum in sources.items():
            if is_remote(url):
                nursery.start_soon(one, url, checksum)
            else:
                show(url, 0, None, "done", "a local image: used where it is")
    return failures


def plain_lines(out: TextIO = sys.stderr) -> Show:
    """A line per image at start and end, and every 10 % (or 5 s) in between."""
    last: dict[str, tuple[int, float]] = {}

    def show(url: str, done: int, total: int | None, status: str, detail: str) -> None:
        now = time.monotonic()
        if status == "working" and done:
            tenth = done * 10 // total if total else 0
            before = last.get(url)
            if before and before[0] == tenth and now - before[1] < 5:
                return
            last[url] = (tenth, now)
            share = f"{100 * done // total}% of {total >> 20} MiB" if total else f"{done >> 20} MiB"
            out.write(f"pull {url}: {share}\n")
        else:
            out.write(f"pull {url}: {status}{': ' + detail if detail else ''}\n")
        out.flush()

    return show
