"""Progress as a stream of typed events.

The runtime reports an Event for every step of every VM; whoever listens (the CLI's
renderers in cli/progress.py, a script's callback, the event log) gets them all, and the
runtime never waits for a listener.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True):
    time: float
    vm: str  # "" for the project as a whole
    stage: str  # plan, image, volume, network, disk, seed, unit, running, ssh, health, stop, ...
    status: str  # working, done, failed, waiting, skipped
    detail: str = ""


class Reporter:
    """What the runtime holds: a way to send events that never blocks it.

    Each event goes to a callback (the CLI's renderer channel, a script's function, the event
    log); a callback must not block. With none, events are dropped.
    """

    def __init__(self, callback: Callable[[Event], None] | None = None) -> None:
        self._callback = callback

    def also(self, callback: Callable[[Event], None]) -> Reporter:
        """This reporter, with ``callback`` told of every event too."""
        first = self._callback

        def both(event: Event) -> None:
            if first is not None:
                first(event)
            callback(event)

        return Reporter(both)

    def __call__(self, vm: str, stage: str, status: str, detail: str = "") -> None:
        if self._callback is not None:
            event = Event(time=time.time(), vm=vm, stage=stage, status=status, detail=detail)
            self._callback(event)
