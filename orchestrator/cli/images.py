"""pull, image ls, image rm, image prune: the cache of base images."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

import click

from .options import GlobalOptions

if TYPE_CHECKING:
    import trio

    from orchestrator.api import Event


@click.command()
@click.argument("urls", nargs=-1)
@click.option("--force", is_flag=True, help="Download again even when cached.")
@click.option(
    "--progress",
    type=click.Choice(["auto", "tty", "plain", "quiet"]),
    default="auto",
    show_default=True,
    help="Progress bars, plain lines, or nothing.",
)
@click.pass_obj
def pull(opts: GlobalOptions, urls: tuple[str, ...], force: bool, progress: str) -> None:
    """Download the compose file's images (or the URLs given) into the cache, in parallel.

    Downloads resume where they stopped and are checked against the file's checksums.
    """
    from orchestrator import api

    from .progress import render_quiet, with_events
    from .runner import run

    if urls:
        sources: dict[str, str | None] = dict.fromkeys(urls)
    else:
        model = opts.load().model
        sources = {
            vm.image.source: vm.image.checksum for vm in model.vms.values() if vm.image is not None
        }
        if not sources:
            click.echo("qemu-compose: no VM of the file has an image to pull", err=True)
            return
    if progress == "auto":
        progress = "tty" if sys.stderr.isatty() else "plain"
    render = {"tty": render_bars, "plain": render_lines, "quiet": render_quiet}[progress]
    run(
        lambda: with_events(
            render, lambda on_event: api.pull(sources, force=force, on_event=on_event)
        )
    )


async def render_bars(events: trio.MemoryReceiveChannel[Event]) -> None:
    """A progress bar per image (rich)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TransferSpeedColumn,
    )

    from orchestrator.api import Status, Transfer

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[status]}"),
        transient=False,
    )
    tasks: dict[str, TaskID] = {}
    with bars:
        async for event in events:
            if not isinstance(event, Transfer):
                continue
            if event.source not in tasks:
                name = event.source.rsplit("/", 1)[-1] or event.source
                tasks[event.source] = bars.add_task(name, total=event.total, status="")
            shown = "" if event.status is Status.WORKING else event.status.value
            bars.update(tasks[event.source], completed=event.done, total=event.total, status=shown)


async def render_lines(events: trio.MemoryReceiveChannel[Event], out: TextIO = sys.stderr) -> None:
    """A line per image at start and end, and every 10 % (or 5 s) in between."""
    from orchestrator.api import Status, Transfer

    last: dict[str, tuple[int, float]] = {}
    async for event in events:
        if not isinstance(event, Transfer):
            continue
        url, done, total = event.source, event.done, event.total
        now = time.monotonic()
        if event.status is Status.WORKING and done:
            tenth = done * 10 // total if total else 0
            before = last.get(url)
            if before and before[0] == tenth and now - before[1] < 5:
                continue
            last[url] = (tenth, now)
            share = f"{100 * done // total}% of {total >> 20} MiB" if total else f"{done >> 20} MiB"
            out.write(f"pull {url}: {share}\n")
        else:
            detail = f": {event.detail}" if event.detail else ""
            out.write(f"pull {url}: {event.status.value}{detail}\n")
        out.flush()


@click.group()
def image() -> None:
    """List and remove the cached base images."""


@image.command("ls")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def image_ls(fmt: str) -> None:
    """List the cached images: name, size, format, source URL, last use, VMs built on them."""
    from orchestrator import api

    from .tables import image_table, json_lines

    rows = api.images()
    sys.stdout.write(json_lines(rows) if fmt == "json" else image_table(rows))


@image.command("rm")
@click.argument("images", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Also when VM disks are built on it (breaks them).")
def image_rm(images: tuple[str, ...], force: bool) -> None:
    """Remove cached images, by name (as `image ls` shows) or URL."""
    from orchestrator import api

    for key in images:
        click.echo(f"removed {api.remove_image(key, force=force).name}")


@image.command("prune")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_obj
def image_prune(opts: GlobalOptions, dry_run: bool) -> None:
    """Remove the cached images no VM disk is built on.

    Images the compose file here names are kept too (when there is one).
    """
    from orchestrator import ProjectNotFoundError, api

    keep: set[str] = set()
    try:
        model = opts.load().model
        keep = {vm.image.source for vm in model.vms.values() if vm.image is not None}
    except ProjectNotFoundError:
        pass
    removed = api.prune_images(keep=keep, dry_run=dry_run)
    for info in removed:
        if dry_run:
            click.echo(f"would remove {info.name}")
        else:
            click.echo(f"removed {info.name} ({info.size / (1 << 20):.1f}M)")
    if not removed and not dry_run:
        click.echo("nothing to remove")
