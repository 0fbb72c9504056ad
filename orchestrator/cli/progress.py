"""Progress of a command as it runs: the runtime's events, shown as a live table on a
terminal, plain lines when piped, JSON lines for scripts, or nothing. The renderers are
interchangeable consumers of one channel; the runtime does not know which one listens.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TextIO, TypeVar

import msgspec
import trio

from orchestrator.api import Event, Status

if TYPE_CHECKING:
    from orchestrator.api import EventCallback

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode


async def render_json(events: trio.MemoryReceiveChannel[Event], out: TextIO = sys.stdout) -> None:
    async for event in events:
        out.write(_encode(event).decode() + "\n")
        out.flush()


async def render_plain(events: trio.MemoryReceiveChannel[Event], out: TextIO = sys.stderr) -> None:
    async for event in events:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        who = event.vm or "-"
        detail = f"  {event.detail}" if event.detail else ""
        out.write(f"{stamp} {who:<16} {event.stage:<8} {event.status}{detail}\n")
        out.flush()


async def render_quiet(events: trio.MemoryReceiveChannel[Event]) -> None:
    async for _ in events:
        pass


_STYLES = {Status.DONE: "green", Status.FAILED: "bold red", Status.WAITING: "yellow"}


async def render_live(events: trio.MemoryReceiveChannel[Event]) -> None:
    """A table with a row per VM: its current step, status and elapsed time (rich.live)."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    rows: dict[str, tuple[str, Status, str, float]] = {}
    started: dict[str, float] = {}
    console = Console(stderr=True)

    def table() -> Table:
        grid = Table(box=None, show_header=False, pad_edge=False)
        for vm, (stage, status, detail, when) in rows.items():
            style = _STYLES.get(status, "cyan")
            elapsed = f"{when - started[vm]:5.1f}s"
            grid.add_row(vm, f"[{style}]{status}[/]", stage, elapsed, detail)
        return grid

    with Live(table(), console=console, refresh_per_second=8, transient=False) as live:
        async for event in events:
            key = event.vm or "(project)"
            started.setdefault(key, event.time)
            rows[key] = (event.stage, event.status, event.detail, event.time)
            live.update(table())


Renderer = Callable[[trio.MemoryReceiveChannel[Event]], Awaitable[None]]


def renderer_for(mode: str) -> Renderer:
    if mode == "auto":
        mode = "tty" if sys.stderr.isatty() else "plain"
    return {
        "tty": render_live,
        "plain": render_plain,
        "json": render_json,
        "quiet": render_quiet,
    }[mode]


async def with_progress(mode: str, work: Callable[[EventCallback], Awaitable[T]]) -> T:
    """Run ``work`` with the renderer ``mode`` names consuming its events."""
    return await with_events(renderer_for(mode), work)


async def with_events(render: Renderer, work: Callable[[EventCallback], Awaitable[T]]) -> T:
    """Run ``work`` with ``render`` consuming its events; the renderer ends after it, also
    when it fails (then its error is raised once every event is shown).

    A renderer that cannot keep up loses lines: the work never waits for it."""
    send, receive = trio.open_memory_channel[Event](10_000)

    def on_event(event: Event) -> None:
        with contextlib.suppress(
            trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            send.send_nowait(event)

    result: list[T] = []
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(render, receive)
        async with send:
            try:
                result.append(await work(on_event))
            except Exception as err:  # the renderer shows what came before it first
                failure = err
    if failure is not None:
        raise failure
    return result[0]
