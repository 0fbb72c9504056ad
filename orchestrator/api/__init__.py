"""The Python API: drive projects from scripts, with data in and data out.

Everything the CLI does, without parsing its output (the CLI sits on it). What talks to
systemd, QEMU, guests or the network is a trio async function (up, plan, stop, destroy,
restart, pause, unpause, kill, ps, inspect, networks, remove_networks, logs, consoles, pull,
doctor, snapshot_save, snapshot_restore, snapshot_remove, suspend, resume, remove_templates;
events and snapshot are async context managers; ``faults(project)`` makes and undoes faults,
see api.faults); what only reads files or formats data is synchronous (load, ssh_argv,
records, console, console_ends, images, remove_image, prune_images, snapshots, templates,
format_*). Progress
arrives as typed ``Event`` objects through ``on_event``:

    import trio
    from orchestrator import api

    project = api.load("lab/qemu-compose.yaml")

    async def main() -> None:
        await api.up(project, on_event=print)          # all VMs, ready (SSH, healthchecks)
        for row in await api.ps(project):
            print(row.name, row.status, row.addresses)
        await api.stop(project, "web")                  # one VM, gracefully
        await api.destroy(project)                      # named volumes are kept

    trio.run(main)

``events`` follows what the VMs do (QMP events, unit states, steps, restarts) as records.

Errors are the CLI's: QemuComposeError and its subclasses (ConfigError with every problem,
UpError listing the VMs that failed, LockHeldError naming the holder, PeerError when
systemd, QEMU or the network failed, ...).

Importing it costs what loading a compose file costs: the runtime is imported by the first
call that needs it (types such as VmRow too, on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator._lazy import lazy_exports
from orchestrator.progress import Event, Stage, Status, Transfer

from .cache import images, prune_images, pull, remove_image
from .faults import Faults, Injection, faults
from .host import doctor
from .snapshots import (
    remove_templates,
    resume,
    snapshot,
    snapshot_remove,
    snapshot_restore,
    snapshot_save,
    snapshots,
    suspend,
    templates,
)
from .text import format_checks, format_config, format_inspect, format_plan, format_record
from .vms import (
    EventCallback,
    destroy,
    inspect,
    journal_dir,
    kill,
    load,
    networks,
    pause,
    plan,
    ps,
    remove_networks,
    restart,
    selection,
    ssh_argv,
    stop,
    unpause,
    up,
)
from .watching import console, console_ends, consoles, events, logs, records

if TYPE_CHECKING:
    from orchestrator.config.project import Project
    from orchestrator.guest.images import ImageInfo
    from orchestrator.runtime import NetworkRow, UpError, UpPlan, UpResult, VmRow
    from orchestrator.runtime.clones import TemplateRow
    from orchestrator.runtime.doctor import Check
    from orchestrator.runtime.faults import FaultError, FaultRow
    from orchestrator.runtime.plan import Action, ActionKind
    from orchestrator.runtime.snapshots import RestoreResult, SnapshotError, SnapshotRow
    from orchestrator.state.snapshots import SnapshotRecord
    from orchestrator.supervisor.eventlog import EventRecord

_TYPES = {
    "Project": "orchestrator.config.project",
    "ImageInfo": "orchestrator.guest.images",
    "NetworkRow": "orchestrator.runtime.query",
    "VmRow": "orchestrator.runtime.query",
    "UpError": "orchestrator.runtime.execute",
    "UpResult": "orchestrator.runtime.execute",
    "UpPlan": "orchestrator.runtime.plan",
    "Action": "orchestrator.runtime.plan",
    "ActionKind": "orchestrator.runtime.plan",
    "Check": "orchestrator.runtime.doctor",
    "EventRecord": "orchestrator.supervisor.eventlog",
    "FaultError": "orchestrator.runtime.faults.freeze",
    "FaultRow": "orchestrator.runtime.faults.inject",
    "RestoreResult": "orchestrator.runtime.snapshots.restore",
    "SnapshotError": "orchestrator.runtime.snapshots.common",
    "SnapshotRow": "orchestrator.runtime.snapshots.manage",
    "SnapshotRecord": "orchestrator.state.snapshots",
    "TemplateRow": "orchestrator.runtime.clones",
}

__all__ = [
    "Action",
    "ActionKind",
    "Check",
    "Event",
    "EventCallback",
    "EventRecord",
    "FaultError",
    "FaultRow",
    "Faults",
    "ImageInfo",
    "Injection",
    "NetworkRow",
    "Project",
    "RestoreResult",
    "SnapshotError",
    "SnapshotRecord",
    "SnapshotRow",
    "Stage",
    "Status",
    "TemplateRow",
    "Transfer",
    "UpError",
    "UpPlan",
    "UpResult",
    "VmRow",
    "console",
    "console_ends",
    "consoles",
    "destroy",
    "doctor",
    "events",
    "faults",
    "format_checks",
    "format_config",
    "format_inspect",
    "format_plan",
    "format_record",
    "images",
    "inspect",
    "journal_dir",
    "kill",
    "load",
    "logs",
    "networks",
    "pause",
    "plan",
    "prune_images",
    "ps",
    "pull",
    "records",
    "remove_image",
    "remove_networks",
    "remove_templates",
    "restart",
    "resume",
    "selection",
    "snapshot",
    "snapshot_remove",
    "snapshot_restore",
    "snapshot_save",
    "snapshots",
    "ssh_argv",
    "stop",
    "suspend",
    "templates",
    "unpause",
    "up",
]


__getattr__ = lazy_exports(__name__, _TYPES)
