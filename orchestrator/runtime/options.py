"""What each command is asked to do: its options, one dataclass per concern.

Every command reaches systemd the same way (Connection); `up` and its dry run are planned
with PlanOptions; `up` itself adds how long to wait and how much at once (UpOptions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

QMP_ANSWER = 5.0  # seconds a running QEMU has to greet on its control monitor
DEFAULT_READY_TIMEOUT = 900.0  # SSH under TCG takes a minute; several at once, more


class Connection(msgspec.Struct, frozen=True):
    """How a command reaches systemd, and whether it waits for the project's lock."""

    bus: str = "user"  # user, system, or a D-Bus address
    journal_dir: Path | None = None  # where a private user manager's journal is
    wait_lock: bool = False


class PlanOptions(msgspec.Struct, frozen=True):
    services: Sequence[str] = ()  # the VMs named (and what they depend on); none: all
    no_recreate: bool = False
    force_recreate: bool = False
    remove_orphans: bool = False
    no_deps: bool = False  # only the VMs named, not what they depend on
    scale: Mapping[str, int] = {}  # definition -> replicas, for this up (up --scale)


class UpOptions(msgspec.Struct, frozen=True):
    plan: PlanOptions = PlanOptions()
    wait: bool = True  # until ready (SSH, healthchecks), not only started
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    parallel: int | None = None  # at most this many VMs starting at once
    # VM -> a saved state it starts from (snapshot restore, resume): no boot; all of them
    # loaded before any runs, then resumed together (or left paused)
    incoming: dict[str, str] = {}
    paused: bool = False
