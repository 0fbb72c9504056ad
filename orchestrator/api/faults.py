"""Faults from Python, for test scripts: inject, assert, heal.

    faults = api.faults(project)
    async with faults.partition(["a", "b"], ["c"]):   # healed on leaving, raise or not
        ...
    async with faults.link_down("db", network="lan"):
        ...
    async with faults.net("db", delay="200ms", loss="1%"):
        ...
    await faults.throttle("db", iops=10)              # stays until cleared
    await faults.clear()

Each of link_down, net, throttle, disk_errors, partition and paused returns an injection:
awaited, the fault is made and stays (until `clear`, `heal` or the VM's stop); used with
``async with``, it is undone when the block ends, also when it raises or is cancelled.
Errors are the CLI's (UsageError for a VM that does not run or a network it is not on,
FaultError naming the VMs QEMU refused).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from orchestrator.config.project import Project
from orchestrator.progress import Reporter

from .vms import EventCallback, _connection

if TYPE_CHECKING:
    from orchestrator.runtime.faults import FaultRow

T = TypeVar("T")
UNDO_TIMEOUT = 60.0  # seconds an undo on leaving a block may take, even when cancelled


class Injection(Generic[T]):
    """A fault to make: ``await`` it to make it, or ``async with`` it to have it undone.

    ``undo`` gets what ``make`` returned, or None when ``make`` failed or was cancelled
    halfway: then it undoes what it can of what was asked (a VM that no longer runs has
    nothing left to undo)."""

    def __init__(
        self, make: Callable[[], Awaitable[T]], undo: Callable[[T | None], Awaitable[Any]]
    ) -> None:
        self._make, self._undo = make, undo
        self._made: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._make().__await__()

    async def __aenter__(self) -> T:
        from orchestrator.errors import UsageError

        try:
            self._made = await self._make()
        except UsageError:
            raise  # refused before anything changed: the faults already there stay
        except BaseException as err:  # some VMs may have it: take it back from them
            await self._undo_keeping(err, None)
            raise
        return self._made

    async def __aexit__(self, kind: object, err: BaseException | None, tb: object) -> None:
        if err is not None:
            await self._undo_keeping(err, self._made)
            return  # (the block's exception goes on)
        await self._undoing(self._made)

    async def _undoing(self, made: T | None) -> None:
        import trio

        with trio.CancelScope(shield=True), trio.fail_after(UNDO_TIMEOUT):
            await self._undo(made)

    async def _undo_keeping(self, err: BaseException, made: T | None) -> None:
        """Undo, without hiding ``err``: a failure to undo is a note on it."""
        try:
            await self._undoing(made)
        except Exception as undo_err:
            err.add_note(f"undoing the fault failed too: {undo_err}")


class Faults:
    """The faults of one project (see the module's docstring); made by ``api.faults``."""

    def __init__(
        self,
        project: Project,
        *,
        wait_lock: bool = False,
        bus: str = "user",
        on_event: EventCallback | None = None,
    ) -> None:
        self.project = project
        self._connection = _connection(bus, wait_lock)
        self._on_event = on_event

    def _report(self) -> Reporter:
        return Reporter(self._on_event)

    def link_down(self, *vms: str, network: str | None = None) -> Injection[list[str]]:
        """The VMs' NICs lose their carrier (on ``network``, "user" for the user-mode NIC,
        or all); undone: the links up again."""
        from orchestrator.runtime import faults

        async def make() -> list[str]:
            return await faults.link(
                self.project, vms, network, self._connection, self._report(), up=False
            )

        async def undo(done: list[str] | None) -> None:
            if done == []:
                return  # nothing was changed: nothing to undo (and [] would mean all)
            await faults.link(
                self.project, _undoing(vms, done), network, self._connection,
                self._report(), up=True, lenient=True,
            )  # fmt: skip

        return Injection(make, undo)

    async def link_up(self, *vms: str, network: str | None = None) -> list[str]:
        from orchestrator.runtime import faults

        return await faults.link(
            self.project, vms, network, self._connection, self._report(), up=True
        )

    def throttle(
        self, *vms: str, drive: str = "root", iops: int = 0, bps: int | str = 0
    ) -> Injection[list[str]]:
        """A disk of the VMs ("root" or a named volume) limited to ``iops`` operations and
        ``bps`` bytes a second (a number, or a size such as "1M"); undone: unthrottled."""
        from orchestrator.runtime import faults

        async def make() -> list[str]:
            return await faults.disk(
                self.project, vms, drive, self._connection, self._report(), iops=iops, bps=bps
            )

        async def undo(done: list[str] | None) -> None:
            if done == []:
                return  # nothing was changed: nothing to undo (and [] would mean all)
            await faults.disk(
                self.project, _undoing(vms, done), drive, self._connection,
                self._report(), lenient=True,
            )  # fmt: skip

        return Injection(make, undo)

    def disk_errors(
        self, *vms: str, drive: str = "root", kind: str = "write"
    ) -> Injection[list[str]]:
        """A disk of the VMs ("root" or a named volume) fails its reads, writes or both
        (``kind``: "read", "write", "all") with EIO; undone: no more errors."""
        from orchestrator.runtime import faults

        async def make() -> list[str]:
            return await faults.disk_errors(
                self.project, vms, drive, self._connection, self._report(), kind=kind
            )

        async def undo(done: list[str] | None) -> None:
            if done == []:
                return  # nothing was changed: nothing to undo (and [] would mean all)
            await faults.disk_errors(
                self.project, _undoing(vms, done), drive, self._connection,
                self._report(), kind=None, lenient=True,
            )  # fmt: skip

        return Injection(make, undo)

    async def clear_disk_errors(self, *vms: str, drive: str = "root") -> list[str]:
        """The VMs' disk no longer fails."""
        from orchestrator.runtime import faults

        return await faults.disk_errors(
            self.project, vms, drive, self._connection, self._report(), kind=None
        )

    def net(
        self,
        *vms: str,
        network: str | None = None,
        direction: str | None = None,
        delay: str | None = None,
        jitter: str | None = None,
        loss: str | None = None,
        duplicate: str | None = None,
        corrupt: str | None = None,
        reorder: str | None = None,
        rate: str | None = None,
    ) -> Injection[list[str]]:
        """The VMs' traffic shaped as netem would (tc's spellings: delay="200ms",
        loss="5%", rate="1mbit"), on ``network`` ("user": the user-mode NIC) or on every
        bridge network of theirs, in both directions or one (``direction``: "egress", what
        the VM sends; "ingress", what it receives); undone: unshaped."""
        from orchestrator.runtime import faults

        shape = faults.shape_of(delay=delay, jitter=jitter, loss=loss, duplicate=duplicate,
                                corrupt=corrupt, reorder=reorder, rate=rate)  # fmt: skip
        directions = _directions(direction)

        async def make() -> list[str]:
            return await faults.net(
                self.project, vms, network, self._connection, self._report(),
                shape=shape, directions=directions,
            )  # fmt: skip

        async def undo(done: list[str] | None) -> None:
            if done == []:
                return  # nothing was changed: nothing to undo (and [] would mean all)
            await faults.net(
                self.project, _undoing(vms, done), network, self._connection,
                self._report(), shape=None, directions=directions, lenient=True,
            )  # fmt: skip

        return Injection(make, undo)

    async def unshape(
        self, *vms: str, network: str | None = None, direction: str | None = None
    ) -> list[str]:
        """The VMs' traffic no longer shaped (on ``network`` and ``direction``, or all)."""
        from orchestrator.runtime import faults

        return await faults.net(
            self.project, vms, network, self._connection, self._report(),
            shape=None, directions=_directions(direction),
        )  # fmt: skip

    def partition(
        self, *groups: Sequence[str], network: str | None = None, one_way: bool = False
    ) -> Injection[Any]:
        """Traffic dropped between the groups of VMs (only from the first group to the others
        with ``one_way``) on their bridge networks, or on ``network``; undone: this partition
        healed (not the others)."""
        from orchestrator.runtime import faults

        async def make() -> Any:
            return await faults.partition(
                self.project, groups, network, self._connection, self._report(), one_way=one_way
            )

        async def undo(made: Any) -> None:
            if made is not None:  # (a partition is made whole or not at all)
                await faults.heal(
                    self.project, None, self._connection, self._report(), only=made.id
                )

        return Injection(make, undo)

    async def heal(self, network: str | None = None) -> None:
        """End every partition (those on ``network``, if given)."""
        from orchestrator.runtime import faults

        await faults.heal(self.project, network, self._connection, self._report())

    def paused(self, *vms: str) -> Injection[list[str]]:
        """The VMs' guests frozen (QMP stop); undone: running again."""
        from orchestrator import runtime

        async def make() -> list[str]:
            return await runtime.pause(self.project, vms, self._connection, self._report())

        async def undo(done: list[str] | None) -> None:
            if done == []:
                return  # nothing was changed: nothing to undo (and [] would mean all)
            await runtime.unpause(
                self.project, _undoing(vms, done), self._connection, self._report(),
                lenient=True,
            )  # fmt: skip

        return Injection(make, undo)

    async def panic(self, *vms: str) -> list[str]:
        """A kernel panic in each guest (an NMI), once it has said so (GUEST_PANICKED)."""
        from orchestrator.runtime import faults

        return await faults.panic(self.project, vms, self._connection, self._report())

    async def ls(self) -> list[FaultRow]:
        """The faults in force."""
        from orchestrator.runtime import faults

        return await faults.ls(self.project, self._connection)

    async def clear(self, *vms: str) -> list[str]:
        """Undo every fault of the VMs (all when none is named); returns those that had one."""
        from orchestrator.runtime import faults

        return await faults.clear(self.project, vms, self._connection, self._report())


def _undoing(asked: tuple[str, ...], done: list[str] | None) -> list[str] | tuple[str, ...]:
    """The VMs an undoing acts on: those the make changed, or (it failed) those asked."""
    return asked if done is None else done


def _directions(direction: str | None) -> tuple[str, ...]:
    from orchestrator.errors import UsageError

    if direction is None:
        return ("egress", "ingress")
    if direction not in ("egress", "ingress"):
        raise UsageError(f"a direction is egress or ingress, not {direction!r}")
    return (direction,)


def faults(
    project: Project,
    *,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> Faults:
    """The project's faults, to make and undo from a script (see Faults)."""
    return Faults(project, wait_lock=wait_lock, bus=bus, on_event=on_event)
