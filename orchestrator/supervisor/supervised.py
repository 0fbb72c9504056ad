"""The VMs a project's supervisor watches: ``supervised-vms.json``, written by `up` and
`destroy` (whole, atomically), read by the supervisor when it changes. One reader, one writer."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import msgspec

from orchestrator.state.files import atomic_write

# What the supervisor does, as a number: `up` restarts a running supervisor of another one
# (an upgrade), which would not keep health, or would keep it otherwise. Raise it with any
# change of what the supervisor keeps or how.
PROTOCOL = "2"  # 1: events and restarts; 2: health and runs kept (#14)
PROTOCOL_VARIABLE = "QEMU_COMPOSE_SUPERVISOR_PROTOCOL"


class Probe(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the supervisor probes a VM's health (supervisor.health has the rules)."""

    port: int  # the host port forwarded to its sshd
    user: str
    key: str  # the project's private key
    command: str | None = None  # its healthcheck, a shell line; None: that SSH answers
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    start_interval: float = 5.0

    def check(self) -> str:
        """What its health is judged by (who logs in, the command and the rules): a record
        kept under another check is not this one's."""
        rules = (self.user, self.command, self.interval, self.timeout, self.retries,
                 self.start_period, self.start_interval)  # fmt: skip
        return hashlib.sha256(msgspec.json.encode(rules)).hexdigest()[:16]


class Watched(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One VM the supervisor watches."""

    qmp: str  # its supervision monitor's socket
    unit: str
    restart: str = "no"  # the restart: policy its QEMU was started with
    probe: Probe | None = None  # None: it has no health (no OS, or its check disabled)


_decode_vms = msgspec.json.Decoder(dict[str, Watched]).decode


def read_supervised(path: Path) -> dict[str, Watched]:
    """The table; {} when there is none yet. OSError or msgspec's errors when unreadable."""
    try:
        return _decode_vms(path.read_bytes())
    except FileNotFoundError:
        return {}


def write_supervised(path: Path, vms: Mapping[str, Watched]) -> None:
    atomic_write(path, msgspec.json.encode(dict(sorted(vms.items()))), mode=0o600)
