"""A connection to a systemd manager over D-Bus, for trio code.

dbus-fast is an asyncio library; it runs here inside a trio-asyncio loop that belongs to the
connection (``connect`` opens both), and nothing asyncio leaves this module. One message
handler receives systemd's signals: JobRemoved results are kept by job path (they may arrive
before the reply to the call that made the job), PropertiesChanged of units go to whoever
watches them, and losing the bus or the manager wakes every waiter with ManagerGoneError.
Every call and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn

import trio
import trio_asyncio
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from .bus import (
    BUS_NAME,
    GONE_ERRORS,
    MANAGER_IFACE,
    MANAGER_PATH,
    MATCH_RULES,
    MAX_CALLS_IN_FLIGHT,
    PROPERTIES_IFACE,
    SERVICE_IFACE,
    SYSTEM_HINT,
    UNIT_IFACE,
    USER_HINT,
    bus_address,
)
from .errors import (
    BusCallError,
    ConnectionStateError,
    JobFailedError,
    ManagerGoneError,
    ManagerUnavailableError,
    NoSuchUnitError,
    SystemdTimeoutError,
    UnitExistsError,
    UnitStartError,
)
from .escape import unit_object_path
from .journal import last_lines
from .units import STATUS_PROPERTIES, ActiveState, TransientUnit, UnitStatus, UnitSummary
from .watch import UnitWatch, Watchers, drain

log = logging.getLogger(__name__)

_KEPT_JOB_RESULTS = 4096
WATCH_REREADS = 5  # readings of a watch's units until none changed meanwhile


class Runstate(enum.Enum):
    IDLE = "idle"
    CONNECTED = "connected"
    CLOSED = "closed"


class SystemdManager:
    """One connection to a systemd manager (user or system); make it with ``connect``."""

    def __init__(
        self,
        address: str,
        *,
        user: bool,
        journal_dir: Path | None = None,
        call_timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.user = user
        self.journal_dir = journal_dir
        self.call_timeout = call_timeout
        self.state = Runstate.IDLE
        self._bus: MessageBus | None = None
        # Calls in flight at once. A burst of a hundred StartTransientUnit messages fills the
        # socket's send buffer, and dbus-fast's writer then failing under trio-asyncio (EBADF
        # on the bus socket) was seen to drop the connection; a few dozen keep it well below.
        self._in_flight = trio.CapacityLimiter(MAX_CALLS_IN_FLIGHT)
        self._job_results: OrderedDict[str, str] = OrderedDict()
        self._job_waiters: dict[str, trio.Event] = {}
        self._watchers = Watchers()
        self._gone = trio.Event()
        self._gone_reason = ""

    # -- connection ---------------------------------------------------------------------------

    def _require(self, state: Runstate) -> None:
        if self.state is not state:
            if self._gone.is_set():
                raise ManagerGoneError(self._gone_reason)
            raise ConnectionStateError(f"the connection is {self.state.value}, not {state.value}")

    async def _open(self, nursery: trio.Nursery, timeout: float) -> None:
        self._require(Runstate.IDLE)
        hint = USER_HINT if self.user else SYSTEM_HINT
        if self.address.startswith("unix:path="):
            socket_path = trio.Path(self.address.split("=", 1)[1].split(",", 1)[0])
            if not await socket_path.exists():
                raise ManagerUnavailableError(f"no D-Bus socket at {socket_path}", hint)
        bus = MessageBus(bus_address=self.address)
        try:
            with trio.fail_after(timeout):
                await trio_asyncio.aio_as_trio(bus.connect)()
        except trio.TooSlowError:
            bus.disconnect()
            raise ManagerUnavailableError(
                f"the bus at {self.address} did not answer within {timeout:g} s", hint
            ) from None
        except Exception as err:
            bus.disconnect()
            raise ManagerUnavailableError(f"cannot connect to {self.address}: {err}", hint) from err
        except BaseException:  # cancelled mid-handshake: don't leak the socket
            bus.disconnect()
            raise
        self._bus = bus
        bus.add_message_handler(self._on_message)
        self.state = Runstate.CONNECTED
        nursery.start_soon(self._watch_disconnect, bus)
        try:
            for rule in MATCH_RULES:
                await self._call(
                    "AddMatch",
                    "s",
                    [rule],
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    timeout=timeout,
                )
            await self._call("Subscribe", timeout=timeout)
        except (ManagerGoneError, BusCallError, SystemdTimeoutError) as err:
            self._close()
            raise ManagerUnavailableError(f"no systemd manager on {self.address}", hint) from err

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        try:
            await trio_asyncio.aio_as_trio(bus.wait_for_disconnect)()
        except Exception as err:  # any reason means the same: gone
            self._mark_gone(f"the connection to {self.address} broke: {err}")
        else:
            self._mark_gone(f"the connection to {self.address} was closed")

    def _mark_gone(self, reason: str) -> None:
        if self._gone.is_set():
            return
        if self.state is Runstate.CONNECTED:
            log.warning("%s", reason)
        self._gone_reason = reason
        self._gone.set()
        self.state = Runstate.CLOSED
        for event in self._job_waiters.values():
            event.set()
        self._watchers.close_all()

    def _close(self) -> None:
        self.state = Runstate.CLOSED  # asked for: not worth a warning
        if self._bus is not None:
            self._bus.disconnect()
        self._mark_gone("the connection was closed")

    # -- messages -----------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        """Runs in the asyncio loop (inside trio) for every message; only reads signals."""
        if msg.message_type is not MessageType.SIGNAL:
            return
        if msg.member == "JobRemoved" and msg.interface == MANAGER_IFACE:
            _id, job, _unit, result = msg.body
            self._job_results[job] = result
            while len(self._job_results) > _KEPT_JOB_RESULTS:
                self._job_results.popitem(last=False)
            waiter = self._job_waiters.get(job)
            if waiter is not None:
                waiter.set()
        elif msg.member == "PropertiesChanged" and msg.path in self._watchers.by_path:
            _iface, changed, _invalidated = msg.body
            values = {k: v.value for k, v in changed.items() if k in STATUS_PROPERTIES}
            if values:
                self._watchers.publish(msg.path, values)
        elif msg.member == "NameOwnerChanged" and msg.body[0] == BUS_NAME and not msg.body[2]:
            self._mark_gone(f"the systemd manager left the bus at {self.address}")

    async def _call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        destination: str = BUS_NAME,
        path: str = MANAGER_PATH,
        interface: str = MANAGER_IFACE,
        timeout: float | None = None,
    ) -> list[Any]:
        self._require(Runstate.CONNECTED)
        assert self._bus is not None
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        limit = self.call_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                async with self._in_flight:
                    reply = await trio_asyncio.aio_as_trio(self._bus.call)(msg)
        except trio.TooSlowError:
            raise SystemdTimeoutError(member, limit) from None
        except Exception as err:
            self._raise_if_gone(member, err)
            raise
        return self._body(member, reply, body)

    async def _gets(self, properties: Sequence[tuple[str, str, str]]) -> list[Any]:
        """Many property Gets ((object path, interface, property)) in one crossing to asyncio,
        pipelined on the bus: each value, or the SystemdError its reply was. A hundred VMs'
        Gets one by one cost a trio task and an asyncio task each, the most of a `ps`."""
        self._require(Runstate.CONNECTED)
        bus = self._bus
        assert bus is not None
        if not properties:
            return []
        messages = [
            Message(
                destination=BUS_NAME,
                path=path,
                interface=PROPERTIES_IFACE,
                member="Get",
                signature="ss",
                body=[interface, name],
            )
            for path, interface, name in properties
        ]

        async def send_all() -> list[Message | BaseException | None]:
            pending = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)  # as _in_flight bounds the others

            async def one(message: Message) -> Message | None:
                async with pending:
                    return await bus.call(message)

            return await asyncio.gather(*(one(m) for m in messages), return_exceptions=True)

        try:
            with trio.fail_after(self.call_timeout):
                async with self._in_flight:
                    replies = await trio_asyncio.aio_as_trio(send_all)()
        except trio.TooSlowError:
            raise SystemdTimeoutError("Get", self.call_timeout) from None
        values: list[Any] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                self._raise_if_gone("Get", reply)
                raise reply
            try:
                values.append(self._body("Get", reply, ())[0].value)
            except (NoSuchUnitError, BusCallError) as err:
                values.append(err)
        return values

    def _raise_if_gone(self, member: str, err: BaseException) -> None:
        assert self._bus is not None
        if self._gone.is_set() or self._bus.connected is False:
            self._mark_gone(f"the connection to {self.address} was lost")
            raise ManagerGoneError(f"{member}: {self._gone_reason}") from err

    def _body(self, member: str, reply: Message | None, body: Sequence[Any]) -> list[Any]:
        """A reply's body, or the SystemdError it carries."""
        if reply is None:  # only for NO_REPLY_EXPECTED calls, which we never make
            raise BusCallError(member, "no-reply", "no reply")
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or "unknown"
            text = str(reply.body[0]) if reply.body else ""
            if name in GONE_ERRORS:
                self._mark_gone(f"the systemd manager at {self.address} is gone ({name})")
                raise ManagerGoneError(f"{member}: {text or name}")
            if name == "org.freedesktop.systemd1.NoSuchUnit":
                raise NoSuchUnitError(text, body[0] if body else "")
            if name == "org.freedesktop.systemd1.UnitExists":
                raise UnitExistsError(text, body[0] if body else "")
            raise BusCallError(member, name, text)
        return list(reply.body)

    async def _job_result(self, job: str, operation: str, timeout: float) -> str:
        """Wait for JobRemoved of ``job`` (which may have come already) and give its result."""
        if job not in self._job_results:
            event = self._job_waiters.setdefault(job, trio.Event())
            try:
                with trio.fail_after(timeout):
                    await event.wait()
            except trio.TooSlowError:
                raise SystemdTimeoutError(operation, timeout) from None
            finally:
                self._job_waiters.pop(job, None)
        if job not in self._job_results:
            raise ManagerGoneError(f"{operation}: {self._gone_reason}")
        return self._job_results.pop(job)

    # -- units --------------------------------------------------------------------------------

    async def start(
        self,
        unit: TransientUnit,
        *,
        timeout: float = 30.0,
        settle: float = 0.0,
        mode: str = "fail",
    ) -> UnitStatus:
        """Start a transient unit and wait for its start job; return its status.

        ``settle``: also wait that long and fail if the unit stops meanwhile (a command that
        dies at once). A failure raises UnitStartError with how the unit ended and its last
        journal lines. Cancelled, it stops the unit again, so that none is left behind.
        """
        path = unit_object_path(unit.name)
        status = UnitStatus(unit.name)
        with self._watchers.register([path]) as updates:
            try:
                (job,) = await self._call(
                    "StartTransientUnit",
                    "ssa(sv)a(sa(sv))",
                    [unit.name, mode, unit.properties(), []],
                    timeout=timeout,
                )
                result = await self._job_result(job, f"starting {unit.name}", timeout)
                status = drain(status, updates)
                if result != "done":
                    journal = await self._journal(unit.name, status.exec_main_pid)
                    raise UnitStartError(unit.name, result, status, journal)
                if settle > 0:
                    status = await self._settle(status, updates, settle)
                    if status.has_stopped:
                        journal = await self._journal(unit.name, status.exec_main_pid)
                        raise UnitStartError(unit.name, "exited", status, journal)
            except trio.Cancelled:
                with trio.CancelScope(shield=True):
                    await self._discard(unit.name)
                raise
        return await self._latest(unit.name, status)

    async def _settle(
        self,
        status: UnitStatus,
        updates: trio.MemoryReceiveChannel[dict[str, Any]],
        settle: float,
    ) -> UnitStatus:
        with trio.move_on_after(settle):
            async for changed in updates:
                status = status.updated(changed)
                if status.has_stopped:
                    break
        if self._gone.is_set():
            raise ManagerGoneError(self._gone_reason)
        return status

    async def _discard(self, name: str) -> None:
        """Best effort, bounded: stop a unit we were starting when we were cancelled."""
        with trio.move_on_after(self.call_timeout):
            try:
                await self.stop(name, timeout=self.call_timeout)
            except (NoSuchUnitError, ManagerGoneError, ConnectionStateError):
                return
            except Exception:  # cleanup must not hide the cancellation
                log.warning("could not stop %s after a cancelled start", name, exc_info=True)
                return
            try:
                await self.reset_failed(name)
            except Exception:
                return

    async def stop(self, name: str, *, timeout: float = 120.0) -> UnitStatus:
        """Stop a unit and wait until it has; stopping a unit that is not there is no error.

        ``timeout`` must exceed the unit's TimeoutStopSec (systemd kills it then).
        """
        path = unit_object_path(name)
        status = UnitStatus(name)
        with self._watchers.register([path]) as updates:
            try:
                (job,) = await self._call("StopUnit", "ss", [name, "replace"])
            except NoSuchUnitError:
                return status
            result = await self._job_result(job, f"stopping {name}", timeout)
            status = drain(status, updates)
        if result != "done":
            raise JobFailedError(name, "stop", result)
        return await self._latest(name, status)

    async def _latest(self, name: str, observed: UnitStatus) -> UnitStatus:
        """The unit's status now, or what its signals said last if it has been collected."""
        status = await self.status(name)
        return observed if not status.exists else status

    async def kill(self, name: str, signum: int = signal.SIGTERM, *, whom: str = "all") -> None:
        """Send ``signum`` to the unit's processes (``whom``: main, control or all)."""
        await self._call("KillUnit", "ssi", [name, whom, int(signum)])

    async def reset_failed(self, name: str) -> None:
        await self._call("ResetFailedUnit", "s", [name])

    async def status(self, name: str) -> UnitStatus:
        """The unit's state now; a unit systemd does not know has load_state "not-found"."""
        path = unit_object_path(name)
        (unit_props,) = await self._call(
            "GetAll", "s", [UNIT_IFACE], path=path, interface=PROPERTIES_IFACE
        )
        status = UnitStatus(name).updated({k: v.value for k, v in unit_props.items()})
        if status.exists and name.endswith(".service"):
            (svc_props,) = await self._call(
                "GetAll", "s", [SERVICE_IFACE], path=path, interface=PROPERTIES_IFACE
            )
            status = status.updated({k: v.value for k, v in svc_props.items()})
        return status

    async def started(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """{unit: (ActiveEnterTimestamp in µs, NRestarts)} of loaded services: what `ps`
        shows of running units, in two small Gets each (rather than the ~300 properties of
        `status`), all in one batch. A unit not loaded (collected), or never active, is left out."""
        wanted = list(dict.fromkeys(names))
        gets = []
        for name in wanted:
            path = unit_object_path(name)
            gets += [(path, UNIT_IFACE, "ActiveEnterTimestamp"), (path, SERVICE_IFACE, "NRestarts")]
        values = await self._gets(gets)
        found = {}
        for i, name in enumerate(wanted):
            since, restarts = values[2 * i], values[2 * i + 1]
            errors = isinstance(since, Exception) or isinstance(restarts, Exception)
            if not errors and since:  # systemd answers 0 for a unit it has not loaded
                found[name] = (int(since), int(restarts))
        return found

    async def list_units(self, prefix: str) -> list[UnitSummary]:
        """The loaded units whose names start with ``prefix``, sorted by name."""
        (rows,) = await self._call("ListUnits")
        found = [
            UnitSummary(
                name=r[0],
                description=r[1],
                load_state=r[2],
                active_state=ActiveState.parse(r[3]),
                sub_state=r[4],
            )
            for r in rows
            if r[0].startswith(prefix)
        ]
        return sorted(found, key=lambda u: u.name)

    @asynccontextmanager
    async def watch(self, names: Iterable[str]) -> AsyncIterator[UnitWatch]:
        """Follow the state of units: first each one's current status, then every change."""
        names = list(dict.fromkeys(names))
        paths = {unit_object_path(n): n for n in names}
        with self._watchers.register(paths) as updates:
            current = await self._initial(names, paths, updates)
            yield UnitWatch(lambda: self._gone_reason, current, paths, updates)

    async def _initial(
        self,
        names: list[str],
        paths: dict[str, str],
        updates: trio.MemoryReceiveChannel[dict[str, Any]],
    ) -> dict[str, UnitStatus]:
        """Each unit's status as of a moment when none of them was changing.

        A change that arrives while a GetAll is under way may be older than its reply or
        newer (signals are published as they are read, the reply's waiter resumes later): a
        unit that changed meanwhile is read again, until none did (a unit that never stops
        changing gets the changes applied to its last reading, in the order they came)."""
        current: dict[str, UnitStatus] = {}
        stale = list(names)
        came: list[dict[str, Any]] = []
        for _ in range(WATCH_REREADS):
            for name in stale:
                current[name] = await self.status(name)
            came = []
            while True:
                try:
                    came.append(updates.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            stale = list(dict.fromkeys(paths[c["_path"]] for c in came))
            if not stale:
                return current
        for changed in came:
            name = paths[changed["_path"]]
            current[name] = current[name].updated(changed)
        return current

    async def _journal(self, name: str, pid: int = 0) -> list[str]:
        return await last_lines(name, user=self.user, directory=self.journal_dir, pid=pid)


@asynccontextmanager
async def connect(
    bus: Literal["user", "system"] | str = "user",
    *,
    timeout: float = 10.0,
    call_timeout: float = 10.0,
    journal_dir: Path | None = None,
) -> AsyncIterator[SystemdManager]:
    """Connect to the user manager, the system manager, or a manager at a D-Bus address.

    ``journal_dir``: where the manager's journal is, when journalctl cannot find it itself
    (a private manager in tests).
    """
    address, user = bus_address(bus)
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            manager = SystemdManager(
                address, user=user, journal_dir=journal_dir, call_timeout=call_timeout
            )
            await manager._open(nursery, timeout)
            try:
                yield manager
            finally:
                manager._close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _raise_sole(group)


def _raise_sole(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one exception that the nurseries wrapped, as callers expect it.

    Our nurseries (and trio-asyncio's) wrap whatever ends them in exception groups; a caller
    of ``connect`` wants the ManagerGoneError or its own error back, not a group.
    """
    sole: BaseException = group
    while isinstance(sole, BaseExceptionGroup) and len(sole.exceptions) == 1:
        sole = sole.exceptions[0]
    if sole is group:
        raise group
    context = sole.__context__
    try:
        raise sole
    finally:
        sole.__context__ = context
