"""Snapshots from Python: put a whole topology back to a known instant between tests.

    record = await api.snapshot_save(project, "clean")      # every running VM, memory too
    ...                                                      # the test changes things
    await api.snapshot_restore(project, "clean")             # back, running, no boot

    async with api.snapshot(project, "before-test"):         # saved now, restored on leaving
        ...                                                  # (raise or not), then removed

    await api.suspend(project, "db")                         # state saved, QEMU ended
    await api.resume(project, "db")                          # where it was (up does it too)

Errors are the CLI's: UsageError for a bad name, an unknown snapshot or VM (nothing changed),
SnapshotError naming the VMs and why (a changed hardware, a device that blocks saving).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from orchestrator.config.project import Project
from orchestrator.progress import Reporter
from orchestrator.runtime.options import DEFAULT_READY_TIMEOUT

from .vms import EventCallback, _connection

if TYPE_CHECKING:
    from orchestrator.runtime import UpResult
    from orchestrator.runtime.clones import TemplateRow
    from orchestrator.runtime.snapshots import RestoreResult, SnapshotRow
    from orchestrator.state.snapshots import SnapshotRecord

RESTORE_ON_EXIT_TIMEOUT = 600.0


async def snapshot_save(
    project: Project,
    name: str,
    *vms: str,
    memory: bool = True,
    force: bool = False,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> SnapshotRecord:
    """Freeze the VMs (all running ones when none is named) together, save their memory and
    disks, resume them; ``memory=False``: disks only (stopped VMs too). ``force`` replaces a
    snapshot of that name."""
    # (from the module: once it is imported, the package's name `save` is the module's)
    from orchestrator.runtime.snapshots.save import save

    connection = _connection(bus, wait_lock)
    return await save(
        project, name, vms, connection, Reporter(on_event), memory=memory, force=force
    )


async def snapshot_restore(
    project: Project,
    name: str,
    *vms: str,
    paused: bool = False,
    wait: bool = False,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> RestoreResult:
    """Put the VMs (all of the snapshot's when none is named) back at the snapshot's instant,
    running (``paused``: frozen), without a boot; ``wait``: until ready, as `up --wait`."""
    from orchestrator.runtime.snapshots.restore import restore  # (see snapshot_save)

    connection = _connection(bus, wait_lock)
    return await restore(
        project,
        name,
        vms,
        connection,
        Reporter(on_event),
        paused=paused,
        wait=wait,
        ready_timeout=ready_timeout,
    )


def snapshots(project: Project) -> list[SnapshotRow]:
    """The project's snapshots, oldest first (an interrupted save: ``complete`` False)."""
    from orchestrator.runtime import snapshots as runtime_snapshots

    return runtime_snapshots.rows(project)


async def snapshot_remove(
    project: Project,
    *names: str,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Remove snapshots: their files and their disks' points in time."""
    from orchestrator.runtime import snapshots

    connection = _connection(bus, wait_lock)
    return await snapshots.remove(project, names, connection, Reporter(on_event))


@asynccontextmanager
async def snapshot(
    project: Project,
    name: str,
    vms: Sequence[str] = (),
    *,
    keep: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> AsyncIterator[SnapshotRecord]:
    """Save snapshot ``name`` now (replacing one of that name); on leaving the block, also
    when it raises or is cancelled, restore it, then remove it (``keep``: keep it)."""
    import trio

    record = await snapshot_save(
        project, name, *vms, force=True, wait_lock=True, bus=bus, on_event=on_event
    )
    try:
        yield record
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(RESTORE_ON_EXIT_TIMEOUT):
            await snapshot_restore(project, name, wait_lock=True, bus=bus, on_event=on_event)
            if not keep:
                await snapshot_remove(project, name, wait_lock=True, bus=bus, on_event=on_event)


async def suspend(
    project: Project,
    *vms: str,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Save the VMs' state (all running ones when none is named) and end their QEMUs; a VM
    named must run (UsageError). Returns the VMs suspended."""
    from orchestrator.runtime.snapshots.suspend import suspend as suspend_vms  # (see above)

    connection = _connection(bus, wait_lock)
    return await suspend_vms(project, vms, connection, Reporter(on_event))


async def resume(
    project: Project,
    *vms: str,
    wait: bool = False,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> UpResult:
    """Start suspended VMs (all of them when none is named) where they were, without a boot;
    ``up`` does the same for the suspended VMs it starts."""
    from orchestrator.runtime import snapshots

    connection = _connection(bus, wait_lock)
    return await snapshots.resume(
        project, vms, connection, Reporter(on_event), wait=wait, ready_timeout=ready_timeout
    )


def templates(project: Project) -> list[TemplateRow]:
    """The warm templates kept for the project's warm VMs (by VM: source, time, size)."""
    from orchestrator.runtime.clones import template_rows

    return template_rows(project)


async def remove_templates(
    project: Project,
    *vms: str,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Remove the templates of the VMs named (none: all); their next new replica boots."""
    from orchestrator.runtime.clones import remove_templates as remove

    return await remove(project, vms, _connection(bus, wait_lock), Reporter(on_event))
