"""Snapshots of the topology (`snapshot save/restore/ls/rm`) and `suspend`/`resume`.

save.py freezes the VMs together and captures them; restore.py puts them back through
`up`'s own start, each QEMU loading its state (loading.py); manage.py lists and removes.
The records are state.snapshots'. Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator._lazy import lazy_exports

if TYPE_CHECKING:
    from .common import SnapshotError
    from .manage import SnapshotRow, remove, rows
    from .restore import RestoreResult, restore
    from .save import save
    from .suspend import resume, suspend

_EXPORTS = {
    "SnapshotError": ".common",
    "SnapshotRow": ".manage",
    "remove": ".manage",
    "rows": ".manage",
    "RestoreResult": ".restore",
    "restore": ".restore",
    "save": ".save",
    "resume": ".suspend",
    "suspend": ".suspend",
}
__all__ = [
    "RestoreResult",
    "SnapshotError",
    "SnapshotRow",
    "remove",
    "restore",
    "resume",
    "rows",
    "save",
    "suspend",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
