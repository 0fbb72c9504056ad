"""Run an async command under trio so that Ctrl-C and SIGTERM never hang it.

trio would deliver KeyboardInterrupt anywhere, including inside trio-asyncio's loop, where it
can leave the process hanging (see HOSTING.md). Instead a signal-receiver task cancels the
command's scope: cleanup (in shielded scopes, each with a deadline) runs normally and the
command ends with ``Interrupted``. A second signal during cleanup, arriving after the
receiver is gone, interrupts at the next checkpoint.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from orchestrator import QemuComposeError

T = TypeVar("T")


class Interrupted(QemuComposeError):
    """The command was stopped by SIGINT or SIGTERM; it cleaned up first."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_status = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        else:
            found.append(exc)
    return found


def run(async_fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``async_fn`` in a fresh trio run; raise Interrupted when a signal stopped it."""
    import trio

    received: list[int] = []
    result: list[T] = []

    async def watch_signals(
        scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                received.append(signum)
                scope.cancel()
                return

    async def root() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals, nursery.cancel_scope)
            result.append(await async_fn())
            nursery.cancel_scope.cancel()

    try:
        trio.run(root, restrict_keyboard_interrupt_to_checkpoints=True)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:  # a nursery wrapped the one error: give the command that error
            raise leaves[0] from None
        raise
    if received and not result:
        raise Interrupted(received[0])
    return result[0]
