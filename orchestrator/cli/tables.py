"""The tables that `ps`, `network ls` and `image ls` print for people (scripts use --format
json). Pure: rows in, text out."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.api import FaultRow, ImageInfo, NetworkRow, SnapshotRow, TemplateRow, VmRow


def vm_table(rows: Sequence[VmRow]) -> str:
    columns = [("NAME", "<20"), ("STATUS", "<26"), ("PORTS", "<24"), ("ADDRESSES", "<16"),
               ("SSH", "<6"), ("CPU", "<4"), ("MEMORY", "<7"), ("DISK", "<6"),
               ("UNIT", "")]  # fmt: skip
    if any(row.faults for row in rows):  # a column only while some fault is in force
        columns.insert(-1, ("FAULTS", "<24"))

    def cells(row: VmRow) -> list[object]:
        addresses = ",".join(row.addresses.values()) or "-"
        found: list[object] = [
            row.name, row.status, ",".join(row.ports) or "-", addresses, row.ssh_port or "-",
            row.cpu or "-", row.memory or "-", row.disk or "-", row.unit,
        ]  # fmt: skip
        if len(columns) > len(found):
            found.insert(-1, "; ".join(row.faults) or "-")
        return found

    return _table(columns, map(cells, rows))


def fault_table(rows: Sequence[FaultRow]) -> str:
    columns = [("KIND", "<10"), ("VMS", "<24"), ("SINCE", "<10"), ("FAULT", "")]

    def cells(row: FaultRow) -> list[object]:
        since = time.strftime("%H:%M:%S", time.localtime(row.since)) if row.since else "-"
        return [row.kind, ",".join(row.vms), since, row.detail]

    return _table(columns, map(cells, rows)) if rows else "no faults in force\n"


def snapshot_table(rows: Sequence[SnapshotRow]) -> str:
    columns = [("NAME", "<20"), ("CREATED", "<17"), ("MEMORY", "<7"), ("SIZE", ">9"),
               ("VMS", "")]  # fmt: skip

    def cells(row: SnapshotRow) -> list[object]:
        when = row.created_at
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else "incomplete"
        memory = "yes" if row.memory else "no"
        return [row.name, created, memory, f"{row.size / (1 << 20):.1f}M", ",".join(row.vms)]

    return _table(columns, map(cells, rows)) if rows else "no snapshots\n"


def template_table(rows: Sequence[TemplateRow]) -> str:
    columns = [("VM", "<20"), ("FROM", "<20"), ("SAVED", "<17"), ("SIZE", ">9"), ("QEMU", "")]

    def cells(row: TemplateRow) -> list[object]:
        saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.saved_at))
        name = row.vm if row.in_file else f"{row.vm} (not warm: removed by up)"
        return [name, row.source, saved, f"{row.size / (1 << 20):.1f}M", row.qemu]

    return _table(columns, map(cells, rows)) if rows else "no templates\n"


def network_table(rows: Sequence[NetworkRow]) -> str:
    columns = [("NAME", "<16"), ("SUBNET", "<18"), ("BRIDGE", "<16"), ("LINK", "<8"),
               ("DHCP", "<10"), ("VMS", "")]  # fmt: skip
    links = {True: "up", False: "absent", None: "?"}

    def cells(row: NetworkRow) -> list[object]:
        name = row.name if row.in_file else f"{row.name} (orphan)"
        return [name, row.subnet or "-", row.bridge, links[row.bridge_exists], row.dhcp,
                ",".join(row.vms) or "-"]  # fmt: skip

    return _table(columns, map(cells, rows))


def image_table(rows: Sequence[ImageInfo]) -> str:
    columns = [("NAME", "<44"), ("SIZE", ">9"), ("FORMAT", "<7"), ("LAST USED", "<17"),
               ("VMS", ">3"), ("SOURCE", "")]  # fmt: skip

    def cells(row: ImageInfo) -> list[object]:
        when = row.last_used
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else "-"
        users = "?" if row.users_unknown else len(row.in_use_by)
        return [row.name, f"{row.size / (1 << 20):.1f}M", row.format, used, users,
                row.source or "-"]  # fmt: skip

    return _table(columns, map(cells, rows))


def _table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[object]]) -> str:
    """A header and a line a row, each cell padded as its column says (the last is not)."""

    def line(cells: Sequence[object]) -> str:
        return " ".join(f"{cell!s:{spec}}" for cell, (_, spec) in zip(cells, columns, strict=True))

    return "".join(line(cells) + "\n" for cells in [[t for t, _ in columns], *rows])


def json_lines(rows: object) -> str:
    import msgspec

    return msgspec.json.encode(rows).decode() + "\n"
