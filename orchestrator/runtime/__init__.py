"""The runtime: one session per command against systemd, QEMU and the guests.

observe -> plan (pure) -> execute: `up`; teardown: `stop`, `destroy`, `network rm`; queries:
`ps`, `network ls`, `inspect`. Public names are imported on first use (the CLI starts fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import (
        DEFAULT_READY_TIMEOUT,
        NetworkRow,
        Settings,
        UpError,
        UpResult,
        VmRow,
        destroy,
        networks,
        ps,
        remove_networks,
        stop,
        up,
    )

_EXPORTS = {
    "DEFAULT_READY_TIMEOUT": "engine",
    "NetworkRow": "engine",
    "Settings": "engine",
    "UpError": "engine",
    "UpResult": "engine",
    "VmRow": "engine",
    "destroy": "engine",
    "networks": "engine",
    "ps": "engine",
    "remove_networks": "engine",
    "stop": "engine",
    "up": "engine",
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
