"""One QMP session to one QEMU, for trio code.

qemu.qmp is an asyncio library; it runs inside a trio-asyncio loop and nothing asyncio leaves
this module. A session connects (retrying until QEMU's socket appears and greets), executes
commands with deadlines and typed errors, streams typed events, notices the end of the
connection (QEMU exited) at once, and powers the VM down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio
import trio_asyncio
from qemu.qmp import EventListener, ExecInterruptedError, ExecuteError, QMPClient, QMPError
from qemu.qmp import Runstate as ClientRunstate

from .errors import CommandError, QmpConnectError, QmpTimeoutError, SessionStateError, VmGoneError
from .events import QmpEvent, parse_event
from .loop import asyncio_loop

log = logging.getLogger(__name__)
# qemu.qmp logs every failed or cancelled connect attempt at ERROR; we retry on purpose and
# report failures as typed errors, so its log is only worth reading when it is critical.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class SessionState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    CLOSED = "closed"  # the connection ended (QEMU exited); connect() again to reconnect


class PowerdownOutcome(enum.Enum):
    GUEST_SHUTDOWN = "guest-shutdown"  # the guest powered off within the grace period
    EXITED = "exited"  # QEMU exited within the grace period, with no SHUTDOWN event
    QUIT = "quit"  # the grace period passed: QEMU was told to quit
    ALREADY_GONE = "already-gone"  # there was no QEMU to power down


class VmStatus(msgspec.Struct, frozen=True):
    status: str  # running, paused, shutdown, inmigrate, ...
    running: bool


class InsertedMedium(msgspec.Struct, frozen=True, rename="kebab"):
    file: str
    ro: bool
    drv: str
    node_name: str | None = None


class BlockDevice(msgspec.Struct, frozen=True, rename="kebab"):
    device: str
    qdev: str = ""
    removable: bool = False
    locked: bool = False
    inserted: InsertedMedium | None = None


class CpuInfo(msgspec.Struct, frozen=True, rename="kebab"):
    cpu_index: int
    qom_path: str
    thread_id: int
    target: str = ""


class QmpSession:
    """A (re)connectable QMP session to the QEMU serving ``socket_path``.

    Needs a trio-asyncio loop (``open_session`` and ``asyncio_loop`` provide one).
    """

    def __init__(self, socket_path: str, *, name: str | None = None, command_timeout: float = 10.0):
        self.socket_path = socket_path
        self.name = name or socket_path
        self.command_timeout = command_timeout
        self.state = SessionState.DISCONNECTED
        self._client: QMPClient | None = None
        self._ended: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._backlog: _Queue | None = None

    # -- connection ---------------------------------------------------------------------------

    async def connect(self, *, timeout: float = 30.0, retry_interval: float = 0.05) -> None:
        """Open the session, retrying until the socket exists and QEMU greets.

        A failed or cancelled connect leaves the session disconnected, ready to try again.
        """
        if self.state is SessionState.CONNECTED:
            raise SessionStateError(f"{self.name}: already connected")
        if self._client is not None:  # the last connection ended (CLOSED): forget it whole
            await self.disconnect()
        reason = "the socket does not exist"
        with trio.move_on_after(timeout):
            while True:
                if await trio.Path(self.socket_path).is_socket():
                    reason = "QEMU did not greet"
                    try:
                        await trio_asyncio.aio_as_trio(self._aio_connect)()
                    except (QMPError, OSError) as err:
                        reason = f"cannot connect: {err}"
                    else:
                        self.state = SessionState.CONNECTED
                        return
                await trio.sleep(retry_interval)
        raise QmpConnectError(self.socket_path, f"{reason} (gave up after {timeout:g} s)")

    async def _aio_connect(self) -> None:
        client = QMPClient(self.name)
        # qemu.qmp's default listener keeps every event until someone reads it: unbounded in
        # a long session. It may not be removed, so it takes none; our backlog keeps them
        # only until the first events() takes them over.
        client.events.event_filter = _accept_nothing
        backlog = _Queue()
        client.register_listener(backlog)
        try:
            await client.connect(self.socket_path)
        except BaseException as err:  # failed or cancelled (a socket that never greets): clean up
            with contextlib.suppress(Exception):
                await client.disconnect()
            if isinstance(err, AssertionError):  # qemu.qmp 0.0.6 asserts RUNNING after the
                # handshake: QEMU hung up right after greeting (it is exiting)
                raise ConnectionResetError("QEMU closed the connection as it greeted") from err
            raise
        self._client = client
        self._backlog = backlog
        self._ended = asyncio.Event()
        self._watcher = asyncio.get_running_loop().create_task(self._aio_watch(client, self._ended))

    @staticmethod
    async def _aio_watch(client: QMPClient, ended: asyncio.Event) -> None:
        """Set ``ended`` as soon as the connection leaves RUNNING (EOF, error, disconnect)."""
        while client.runstate is ClientRunstate.RUNNING:
            await client.runstate_changed()
        ended.set()

    @property
    def ended(self) -> bool:
        """True once the connection has ended (QEMU exited, or disconnect())."""
        return self._ended is not None and self._ended.is_set()

    async def wait_closed(self) -> None:
        """Wait until the connection ends (QEMU exits); bound it with trio.fail_after."""
        if self._ended is not None:
            await trio_asyncio.aio_as_trio(self._ended.wait)()

    async def disconnect(self) -> None:
        """Close the session (idempotent; cancellation-safe; never raises for EOF)."""
        client, watcher = self._client, self._watcher
        self._client = self._watcher = self._backlog = None
        self.state = SessionState.DISCONNECTED
        if client is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio_asyncio.aio_as_trio(self._aio_disconnect)(client, watcher)

    @staticmethod
    async def _aio_disconnect(client: QMPClient, watcher: asyncio.Task[None] | None) -> None:
        with contextlib.suppress(Exception):  # EOFError after quit, or whatever ended it
            await client.disconnect()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # -- commands -----------------------------------------------------------------------------

    def _require_connected(self) -> QMPClient:
        if self.state is SessionState.CLOSED or (self.ended and self._client is not None):
            self.state = SessionState.CLOSED
            raise VmGoneError(f"{self.name}: the QMP connection has ended (QEMU exited?)")
        if self.state is not SessionState.CONNECTED or self._client is None:
            raise SessionStateError(f"{self.name}: the session is {self.state.value}")
        return self._client

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run a QMP command; its return value, or CommandError / VmGoneError / QmpTimeoutError."""
        client = self._require_connected()
        limit = self.command_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                return await trio_asyncio.aio_as_trio(client.execute)(command, arguments)
        except trio.TooSlowError:
            raise QmpTimeoutError(command, limit) from None
        except ExecuteError as err:
            raise CommandError(command, err.error_class, str(err)) from err
        except (ExecInterruptedError, QMPError, EOFError, OSError) as err:
            self.state = SessionState.CLOSED
            raise VmGoneError(f"{self.name}: {command}: the connection ended ({err})") from err

    async def send_fd(self, fdname: str, fd: int) -> None:
        """Give QEMU a copy of ``fd`` under ``fdname`` (SCM_RIGHTS, then ``getfd``): for
        ``migrate``/``migrate-incoming`` to ``fd:<fdname>``; QEMU closes its copy when done."""
        client = self._require_connected()
        try:
            client.send_fd_scm(fd)
        except (QMPError, OSError) as err:
            self.state = SessionState.CLOSED
            raise VmGoneError(f"{self.name}: sending a file descriptor: {err}") from err
        await self.execute("getfd", {"fdname": fdname})

    async def query_status(self) -> VmStatus:
        return msgspec.convert(await self.execute("query-status"), VmStatus)

    async def query_name(self) -> str | None:
        result = await self.execute("query-name")
        return result.get("name") if isinstance(result, dict) else None

    async def query_block(self) -> list[BlockDevice]:
        return msgspec.convert(await self.execute("query-block"), list[BlockDevice])

    async def query_cpus_fast(self) -> list[CpuInfo]:
        return msgspec.convert(await self.execute("query-cpus-fast"), list[CpuInfo])

    # -- events -------------------------------------------------------------------------------

    @asynccontextmanager
    async def events(self, names: Iterable[str] = ()) -> AsyncIterator[EventStream]:
        """Events (only ``names``, if given) until the connection ends.

        The first stream of a connection starts with the events that came since connect(),
        so that a supervisor misses none; later ones start now. That first stream is given
        even when the connection has already ended (QEMU exited just after it greeted): what
        came before the end is delivered, then the stream ends.
        """
        if self._backlog is not None and self._client is not None:
            client = self._client
        else:
            client = self._require_connected()
        wanted = list(names)
        listener = _Queue(wanted or None)
        client.register_listener(listener)  # no checkpoint between this and taking the backlog
        backlog: list[Any] = []
        if self._backlog is not None:
            # taken before remove_listener, which empties a listener through its clear()
            backlog = [m for m in self._backlog.clear() if not wanted or m["event"] in wanted]
            client.remove_listener(self._backlog)
            self._backlog = None
        try:
            yield EventStream(self, listener, backlog)
        finally:
            with contextlib.suppress(Exception):
                client.remove_listener(listener)

    # -- powerdown ----------------------------------------------------------------------------

    async def powerdown(self, *, grace: float, quit_timeout: float = 10.0) -> PowerdownOutcome:
        """Press the power button, give the guest ``grace`` seconds to power off, then quit.

        Returns which step ended the VM; when it returns, QEMU has closed the connection
        (or ``quit_timeout`` passed after quit, which QmpTimeoutError reports).
        """
        try:
            async with self.events(["SHUTDOWN"]) as events:
                status = (await self.query_status()).status
                if status in ("shutdown", "guest-panicked"):
                    # off already, kept by -no-shutdown: nobody is there to press for
                    await self._quit(quit_timeout)
                    return PowerdownOutcome.GUEST_SHUTDOWN
                if status == "paused":  # frozen (QMP stop): it cannot hear the button
                    await self.execute("cont", timeout=quit_timeout)
                await self.execute("system_powerdown", timeout=quit_timeout)
                with trio.move_on_after(grace):
                    async for _ in events:  # SHUTDOWN: QEMU exits by itself next ...
                        await self._quit(quit_timeout)  # ... unless -no-shutdown keeps it
                        return PowerdownOutcome.GUEST_SHUTDOWN
                    return PowerdownOutcome.EXITED  # the stream ended: EOF
        except (VmGoneError, SessionStateError):
            if self.ended or self.state is not SessionState.CONNECTED:
                return PowerdownOutcome.ALREADY_GONE
            raise
        await self._quit(quit_timeout)
        return PowerdownOutcome.QUIT

    async def _quit(self, timeout: float) -> None:
        """Ask QEMU to quit (it may be on its way out already) and wait until it has gone."""
        with contextlib.suppress(VmGoneError, SessionStateError):
            await self.execute("quit", timeout=timeout)
        try:
            with trio.fail_after(timeout):
                await self.wait_closed()
        except trio.TooSlowError:
            raise QmpTimeoutError("quit", timeout) from None


