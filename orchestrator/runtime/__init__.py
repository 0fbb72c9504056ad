"""The runtime: one session per command against systemd, QEMU and the guests.

observe -> plan (pure) -> execute: `up`; teardown: `stop`, `destroy`, `network rm`; faults:
`pause`, `unpause`, `kill`, `fault ...` (runtime.faults); queries: `ps`, `network ls`,
`inspect`. Names are imported on first use: importing the package (or its options) does not
pull systemd, QEMU and the network in (the CLI starts fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator._lazy import lazy_exports

if TYPE_CHECKING:
    from .execute import UpError, UpResult, dry_run, up
    from .faults import kill, parse_signal, pause, unpause
    from .options import DEFAULT_READY_TIMEOUT, Connection, PlanOptions, UpOptions
    from .plan import Action, ActionKind, UpPlan
    from .query import NetworkRow, VmRow, networks, ps
    from .teardown import destroy, remove_networks, stop

_EXPORTS = {
    "UpError": ".execute",
    "UpResult": ".execute",
    "dry_run": ".execute",
    "up": ".execute",
    "kill": ".faults",
    "parse_signal": ".faults",
    "pause": ".faults",
    "unpause": ".faults",
    "DEFAULT_READY_TIMEOUT": ".options",
    "Connection": ".options",
    "PlanOptions": ".options",
    "UpOptions": ".options",
    "Action": ".plan",
    "ActionKind": ".plan",
    "UpPlan": ".plan",
    "NetworkRow": ".query",
    "VmRow": ".query",
    "networks": ".query",
    "ps": ".query",
    "destroy": ".teardown",
    "remove_networks": ".teardown",
    "stop": ".teardown",
}
__all__ = [
    "DEFAULT_READY_TIMEOUT",
    "Action",
    "ActionKind",
    "Connection",
    "NetworkRow",
    "PlanOptions",
    "UpError",
    "UpOptions",
    "UpPlan",
    "UpResult",
    "VmRow",
    "destroy",
    "dry_run",
    "kill",
    "networks",
    "parse_signal",
    "pause",
    "ps",
    "remove_networks",
    "stop",
    "unpause",
    "up",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
