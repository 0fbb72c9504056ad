"""Progress as a stream of typed events, and the ways of showing it.

The runtime sends an Event for every step of every VM into a trio memory channel; a renderer
consumes it: a live table on a terminal, plain lines when piped, JSON lines for scripts, or
nothing. They are interchangeable: the runtime does not know which one listens.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

import msgspec
import trio


class Event(msgspec.Struct, frozen=True, kw_only=True):
    time: float
    vm: str  # "" for the project as a whole
    stage: str  # plan, image, volume, network, disk, seed, unit, running, ssh, health, stop, ...
    status: str  # working, done, failed, waiting, skipped
    detail: str = ""


class Reporter:
    """What the runtime holds: a way to send events that never blocks it.

    Events go into a channel (for a renderer) and/or to a callback (for the Python API).
    """

    def __init__(
        self,
        channel: trio.MemorySendChannel[Event] | None = None,
        callback: Callable[[Event], None] | None = None,
    ) -> None:
        self._channel = channel
        self._callback = callback

    def also(self, callback: Callable[[Event], None]) -> Reporter:
        """This reporter, with ``callback`` told of every event too."""
        first = self._callback

        def both(event: Event) -> None:
            if first is not None:
                first(event)
            callback(event)

        return Reporter(self._channel, both)

    def __call__(self, vm: str, stage: str, status: str, detail: str = "") -> None:
        if self._channel is None and self._callback is None:
            return
        event = Event(time=time.time(), vm=vm, stage=stage, status=status, detail=detail)
        if self._callback is not None:
            self._callback(event)
        if self._channel is None:
            return
        # a renderer that cannot keep up loses lines: the runtime never waits for it
        with contextlib.suppress(
            trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            self._channel.send_nowait(event)


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


async def render_live(events: trio.MemoryReceiveChannel[Event]) -> None:
    """A table with a row per VM: its current step, status and elapsed time (rich.live)."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    rows: dict[str, tuple[str, str, str, float]] = {}
    started: dict[str, float] = {}
    console = Console(stderr=True)

    def table() -> Table:
        grid = Table(box=None, show_header=False, pad_edge=False)
        for vm, (stage, status, detail, when) in rows.items():
            style = {"done": "green", "failed": "bold red", "waiting": "yellow"}.get(status, "cyan")
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
