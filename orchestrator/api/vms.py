"""The VMs of a project: up, plan, stop, destroy, restart, the faults (pause, unpause, kill),
and what they are (ps, inspect).

``load``, ``journal_dir`` and ``ssh_argv`` are synchronous; the rest are trio async functions.
The runtime is imported when a function runs, so that importing the API costs what loading a
compose file costs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config.project import Project, load_project
from orchestrator.config.topology import instances, select
from orchestrator.errors import UsageError
from orchestrator.progress import Event, Reporter
from orchestrator.runtime.options import DEFAULT_READY_TIMEOUT, Connection

if TYPE_CHECKING:
    from orchestrator.runtime import NetworkRow, UpPlan, UpResult, VmRow

EventCallback = Callable[[Event], None]


def load(
    file: str | Path | None = None,
    *,
    project_name: str | None = None,
    project_directory: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Project:
    """Load and validate a compose file (found as the CLI finds it when ``file`` is None)."""
    return load_project(
        Path(file) if file is not None else None,
        project_name=project_name,
        project_directory=Path(project_directory) if project_directory is not None else None,
        environ=environ,
    )


def journal_dir() -> Path | None:
    """Where journald's files are when the user manager's journal is not where journalctl
    --user looks (a private manager): QEMU_COMPOSE_JOURNAL_DIR. Failures then still come
    with QEMU's own last words, and `logs` finds them."""
    journal = os.environ.get("QEMU_COMPOSE_JOURNAL_DIR")
    return Path(journal) if journal else None


def _connection(bus: str, wait_lock: bool = False) -> Connection:
    """How every call reaches systemd: made here only."""
    return Connection(bus=bus, journal_dir=journal_dir(), wait_lock=wait_lock)


def selection(
    project: Project, *vms: str, no_deps: bool = False, scale: Mapping[str, int] | None = None
) -> list[str]:
    """The VMs `up VM...` acts on: those named and, unless ``no_deps``, what they depend on;
    every VM of the file when none is named (with the replica counts `up --scale` set, and
    ``scale``). An unknown name is a UsageError."""
    from orchestrator.config.project import scaled
    from orchestrator.runtime.session import current_project

    project = scaled(current_project(project), scale or {})
    if not vms:
        return [i.name for i in instances(project.model)]
    chosen = select(project.model, vms, project=project.name, with_dependencies=not no_deps)
    return [i.name for i in chosen]


