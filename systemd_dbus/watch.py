"""Following units: PropertiesChanged signals routed to whoever watches a unit's path, and
the watch a caller iterates (each unit's status, then one per change of its state)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from .errors import ManagerGoneError
from .units import UnitStatus


class Watchers:
    """Who wants PropertiesChanged of which unit path: path -> set of send channels."""

    def __init__(self) -> None:
        self.by_path: dict[str, set[trio.MemorySendChannel[dict[str, Any]]]] = {}

    @contextmanager
    def register(self, paths: Iterable[str]) -> Iterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        paths = list(paths)
        for path in paths:
            self.by_path.setdefault(path, set()).add(send)
        try:
            yield receive
        finally:
            for path in paths:
                channels = self.by_path.get(path, set())
                channels.discard(send)
                if not channels:
                    self.by_path.pop(path, None)
            send.close()

    def publish(self, path: str, changed: dict[str, Any]) -> None:
        for send in self.by_path.get(path, ()):
            send.send_nowait({"_path": path, **changed})

    def close_all(self) -> None:
        for channels in self.by_path.values():
            for send in channels:
                send.close()


def drain(status: UnitStatus, updates: trio.MemoryReceiveChannel[dict[str, Any]]) -> UnitStatus:
    """Apply every change already received."""
    while True:
        try:
            status = status.updated(updates.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return status


class UnitWatch:
    """An async iterator of UnitStatus: the initial ones, then one per change of state."""

    def __init__(
        self,
        gone_reason: Callable[[], str],
        current: dict[str, UnitStatus],
        paths: dict[str, str],
        updates: trio.MemoryReceiveChannel[dict[str, Any]],
    ) -> None:
        self._gone_reason = gone_reason
        self._pending = list(current.values())
        self._current = current
        self._paths = paths
        self._updates = updates

    def __aiter__(self) -> UnitWatch:
        return self

    async def __anext__(self) -> UnitStatus:
        if self._pending:
            return self._pending.pop(0)
        while True:
            try:
                changed = await self._updates.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise ManagerGoneError(self._gone_reason() or "watch closed") from None
            name = self._paths[changed["_path"]]
            before = self._current[name]
            after = before.updated(changed)
            if after != before:
                self._current[name] = after
                return after
