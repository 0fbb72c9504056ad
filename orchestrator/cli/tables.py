"""The tables that `ps`, `network ls` and `image ls` print for people (scripts use --format
json). Pure: rows in, text out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.api import ImageInfo, NetworkRow, VmRow


def vm_table(rows: Sequence[VmRow]) -> str:
    lines = [
        f"{'NAME':<20} {'STATUS':<12} {'ADDRESSES':<24} {'SSH':<6} {'CPU':<4} {'MEMORY':<7} "
        f"{'DISK':<8} UNIT"
    ]
    for row in rows:
        addresses = ",".join(row.addresses.values()) or "-"
        lines.append(
            f"{row.name:<20} {row.status:<12} {addresses:<24} {row.ssh_port or '-'!s:<6} "
            f"{row.cpu or '-'!s:<4} {row.memory or '-'!s:<7} {row.disk or '-':<8} {row.unit}"
        )
    return "\n".join(lines) + "\n"


def network_table(rows: Sequence[NetworkRow]) -> str:
    lines = [f"{'NAME':<16} {'SUBNET':<18} {'BRIDGE':<16} {'LINK':<8} {'DHCP':<10} VMS"]
    for row in rows:
        link = {True: "up", False: "absent", None: "?"}[row.bridge_exists]
        name = row.name if row.in_file else f"{row.name} (orphan)"
        lines.append(
            f"{name:<16} {row.subnet or '-':<18} {row.bridge:<16} {link:<8} {row.dhcp:<10} "
            f"{','.join(row.vms) or '-'}"
        )
    return "\n".join(lines) + "\n"


def image_table(rows: Sequence[ImageInfo]) -> str:
    lines = [f"{'NAME':<44} {'SIZE':>9} {'FORMAT':<7} {'LAST USED':<17} {'VMS':>3} SOURCE"]
    for row in rows:
        used = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(row.last_used)) if row.last_used else "-"
        )
        size = f"{row.size / (1 << 20):.1f}M"
        vms = "?" if row.users_unknown else str(len(row.in_use_by))
        lines.append(
            f"{row.name:<44} {size:>9} {row.format:<7} {used:<17} {vms:>3} {row.source or '-'}"
        )
    return "\n".join(lines) + "\n"


def json_lines(rows: object) -> str:
    import msgspec

    return msgspec.json.encode(rows).decode() + "\n"