def _accept_nothing(_event: Any) -> bool:
    return False


class _Queue(EventListener):
    """An EventListener without its history list, which grows for as long as it listens."""

    def __init__(self, names: Iterable[str] | None = None) -> None:
        super().__init__(names)
        self._events: asyncio.Queue[Any] = asyncio.Queue()

    async def put(self, event: Any) -> None:
        if self.accept(event):
            self._events.put_nowait(event)

    async def get(self) -> Any:
        return await self._events.get()

    def empty(self) -> bool:
        return self._events.empty()

    def clear(self) -> list[Any]:
        taken = []
        while not self._events.empty():
            taken.append(self._events.get_nowait())
        return taken


class EventStream:
    """Typed events in the order QEMU sent them; iteration ends when the connection does."""

    def __init__(self, session: QmpSession, listener: _Queue, backlog: list[Any]) -> None:
        self._session = session
        self._listener = listener
        self._backlog = backlog

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> QmpEvent:
        if self._backlog:
            return parse_event(self._backlog.pop(0))
        message = await trio_asyncio.aio_as_trio(self._aio_next)()
        if message is None:
            raise StopAsyncIteration
        return parse_event(message)

    async def _aio_next(self) -> Any:
        """The next event, or None once the connection has ended and none is left."""
        ended = self._session._ended
        if not self._listener.empty() or ended is None:
            return await self._listener.get()
        getter = asyncio.ensure_future(self._listener.get())
        closer = asyncio.ensure_future(ended.wait())
        try:
            await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closer.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        if not self._listener.empty():
            return await self._listener.get()
        return None


@asynccontextmanager
async def open_session(
    socket_path: str,
    *,
    name: str | None = None,
    timeout: float = 30.0,
    command_timeout: float = 10.0,
) -> AsyncIterator[QmpSession]:
    """Connect to QEMU's QMP socket (waiting up to ``timeout`` for it) for the block's duration."""
    async with asyncio_loop():
        session = QmpSession(socket_path, name=name, command_timeout=command_timeout)
        await session.connect(timeout=timeout)
        try:
            yield session
        finally:
            await session.disconnect()
