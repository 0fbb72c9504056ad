"""A VM's memory and device state to a file and back: QEMU's migration stream, over a file
descriptor we pass (the file is ours to open, name and make whole; nothing reaches a shell).

`save_state` needs the VM stopped (QMP ``stop``) for a state of one instant; when it returns,
QEMU is ``postmigrate`` with its disks inactive, until ``cont`` takes them back. `load_state`
needs a QEMU started with ``-incoming defer`` and the same devices; when it returns, the VM
is ``paused`` at the saved instant, for ``cont``.

``shared_ram``: QEMU's ``x-ignore-shared`` capability, on for the one migration and off
again after: RAM in a shared memory backend (``share=on``) is left out of the stream (it is
somewhere else already: its file), and a loading QEMU takes its RAM as its own backend
has it (a private mapping of that file, say). Left on, a later save of the same VM would
leave its memory out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import trio

from .errors import QmpError
from .session import QmpSession

POLL = 0.02
CANCEL_TIMEOUT = 10.0
FD_NAME = "qemu-compose-state"
_ENDED = ("completed", "failed", "cancelled", "none")
UNLIMITED = 1 << 40  # bytes a second: QEMU's default limit (32 MiB/s) is for live migration


class MigrationError(QmpError):
    """QEMU could not write or read the state: the reason is QEMU's own."""


class Migration(msgspec.Struct, frozen=True):
    status: str
    seconds: float  # from the command until QEMU said completed
    transferred: int = 0  # bytes of RAM sent (as QEMU counts them)
    ram_total: int = 0  # bytes of guest RAM the stream covers (RAM it left out is not counted)


async def save_state(
    session: QmpSession, fd: int, *, timeout: float = 600.0, shared_ram: bool = False
) -> Migration:
    """Write the (stopped) VM's state to ``fd``; a MigrationError when QEMU refuses (a device
    that blocks migration, say) or fails (the file's disk is full). Whatever ends it early
    (an error, a cancellation) cancels the migration in QEMU too: it would go on with its
    own copy of the file, and leave the VM ``postmigrate`` once done."""
    async with _ignoring_shared(session, shared_ram):
        return await _save(session, fd, timeout)


async def _save(session: QmpSession, fd: int, timeout: float) -> Migration:
    started = time.monotonic()
    await session.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
    await session.send_fd(FD_NAME, fd)
    try:
        await session.execute("migrate", {"uri": f"fd:{FD_NAME}"})
    except QmpError:
        with contextlib.suppress(QmpError):  # refused: QEMU keeps the fd until told
            await session.execute("closefd", {"fdname": FD_NAME})
        raise
    try:
        return await _until_done(session, started, timeout)
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_TIMEOUT):
            await _cancel(session)
        raise


async def _cancel(session: QmpSession) -> None:
    """Cancel a migration under way and wait until QEMU says it ended."""
    with contextlib.suppress(QmpError):
        await session.execute("migrate_cancel")
        while True:  # (QEMU tells it by polling or by MIGRATION events; polling is simpler)
            if (await session.execute("query-migrate")).get("status") in _ENDED:
                return
            await trio.sleep(POLL)


async def load_state(
    session: QmpSession, fd: int, *, timeout: float = 600.0, shared_ram: bool = False
) -> Migration:
    """Read the state from ``fd`` into a QEMU waiting for it (``-incoming defer``)."""
    async with _ignoring_shared(session, shared_ram):
        started = time.monotonic()
        await session.send_fd(FD_NAME, fd)
        await session.execute("migrate-incoming", {"uri": f"fd:{FD_NAME}"})
        return await _until_done(session, started, timeout)


@contextlib.asynccontextmanager
async def _ignoring_shared(session: QmpSession, on: bool) -> AsyncIterator[None]:
    await _set_ignore_shared(session, on)  # off too: one left on (a save killed) is undone
    if not on:
        yield
        return
    try:
        yield
    finally:
        shielded = trio.CancelScope(shield=True)
        with shielded, trio.move_on_after(CANCEL_TIMEOUT), contextlib.suppress(QmpError):
            await _set_ignore_shared(session, False)  # (a QEMU gone saves nothing again)


async def _set_ignore_shared(session: QmpSession, on: bool) -> None:
    capability = {"capability": "x-ignore-shared", "state": on}
    await session.execute("migrate-set-capabilities", {"capabilities": [capability]})


async def _until_done(session: QmpSession, started: float, timeout: float) -> Migration:
    info: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            info = await session.execute("query-migrate")
            status = info.get("status", "")
            if status == "completed":
                ram = info.get("ram") or {}
                took = time.monotonic() - started
                sent, total = int(ram.get("transferred", 0)), int(ram.get("total", 0))
                return Migration(status, took, sent, total)
            if status in ("failed", "cancelled"):
                raise MigrationError(info.get("error-desc") or f"the migration {status}")
            await trio.sleep(POLL)
    raise MigrationError(f"not done within {timeout:g} s (last: {info.get('status', '?')})")
