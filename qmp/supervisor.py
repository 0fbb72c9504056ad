"""The supervisor: one long-running service holding a QMP session to every VM of a project.

Each VM gets a task that connects to the VM's supervision monitor (waiting for its socket),
appends every QMP event to the event log as it arrives, notes connects and disconnects, and
connects again when the VM comes back (a restart makes a new QEMU on the same socket). The
set of VMs comes from a JSON file (``{"vm": "/path/to/qmp.sock", ...}``) that is re-read when
it changes, so that ``up`` can add VMs without restarting the supervisor.

Run it as ``python -m qmp.supervisor --log-dir DIR --vms FILE``; the runtime runs it as a
systemd unit per project. SIGTERM or SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from .errors import QmpConnectError, QmpError
from .eventlog import EventLog
from .session import QmpSession, asyncio_loop

log = logging.getLogger(__name__)

CONNECTED = "QMP_CONNECTED"
DISCONNECTED = "QMP_DISCONNECTED"

# Told of every record the supervisor writes, with the session it came on (to act on it:
# the project supervisor restarts guests). Called in the VM's task: it must not block long.
OnEvent = Callable[[str, QmpSession, str, dict[str, Any]], Awaitable[None]]


class Supervisor:
    def __init__(
        self,
        event_log: EventLog,
        *,
        vms: Mapping[str, str] | None = None,
        vms_file: Path | None = None,
        retry_interval: float = 0.2,
        rescan_interval: float = 1.0,
        on_event: OnEvent | None = None,
    ) -> None:
        self.event_log = event_log
        self.vms_file = vms_file
        self.retry_interval = retry_interval
        self.rescan_interval = rescan_interval
        self._wanted: dict[str, str] = dict(vms or {})
        self._running: dict[str, tuple[str, trio.CancelScope]] = {}
        self._vms_mtime: float | None = None
        self._on_event = on_event
        self._changed = trio.Event()

    def set_vms(self, vms: Mapping[str, str]) -> None:
        """Supervise exactly these VMs ({name: QMP socket}) from now on."""
        if dict(vms) != self._wanted:
            self._wanted = dict(vms)
            self._changed.set()

    def _read_vms_file(self) -> None:
        if self.vms_file is None:
            return
        try:
            mtime = self.vms_file.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._vms_mtime:
            return
        self._vms_mtime = mtime
        if mtime is None:
            self._wanted = {}
            return
        try:
            table = json.loads(self.vms_file.read_text())
            self._wanted = {str(k): str(v) for k, v in table.items()}
        except (OSError, ValueError, AttributeError) as err:
            log.warning("cannot read %s (%s): keeping the VMs I have", self.vms_file, err)

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
            self._read_vms_file()
            self._reconcile(nursery)
            task_status.started()
            while True:
                with trio.move_on_after(self.rescan_interval):
                    await self._changed.wait()
                self._changed = trio.Event()
                self._read_vms_file()
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
                    await self._record(vm, session)
                finally:
                    await session.disconnect()
                await trio.sleep(self.retry_interval)

    async def _record(self, vm: str, session: QmpSession) -> None:
        reason = "supervision-ended"  # cancelled: the VM left the set, or we are stopping
        try:
            async with session.events() as events:  # from connect on: nothing is lost
                try:
                    status = await session.query_status()
                    data = {"status": status.status}
                except QmpError as err:
                    data = {"error": str(err)}
                self.event_log.append(vm, CONNECTED, data, source="supervisor")
                await self._tell(vm, session, CONNECTED, data)
                async for event in events:
                    self.event_log.append(vm, event.event, event.data(), qemu_time=event.timestamp)
                    await self._tell(vm, session, event.event, event.data())
                reason = "connection-closed"  # QEMU exited
        finally:
            self.event_log.append(vm, DISCONNECTED, {"reason": reason}, source="supervisor")

    async def _tell(self, vm: str, session: QmpSession, event: str, data: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            await self._on_event(vm, session, event, data)
        except QmpError as err:  # acting on the VM failed (it went away, say): noted, not fatal
            self.event_log.append(vm, "SUPERVISOR_ERROR", {"error": str(err)}, source="supervisor")


async def serve_until_signalled(service: Callable[..., Awaitable[None]]) -> None:
    """Run ``service`` (a task that reports ``started``) until SIGTERM or SIGINT, then stop."""
    async with trio.open_nursery() as nursery:
        await nursery.start(service)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _main(log_dir: Path, vms_file: Path) -> None:
    await serve_until_signalled(Supervisor(EventLog(log_dir), vms_file=vms_file).run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qmp.supervisor", description=__doc__)
    parser.add_argument("--log-dir", type=Path, required=True, help="the event log's directory")
    parser.add_argument("--vms", type=Path, required=True, help='JSON {"vm": "qmp socket"}')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trio.run(_main, args.log_dir, args.vms, restrict_keyboard_interrupt_to_checkpoints=True)


if __name__ == "__main__":
    main(sys.argv[1:])
