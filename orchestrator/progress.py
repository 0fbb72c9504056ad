"""Progress as one stream of typed events: the steps of up, stop and destroy, and downloads.

The runtime (and `pull`, and the image cache) report an Event for every step; whoever listens
(the CLI's renderers in cli/progress.py, a script's callback, the event log) gets them all,
and the work never waits for a listener. Stages and statuses are enums: their values are the
strings of the JSON progress and of the event log.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import msgspec


class Stage(enum.StrEnum):
    """Where a VM (or the project, for vm "") is on its way up or down."""

    PLAN = "plan"
    IMAGE = "image"
    VOLUME = "volume"
    NETWORK = "network"
    SUPERVISOR = "supervisor"
    DEPENDS = "depends"  # waiting for what it depends on
    DISK = "disk"
    UNIT = "unit"  # its transient unit: QEMU started
    RUNNING = "running"  # QMP says it runs
    SSH = "ssh"
    HEALTH = "health"
    READY = "ready"
    COMPLETE = "complete"  # a dependant waits for it to power off
    FAILED = "failed"
    STOP = "stop"
    DESTROY = "destroy"
    PAUSE = "pause"  # a fault on purpose: the guest frozen (QMP stop)
    UNPAUSE = "unpause"
    KILL = "kill"  # a signal to QEMU
    FAULT = "fault"  # a fault made: a link cut, a disk throttled, a partition, a panic
    HEAL = "heal"  # a fault undone
    SNAPSHOT = "snapshot"  # a VM captured (snapshot save), a snapshot removed
    RESTORE = "restore"  # a VM's saved state loaded (snapshot restore, resume)
    SUSPEND = "suspend"  # a VM's state saved and its QEMU ended
    TEMPLATE = "template"  # a warm VM's state saved for its clones
    CLONE = "warm"  # a warm clone started from a template and given its own identity


class Status(enum.StrEnum):
    WORKING = "working"
    DONE = "done"
    FAILED = "failed"
    WAITING = "waiting"
    SKIPPED = "skipped"
    CACHED = "cached"  # an image already in the cache (pull)


class Event(msgspec.Struct, frozen=True, kw_only=True):
    time: float
    vm: str  # "" for the project as a whole
    stage: Stage
    status: Status
    detail: str = ""


class Transfer(Event, frozen=True, kw_only=True):
    """A download's progress: ``done`` bytes of ``total`` (None: not known) of ``source``."""

    source: str
    done: int = 0
    total: int | None = None


class Reporter:
    """What the work holds: a way to send events that never blocks it.

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

    def __call__(self, vm: str, stage: Stage, status: Status, detail: str = "") -> None:
        if self._callback is not None:
            event = Event(time=time.time(), vm=vm, stage=stage, status=status, detail=detail)
            self._callback(event)

    def transfer(
        self,
        source: str,
        status: Status,
        *,
        done: int = 0,
        total: int | None = None,
        detail: str = "",
    ) -> None:
        if self._callback is not None:
            self._callback(
                Transfer(
                    time=time.time(),
                    vm="",
                    stage=Stage.IMAGE,
                    status=status,
                    detail=detail,
                    source=source,
                    done=done,
                    total=total,
                )
            )
