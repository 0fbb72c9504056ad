"""Faults made on purpose, to test what runs on the VMs: pause and unpause (QMP stop and cont:
the guest freezes, its clock and network with it), kill (a signal to QEMU through systemd,
which its restart policy answers as it answers a crash).

Each is a step of the command, in the event log beside the QMP events it causes (STOP,
RESUME; the unit's end and the supervisor's RESTARTED). A fault is refused, and nothing
changed, unless every VM it names runs. A VM its restart policy restarts is a new QEMU: it
runs unpaused. `stop` of a paused VM resumes it first (a frozen guest cannot hear the power
button).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

import trio

import qmp
import systemd_dbus
from orchestrator.config.project import Project
from orchestrator.errors import UsageError, VmError
from orchestrator.progress import Reporter, Stage, Status

from .options import Connection
from .session import Session, open_session
from .teardown import QMP_ANSWER

_RUNNING = (systemd_dbus.ActiveState.ACTIVE, systemd_dbus.ActiveState.RELOADING)


def parse_signal(text: str) -> signal.Signals:
    """A signal by name (KILL, SIGKILL, kill) or number (9), as `kill -s` takes it."""
    name = text.strip().upper()
    if name.isdigit():
        try:
            return signal.Signals(int(name))
        except ValueError:
            raise UsageError(f"no signal numbered {text}") from None
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise UsageError(f"unknown signal {text!r} (e.g. KILL, TERM, INT, 9)") from None


def _running(session: Session, vms: Sequence[str], verb: str) -> list[str]:
    """The VMs a fault acts on: those named, each of which must run; else every running one."""
    states = session.units.vm_states()
    names = session.names(vms)
    if not vms:
        return [n for n in names if states.get(n) in _RUNNING]
    idle = [n for n in names if states.get(n) not in _RUNNING]
    if idle:
        raise UsageError(f"cannot {verb} what does not run: {', '.join(idle)}")
    return names


async def pause(
    project: Project, vms: Sequence[str], connection: Connection, report: Reporter
) -> list[str]:
    """Freeze the VMs' guests (QMP stop); returns the VMs paused (or already paused)."""
    async with open_session(project, connection, report) as session:
        names = _running(session, vms, "pause")
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(_freeze, session, name, True)
        return names


async def unpause(
    project: Project, vms: Sequence[str], connection: Connection, report: Reporter
) -> list[str]:
    """Let paused guests run again (QMP cont); returns the VMs unpaused (or not paused)."""
    async with open_session(project, connection, report) as session:
        names = _running(session, vms, "unpause")
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(_freeze, session, name, False)
        return names


async def _freeze(session: Session, name: str, paused: bool) -> None:
    stage = Stage.PAUSE if paused else Stage.UNPAUSE
    unit = session.vm_unit(name)
    socket = str(session.paths.vm(name).qmp_control_socket)
    try:
        async with qmp.open_session(socket, timeout=QMP_ANSWER, name=name) as control:
            status = (await control.query_status()).status
            if status == ("running" if paused else "paused"):
                await control.execute("stop" if paused else "cont")
                session.report(name, stage, Status.DONE, "paused" if paused else "running")
            elif status == ("paused" if paused else "running"):
                session.report(name, stage, Status.DONE, f"already {status}")
            else:  # shutdown (kept by -no-shutdown), guest-panicked, inmigrate, ...
                raise VmError(name, stage, unit, f"its guest is {status}")
    except qmp.QmpError as err:
        raise VmError(name, stage, unit, str(err)) from err


async def kill(
    project: Project,
    vms: Sequence[str],
    connection: Connection,
    report: Reporter,
    *,
    signum: signal.Signals = signal.SIGKILL,
) -> list[str]:
    """Send ``signum`` to the VMs' QEMUs through systemd; returns the VMs signalled."""
    async with open_session(project, connection, report) as session:
        names = _running(session, vms, "kill")
        for name in names:
            unit = session.vm_unit(name)
            try:
                await session.manager.kill(unit, signum, whom="main")
            except systemd_dbus.NoSuchUnitError:  # it ended since: nothing left to signal
                session.report(name, Stage.KILL, Status.SKIPPED, "it had ended")
                continue
            except systemd_dbus.SystemdError as err:
                raise VmError(name, Stage.KILL, unit, str(err)) from err
            session.report(name, Stage.KILL, Status.DONE, signum.name)
        return names
