"""Supervised sessions: one long-lived QMP session to each of a set of VMs, reconnected.

Each VM gets a task that connects to the VM's supervision monitor (waiting for its socket),
hands every QMP event to a sink as it arrives, tells it when the session opens (with the VM's
status: it may have ended while nobody watched) and when it closes, and connects again when
the VM comes back (a restart makes a new QEMU on the same socket). ``set_vms`` changes the set
while it runs. What the events mean, and what to log, is the sink's: this module writes
nothing anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import trio

from .errors import QmpConnectError, QmpError
from .events import SessionClosed, SessionEvent, SessionOpened
from .loop import asyncio_loop
from .session import QmpSession

# Told of every event with the session it came on (to act on it: restart a guest). Called in
# the VM's task, also as the session closes when cancelled: it must not block.
Sink = Callable[[str, QmpSession, SessionEvent], None]


class Supervisor:
    def __init__(
        self,
        sink: Sink,
        *,
        vms: Mapping[str, str] | None = None,
        retry_interval: float = 0.2,
    ) -> None:
        self.sink = sink
        self.retry_interval = retry_interval
        self._wanted: dict[str, str] = dict(vms or {})
        self._running: dict[str, tuple[str, trio.CancelScope]] = {}
        self._changed = trio.Event()

    def set_vms(self, vms: Mapping[str, str]) -> None:
        """Supervise exactly these VMs ({name: QMP socket}) from now on."""
        if dict(vms) != self._wanted:
            self._wanted = dict(vms)
            self._changed.set()

    def _reconcile(self, nursery: trio.Nursery) -> None:
        for vm, (path, scope) in list(self._running.items()):
            if self._wanted.get(vm) != path:
                scope.cancel()
                del self._running[vm]
        for vm, path in self._wanted.items():
            if vm not in self._running:
                scope = trio.CancelScope()
                self._running[vm] = (path, scope)
                nursery.start_soon(self._supervise, vm, path, scope)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise until cancelled; ``started`` once every known VM has its task."""
        async with asyncio_loop(), trio.open_nursery() as nursery:
            self._reconcile(nursery)
            task_status.started()
            while True:
                await self._changed.wait()
                self._changed = trio.Event()
                self._reconcile(nursery)

    async def _supervise(self, vm: str, socket_path: str, scope: trio.CancelScope) -> None:
        with scope:
            session = QmpSession(socket_path, name=vm)
            while True:
                try:
                    await session.connect(timeout=math.inf, retry_interval=self.retry_interval)
                except QmpConnectError:  # only with a finite timeout
                    continue
                try:
                    await self._follow(vm, session)
                finally:
                    await session.disconnect()
                await trio.sleep(self.retry_interval)

    async def _follow(self, vm: str, session: QmpSession) -> None:
        reason = "supervision-ended"  # cancelled: the VM left the set, or we are stopping
        try:
            async with session.events() as events:  # from connect on: nothing is lost
                try:
                    opened = SessionOpened(status=(await session.query_status()).status)
                except QmpError as err:
                    opened = SessionOpened(error=str(err))
                self.sink(vm, session, opened)
                async for event in events:
                    self.sink(vm, session, event)
                reason = "connection-closed"  # QEMU exited
        finally:
            self.sink(vm, session, SessionClosed(reason))
