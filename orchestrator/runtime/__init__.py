"""The runtime: one session per command against systemd, QEMU and the guests.

observe -> plan (pure) -> execute: `up`; teardown: `stop`, `destroy`, `network rm`; queries:
`ps`, `network ls`, `inspect`. Public names are imported on first use (the CLI starts fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .execute import UpError, UpResult, up
    from .query import NetworkRow, VmRow, networks, ps
    from .session import DEFAULT_READY_TIMEOUT, Settings
    from .teardown import destroy, remove_networks, stop

_EXPORTS = {
    "DEFAULT_READY_TIMEOUT": "session",
    "NetworkRow": "query",
    "Settings": "session",
    "UpError": "execute",
    "UpResult": "execute",
    "VmRow": "query",
    "destroy": "teardown",
    "networks": "query",
    "ps": "query",
    "remove_networks": "teardown",
    "stop": "teardown",
    "up": "execute",
}

__all__ = [
    "DEFAULT_READY_TIMEOUT",
    "NetworkRow",
    "Settings",
    "UpError",
    "UpResult",
    "VmRow",
    "destroy",
    "networks",
    "ps",
    "remove_networks",
    "stop",
    "up",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
