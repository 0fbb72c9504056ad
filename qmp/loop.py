"""The trio-asyncio loop qemu.qmp (and dbus-fast) run in, for trio callers.

Apart from the session so that a caller that only needs the loop (a D-Bus client) does not
import qemu.qmp.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import trio_asyncio


@asynccontextmanager
async def asyncio_loop() -> AsyncIterator[None]:
    """Make sure a trio-asyncio loop runs here: reuse the caller's, else open one."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    try:
        async with trio_asyncio.open_loop():
            yield
    except BaseExceptionGroup as group:
        _raise_sole(group)


def _raise_sole(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one exception trio-asyncio's nurseries wrapped, as callers expect it."""
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