async def up(
    project: Project,
    *vms: str,
    wait: bool = True,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    parallel: int | None = None,
    no_recreate: bool = False,
    force_recreate: bool = False,
    remove_orphans: bool = False,
    no_deps: bool = False,
    scale: Mapping[str, int] | None = None,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> UpResult:
    """Create and start the VMs (``vms`` and what they depend on, or all); ``scale``: a
    replica set's number of replicas for this up (docker compose's ``--scale``: new ones
    are created, those above it removed).

    UpError (with ``.result``) when some did not come up."""
    from orchestrator import runtime

    planned = runtime.PlanOptions(
        vms, no_recreate, force_recreate, remove_orphans, no_deps, dict(scale or {})
    )
    options = runtime.UpOptions(
        planned,
        wait=wait,
        ready_timeout=ready_timeout,
        parallel=parallel,
    )
    return await runtime.up(project, options, _connection(bus, wait_lock), Reporter(on_event))


async def plan(
    project: Project,
    *vms: str,
    no_recreate: bool = False,
    force_recreate: bool = False,
    remove_orphans: bool = False,
    no_deps: bool = False,
    scale: Mapping[str, int] | None = None,
    bus: str = "user",
) -> UpPlan:
    """What ``up`` would do, with causes (``.actions``: the VMs'); changes nothing."""
    from orchestrator import runtime

    options = runtime.PlanOptions(
        vms, no_recreate, force_recreate, remove_orphans, no_deps, dict(scale or {})
    )
    return await runtime.dry_run(project, options, _connection(bus))


async def stop(
    project: Project,
    *vms: str,
    timeout: float | None = None,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Power VMs down gracefully; ``timeout`` overrides their stop_grace_period."""
    from orchestrator import runtime

    connection = _connection(bus, wait_lock)
    return await runtime.stop(project, vms, connection, Reporter(on_event), timeout=timeout)


async def pause(
    project: Project,
    *vms: str,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Freeze running VMs' guests (all running ones when none is named); every VM named must
    run (UsageError, nothing changed). Returns the VMs paused now (or already); FaultError
    names those that could not be."""
    from orchestrator import runtime

    connection = _connection(bus, wait_lock)
    return await runtime.pause(project, vms, connection, Reporter(on_event))


async def unpause(
    project: Project,
    *vms: str,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Let paused guests run again (all running VMs when none is named); every VM named must
    run (UsageError, nothing changed). Returns the VMs running now; FaultError names those
    that could not be unpaused."""
    from orchestrator import runtime

    connection = _connection(bus, wait_lock)
    return await runtime.unpause(project, vms, connection, Reporter(on_event))


async def kill(
    project: Project,
    *vms: str,
    signal: str | int = "KILL",
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Send ``signal`` (a name such as "KILL" or "TERM", or a number) to running VMs' QEMUs
    through systemd. SIGKILL is a crash, which their restart policies answer; TERM, INT and
    HUP make QEMU quit cleanly. Returns the VMs signalled (not those that had ended)."""
    from orchestrator import runtime

    signum = runtime.parse_signal(str(signal))
    connection = _connection(bus, wait_lock)
    return await runtime.kill(project, vms, connection, Reporter(on_event), signum=signum)


async def destroy(
    project: Project,
    *vms: str,
    volumes: bool = False,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Stop and remove VMs (and unused networks); named volumes only with ``volumes``."""
    from orchestrator import runtime

    connection = _connection(bus, wait_lock)
    return await runtime.destroy(project, vms, connection, Reporter(on_event), volumes=volumes)


async def restart(
    project: Project,
    *vms: str,
    timeout: float | None = None,
    wait: bool = False,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Stop created VMs gracefully and start them again with their disks (all, or ``vms``).

    Nothing is created or recreated, and what they depend on is left alone; the file is read
    again, so what needs no new disk (cpu, memory, ports, ...) takes effect, and what does
    stays pending (`up` says it). Returns the VMs restarted.
    """
    from orchestrator import runtime
    from orchestrator.runtime.session import read_state, with_scale

    state = read_state(project)
    project = with_scale(project, state)
    named = [i.name for i in select(project.model, vms, project=project.name)] if vms else []
    created = set(state.vms)
    if named:
        missing = [n for n in named if n not in created]
        if missing:
            raise UsageError(
                f"not created: {', '.join(missing)} (`qemu-compose up {' '.join(missing)}`)"
            )
    else:
        named = [i.name for i in instances(project.model) if i.name in created]
        if not named:
            return []
    report, connection = Reporter(on_event), _connection(bus, wait_lock)
    await runtime.stop(project, named, connection, report, timeout=timeout)
    again = runtime.UpOptions(runtime.PlanOptions(named, no_recreate=True, no_deps=True), wait=wait)
    await runtime.up(project, again, connection, report)
    return named


async def ps(project: Project, *vms: str, all_vms: bool = True, bus: str = "user") -> list[VmRow]:
    """Every VM (or those named): its state, status (as docker ps shows it), kept health,
    start time, ports, restarts, addresses, SSH port and unit, from systemd and what the
    supervisor keeps (no SSH); without ``all_vms``, only those not exited nor not created."""
    from orchestrator import runtime

    return await runtime.ps(project, vms, _connection(bus), all_vms=all_vms)


async def inspect(project: Project, vm: str, *, bus: str = "user") -> dict[str, Any]:
    """Everything about one VM, as `inspect --format json` prints it."""
    from orchestrator.runtime.inspection import inspect as gather

    return await gather(project, _connection(bus), vm)


def ssh_argv(project: Project, vm: str, command: Sequence[str] = ()) -> list[str]:
    """The ssh command line that logs in to a created VM (or runs ``command`` there) with
    the project's key, its host key recorded on first contact and checked after."""
    from orchestrator.runtime.query import ssh_argv as argv_of
    from orchestrator.runtime.session import read_state

    state = read_state(project)
    if vm not in state.vms:
        raise UsageError(f"VM {vm!r} is not created; run `qemu-compose up {vm}` first")
    return argv_of(project, vm, state, list(command))


async def networks(project: Project, *, bus: str = "user") -> list[NetworkRow]:
    """The project's networks: the file's and those still created (orphans)."""
    from orchestrator import runtime

    return await runtime.networks(project, _connection(bus))


async def remove_networks(
    project: Project,
    *names: str,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Remove networks no created VM uses; returns those that were created."""
    from orchestrator import runtime

    connection = _connection(bus, wait_lock)
    return await runtime.remove_networks(project, names, connection, Reporter(on_event))
