"""The VMs a project's supervisor watches: ``supervised-vms.json``, written by `up` and
`destroy` (whole, atomically), read by the supervisor when it changes. One reader, one writer."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from orchestrator.state.files import atomic_write


class Watched(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One VM the supervisor watches."""

    qmp: str  # its supervision monitor's socket
    unit: str
    restart: str = "no"  # the restart: policy its QEMU was started with


_decode_vms = msgspec.json.Decoder(dict[str, Watched]).decode


def read_supervised(path: Path) -> dict[str, Watched]:
    """The table; {} when there is none yet. OSError or msgspec's errors when unreadable."""
    try:
        return _decode_vms(path.read_bytes())
    except FileNotFoundError:
        return {}


def write_supervised(path: Path, vms: Mapping[str, Watched]) -> None:
    atomic_write(path, msgspec.json.encode(dict(sorted(vms.items()))), mode=0o600)
