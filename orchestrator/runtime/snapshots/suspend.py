"""`suspend` and `resume` (Vagrant's): a VM's memory and devices saved, its QEMU ended (its
CPU and RAM freed), and later the VM back where it was, without a boot.

A suspended VM keeps its state in its instance directory (``suspended.state``, then
``suspended.json``, the record, written last); `resume` and `up` start it from there through
`up`'s own path and forget the state once it runs (start.py). Its disks are not snapshotted:
nothing writes them while QEMU is gone. `stop` of a suspended VM discards the state (it
boots next time); so does `destroy`. A state that no longer fits (hardware, QEMU or
accelerator changed) makes `up` fail for that VM, saying so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import msgspec
import trio

import qmp
from orchestrator.config.project import Project
from orchestrator.errors import QemuComposeError, UsageError
from orchestrator.progress import Reporter, Stage, Status
from orchestrator.state.files import atomic_write
from orchestrator.state.snapshots import SuspendRecord

from ..execute import UpResult, up_in
from ..faults import clear_faults
from ..faults.freeze import _running
from ..observe import unit_states
from ..options import DEFAULT_READY_TIMEOUT, QMP_ANSWER, Connection, PlanOptions, UpOptions
from ..session import Session, open_session
from ..supervision import stop_supervisor
from ..teardown import stop_one
from .common import SnapshotError, accel_of, instance_map, running_shape, version_of
from .loading import discard_suspended, write_state
from .restore import sync_clocks
from .save import check_room


async def suspend(
    project: Project, vms: Sequence[str], connection: Connection, report: Reporter
) -> list[str]:
    """Suspend the VMs named (none: every running VM); returns those suspended."""
    async with open_session(project, connection, report) as session:
        by_name = instance_map(session)
        names = _running(session, vms, "suspend")
        orphans = [n for n in names if n not in by_name]
        if orphans and vms:
            raise UsageError(f"cannot suspend {', '.join(orphans)}: not in the compose file")
        names = [n for n in names if n in by_name]
        if not names:
            raise UsageError("no VM to suspend: none runs")
        check_room(session, session.paths.state_dir, [by_name[n] for n in names])
        await clear_faults(session, names, why="suspended")
        failed: dict[str, str] = {}

        async def one(name: str) -> None:
            try:
                record = await _save(session, name)
            except (qmp.QmpError, OSError, QemuComposeError) as err:
                failed[name] = str(err)
                session.report(name, Stage.SUSPEND, Status.FAILED, f"{err}; it runs on")
                return
            await stop_one(session, name, 0.0)
            size = record.state_bytes / (1 << 20)
            session.report(name, Stage.SUSPEND, Status.DONE, f"{size:.1f} MiB saved, QEMU ended")

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        if not await unit_states(project, session.manager):
            await stop_supervisor(session)  # nothing left to watch
        if failed:
            why = "; ".join(f"{n}: {w}" for n, w in failed.items())
            raise SnapshotError(f"cannot suspend {', '.join(failed)} ({why})")
        return names


async def _save(session: Session, name: str) -> SuspendRecord:
    """The VM's state to its instance directory, whole, and its record; the VM stands still
    after it (its QEMU is to end). A failure leaves it as it was (running, or paused), with
    no state: QEMU takes its disks back (``cont``) from where a finished migration left it."""
    paths = session.paths.vm(name)
    socket = str(paths.qmp_control_socket)
    inst = instance_map(session)[name]
    async with qmp.open_session(socket, timeout=QMP_ANSWER, name=name) as control:
        was = (await control.query_status()).status
        if was not in ("running", "paused"):
            raise qmp.QmpError(f"its guest is {was} (between two runs)")
        version = version_of(await control.execute("query-version"))
        await control.execute("stop")
        try:
            size, _ = await write_state(control, paths.suspended)
            record = SuspendRecord(
                suspended_at=time.time(),
                qemu=version,
                shape=running_shape(session, inst),
                accel=accel_of(inst),
                state_bytes=size,
                was=was,
            )
            atomic_write(paths.suspended_record, msgspec.json.encode(record))
        except BaseException:
            with trio.CancelScope(shield=True):
                discard_suspended(paths)
                with contextlib.suppress(qmp.QmpError):
                    await control.execute("cont", timeout=QMP_ANSWER)  # its disks back
                    if was == "paused":
                        await control.execute("stop", timeout=QMP_ANSWER)
            raise
    return record


async def resume(
    project: Project,
    vms: Sequence[str],
    connection: Connection,
    report: Reporter,
    *,
    wait: bool = False,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
) -> UpResult:
    """Start suspended VMs (those named, none: every one) from their states."""
    async with open_session(project, connection, report) as session:
        suspended = [n for n in session.names(()) if session.paths.vm(n).is_suspended]
        names = session.names(vms) if vms else suspended
        idle = [n for n in names if n not in suspended]
        if idle and vms:
            raise UsageError(f"not suspended: {', '.join(idle)}")
        if not names:
            raise UsageError("no VM is suspended")
        options = UpOptions(
            plan=PlanOptions(services=names, no_deps=True), wait=wait, ready_timeout=ready_timeout
        )
        result = await up_in(session, options)
        await sync_clocks(session, [n for n in result.ready if n in names])
        return result
