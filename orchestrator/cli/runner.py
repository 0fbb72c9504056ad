"""Run an async command under trio so that Ctrl-C and SIGTERM never hang it.

trio would deliver KeyboardInterrupt anywhere, including inside trio-asyncio's loop, where it
can leave the process hanging (see HOSTING.md). Instead a signal-receiver task, there for the
whole run, cancels the command's scope at the first signal: cleanup (in shielded scopes, each
with a deadline) runs normally and the command ends with ``Interrupted``. A later signal is
for the cleanup to hear (`another_signal`): attached `up` stops its VMs without grace then.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from orchestrator import QemuComposeError

if TYPE_CHECKING:
    import trio

T = TypeVar("T")


class Interrupted(QemuComposeError):
    """The command was stopped by SIGINT or SIGTERM; it cleaned up first."""

    def __init__(self, signum: int, *, expected: bool = False) -> None:
        self.signum = signum
        self.exit_status = 128 + signum
        self.expected = expected  # the way the command ends (attached `up`): nothing to say
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        else:
            found.append(exc)
    return found


@dataclass
class _Signals:
    """What one run received: the first signal cancels the command, each later one sets
    ``again`` (a command that cleans up may cut its cleanup short)."""

    received: list[int] = field(default_factory=list)
    again: trio.Event | None = None  # made inside the run
    expected: bool = False  # the command ended as a signal asks it to: no error


_current: ContextVar[_Signals | None] = ContextVar("qemu_compose_signals", default=None)


def interrupted() -> bool:
    """A signal stopped (or is stopping) the command now running."""
    current = _current.get()
    return current is not None and bool(current.received)


def ended_as_asked() -> None:
    """The signal that stopped the command is how it ends (attached `up`, all stopped
    cleanly): its exit status says so (128 + the signal), no error is printed."""
    current = _current.get()
    if current is not None:
        current.expected = True


async def another_signal() -> None:
    """Until one more SIGINT or SIGTERM arrives after the one that interrupted the command."""
    import trio

    current = _current.get()
    if current is None or current.again is None:
        await trio.sleep_forever()
    else:
        await current.again.wait()


def run(async_fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``async_fn`` in a fresh trio run; raise Interrupted when a signal stopped it.
    The signals are received for the whole run: none ever raises KeyboardInterrupt."""
    import trio

    signals = _Signals()
    result: list[T] = []

    async def watch_signals(
        scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            task_status.started()
            async for signum in received:
                signals.received.append(signum)
                if len(signals.received) == 1:
                    scope.cancel()
                elif signals.again is not None:
                    signals.again.set()

    async def root() -> None:
        signals.again = trio.Event()
        _current.set(signals)
        command = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals, command)
            with command:
                result.append(await async_fn())
            nursery.cancel_scope.cancel()

    try:
        trio.run(root, restrict_keyboard_interrupt_to_checkpoints=True)
    except BaseExceptionGroup as group:
        from orchestrator import QemuComposeError, SeveralErrors

        leaves = _leaves(group)
        if len(leaves) == 1:  # a nursery wrapped the one error: give the command that error
            raise leaves[0] from None
        if all(isinstance(e, QemuComposeError) for e in leaves):  # two VMs failed, say
            raise SeveralErrors([e for e in leaves if isinstance(e, QemuComposeError)]) from group
        raise
    if signals.received and not result:
        raise Interrupted(signals.received[0], expected=signals.expected)
    return result[0]
