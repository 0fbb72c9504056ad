"""The runtime: one session per command against systemd, QEMU and the guests.

observe -> plan (pure) -> execute: `up`; teardown: `stop`, `destroy`, `network rm`; queries:
`ps`, `network ls`, `inspect`. Only commands that act import it (the CLI starts fast).
"""

from .execute import UpError, UpResult, up
from .query import NetworkRow, VmRow, networks, ps
from .session import DEFAULT_READY_TIMEOUT, Settings
from .teardown import destroy, remove_networks, stop

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
