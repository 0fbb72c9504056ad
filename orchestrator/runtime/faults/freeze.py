"""Faults made on purpose, to test what runs on the VMs: pause and unpause (QMP stop and cont:
the guest freezes, its clock and network with it), kill (a signal to QEMU through systemd).

Each is a step of the command, in the event log beside the QMP events it causes (STOP,
RESUME; the unit's end and the supervisor's RESTARTED). A fault is refused, and nothing
changed, when a VM named does not run (a definition with replicas: when none of them runs).
Without names it acts on every running VM, and passes over those whose guest is between
two runs (its restart policy's backoff). A VM its restart policy restarts is a new QEMU: it
runs unpaused. `stop` of a paused VM resumes it first (a frozen guest cannot hear the power
button); so does `up`, which makes the VMs run.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Sequence

import trio

import qmp
import systemd_dbus
from orchestrator.config.project import Project
from orchestrator.errors import QemuComposeError, UsageError
from orchestrator.progress import Reporter, Stage, Status
from orchestrator.supervisor.runs import read_run

from ..options import QMP_ANSWER, Connection
from ..query import RUNNING_STATES
from ..session import Session, open_session

# KillUnit's answers when the unit has no process left to signal: it ended meanwhile
_ENDED = ("org.freedesktop.systemd1.NoSuchProcess", "org.freedesktop.systemd1.NoSuchUnit")


class FaultError(QemuComposeError):
    """A fault could not be made on some of the VMs: each is named, with why."""


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


def _running(
    session: Session, vms: Sequence[str], verb: str, *, lenient: bool = False
) -> list[str]:
    """The running VMs a fault acts on: of those named (a definition: its running replicas),
    each must have one running (``lenient``: those that do); none named: every running VM."""
    states = session.units.vm_states()
    if not vms:
        return [n for n in session.names(()) if states.get(n) in RUNNING_STATES]
    chosen: list[str] = []
    idle = []
    for vm in vms:
        running = [n for n in session.names([vm]) if states.get(n) in RUNNING_STATES]
        if not running:
            idle.append(vm)
        chosen += [n for n in running if n not in chosen]
    if idle and not lenient:
        raise UsageError(f"cannot {verb} what does not run: {', '.join(idle)}")
    return chosen


class _Failed(Exception):
    """One VM's step failed (reported already)."""


async def _each(names: list[str], verb: str, step: Callable[[str], Awaitable[None]]) -> None:
    """``step(name)`` for every VM at once; the failures together, as one FaultError."""
    failed: dict[str, str] = {}

    async def one(name: str) -> None:
        try:
            await step(name)
        except _Failed as err:
            failed[name] = str(err)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    if failed:
        why = "; ".join(f"{n}: {failed[n]}" for n in names if n in failed)
        raise FaultError(f"cannot {verb} {', '.join(n for n in names if n in failed)} ({why})")


async def pause(
    project: Project, vms: Sequence[str], connection: Connection, report: Reporter
) -> list[str]:
    """Freeze the VMs' guests (QMP stop); returns the VMs paused or already paused."""
    return await _set_paused(project, vms, connection, report, paused=True)


async def unpause(
    project: Project,
    vms: Sequence[str],
    connection: Connection,
    report: Reporter,
    *,
    lenient: bool = False,
) -> list[str]:
    """Let paused guests run again (QMP cont); returns the VMs running now. ``lenient``: a
    VM named that no longer runs is passed over (an undoing: nothing is left to undo)."""
    return await _set_paused(project, vms, connection, report, paused=False, lenient=lenient)


async def _set_paused(
    project: Project,
    vms: Sequence[str],
    connection: Connection,
    report: Reporter,
    *,
    paused: bool,
    lenient: bool = False,
) -> list[str]:
    verb = "pause" if paused else "unpause"
    async with open_session(project, connection, report) as session:
        names = _running(session, vms, verb, lenient=lenient)
        done: list[str] = []

        async def step(name: str) -> None:
            if await _freeze(session, name, paused=paused, named=bool(vms)):
                done.append(name)

        await _each(names, verb, step)
        return [n for n in names if n in done]


async def _freeze(session: Session, name: str, *, paused: bool, named: bool) -> bool:
    """QMP stop (``paused``) or cont; False when passed over (between two runs, not named)."""
    stage = Stage.PAUSE if paused else Stage.UNPAUSE
    socket = str(session.paths.vm(name).qmp_control_socket)
    wanted, other = ("paused", "running") if paused else ("running", "paused")
    try:
        async with qmp.open_session(socket, timeout=QMP_ANSWER, name=name) as control:
            status = (await control.query_status()).status
            if status == "postmigrate" and not paused:  # a save cut short left it so
                status = other
            if status == other:
                await control.execute("stop" if paused else "cont")
                session.report(name, stage, Status.DONE, wanted)
                return True
            if status == wanted:
                session.report(name, stage, Status.DONE, f"already {status}")
                return True
            why = f"its guest is {status}"  # shutdown, guest-panicked: its restart's backoff
    except (qmp.QmpConnectError, qmp.QmpTimeoutError):
        why = f"QEMU did not answer QMP within {QMP_ANSWER:g} s (frozen or hung)"
    except qmp.QmpError as err:  # it ended meanwhile, say
        why = str(err)
    if not named:
        session.report(name, stage, Status.SKIPPED, why)
        return False
    session.report(name, stage, Status.FAILED, why)
    raise _Failed(why)


async def resume_if_paused(session: Session, name: str) -> bool:
    """For `up`: a VM the supervisor last saw paused runs again (QMP cont), also one a save
    cut short left ``postmigrate``. Reads only the supervisor's run record for the others: a
    no-op `up` asks QEMU nothing. False when its QEMU waits for a saved state that nobody
    gives it (a restore cut short: ``inmigrate``): it needs a new start."""
    run = read_run(session.paths.vm(name))
    if run is None or run.guest not in ("paused", "inmigrate"):
        return True
    socket = str(session.paths.vm(name).qmp_control_socket)
    async with qmp.open_session(socket, timeout=QMP_ANSWER, name=name) as control:
        status = (await control.query_status()).status
        if status in ("paused", "postmigrate"):
            await control.execute("cont")
            session.report(name, Stage.UNPAUSE, Status.DONE, f"running (it was {status})")
        return status != "inmigrate"


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
        done: list[str] = []

        async def step(name: str) -> None:
            unit = session.vm_unit(name)
            try:
                await session.manager.kill(unit, signum, whom="main")
            except systemd_dbus.NoSuchUnitError:
                session.report(name, Stage.KILL, Status.SKIPPED, "it had ended")
                return
            except systemd_dbus.BusCallError as err:
                if err.error_name in _ENDED:
                    session.report(name, Stage.KILL, Status.SKIPPED, "it had ended")
                    return
                session.report(name, Stage.KILL, Status.FAILED, str(err))
                raise _Failed(str(err)) from err
            session.report(name, Stage.KILL, Status.DONE, signum.name)
            done.append(name)

        await _each(names, "kill", step)
        return [n for n in names if n in done]
