"""The Python API: drive projects from scripts, with data in and data out.

Everything the CLI does, without parsing its output. Every function but ``load`` is a trio
async function; events arrive as typed ``Event`` objects through ``on_event``.

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
UpError listing the VMs that failed, LockHeldError naming the holder, ...).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from orchestrator import runtime
from orchestrator.config.project import Project, load_project
from orchestrator.config.topology import instances, select
from orchestrator.errors import UsageError
from orchestrator.progress import Event, Reporter, Stage, Status
from orchestrator.runtime import NetworkRow, Settings, UpResult, VmRow
from orchestrator.runtime.plan import Action
from orchestrator.runtime.session import read_state
from orchestrator.supervisor.eventlog import EventRecord
from orchestrator.supervisor.watch import concerns, parse_since

EventCallback = Callable[[Event], None]

__all__ = [
    "Event",
    "NetworkRow",
    "Project",
    "Stage",
    "Status",
    "UpResult",
    "VmRow",
    "destroy",
    "events",
    "inspect",
    "load",
    "networks",
    "plan",
    "ps",
    "remove_networks",
    "restart",
    "ssh_argv",
    "stop",
    "up",
]


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


def _settings(vms: Sequence[str], bus: str, **options: Any) -> Settings:
    """The settings of every call, made here only."""
    return Settings(services=tuple(vms), bus=bus, journal_dir=journal_dir(), **options)


async def up(
    project: Project,
    *vms: str,
    wait: bool = True,
    ready_timeout: float = runtime.DEFAULT_READY_TIMEOUT,
    parallel: int | None = None,
    no_recreate: bool = False,
    force_recreate: bool = False,
    remove_orphans: bool = False,
    no_deps: bool = False,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> UpResult:
    """Create and start the VMs (``vms`` and what they depend on, or all).

    UpError (with ``.result``) when some did not come up."""
    settings = _settings(
        vms,
        bus,
        wait=wait,
        ready_timeout=ready_timeout,
        parallel=parallel,
        no_recreate=no_recreate,
        force_recreate=force_recreate,
        remove_orphans=remove_orphans,
        no_deps=no_deps,
        wait_lock=wait_lock,
    )
    return await runtime.up(project, settings, Reporter(on_event))


async def plan(
    project: Project,
    *vms: str,
    no_recreate: bool = False,
    force_recreate: bool = False,
    remove_orphans: bool = False,
    no_deps: bool = False,
    bus: str = "user",
) -> list[Action]:
    """What ``up`` would do, with causes; changes nothing."""
    settings = _settings(
        vms,
        bus,
        no_recreate=no_recreate,
        force_recreate=force_recreate,
        remove_orphans=remove_orphans,
        no_deps=no_deps,
    )
    result = await runtime.up(project, settings, Reporter(), dry_run=True)
    return list(result.actions)


async def stop(
    project: Project,
    *vms: str,
    timeout: float | None = None,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Power VMs down gracefully; ``timeout`` overrides their stop_grace_period."""
    settings = _settings(vms, bus, wait_lock=wait_lock)
    return await runtime.stop(project, settings, Reporter(on_event), timeout=timeout)


async def destroy(
    project: Project,
    *vms: str,
    volumes: bool = False,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Stop and remove VMs (and unused networks); named volumes only with ``volumes``."""
    settings = _settings(vms, bus, wait_lock=wait_lock)
    return await runtime.destroy(project, settings, Reporter(on_event), volumes=volumes)


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
    again (cpu, memory, ports take effect) but each VM keeps its recorded configuration, so
    that `up` still recreates it when the file asks for more. Returns the VMs restarted.
    """
    named = [i.name for i in select(project.model, vms, project=project.name)] if vms else []
    created = set(read_state(project).vms)
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
    report = Reporter(on_event)
    await runtime.stop(project, _settings(named, bus, wait_lock=wait_lock), report, timeout=timeout)
    again = _settings(
        named, bus, wait=wait, no_recreate=True, no_deps=True, keep_config=True, wait_lock=wait_lock
    )
    await runtime.up(project, again, report)
    return named


async def ps(project: Project, *vms: str, all_vms: bool = True, bus: str = "user") -> list[VmRow]:
    """Every VM (or those named) with its status, addresses, SSH port and unit; without
    ``all_vms``, only those that are not stopped or not created."""
    return await runtime.ps(project, _settings(vms, bus), all_vms=all_vms)


async def networks(project: Project, *, bus: str = "user") -> list[NetworkRow]:
    """The project's networks: the file's and those still created (orphans)."""
    return await runtime.networks(project, _settings((), bus))


async def remove_networks(
    project: Project,
    *names: str,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Remove networks no created VM uses; returns those that were created."""
    settings = _settings((), bus, wait_lock=wait_lock)
    return await runtime.remove_networks(project, settings, Reporter(on_event), list(names))


def ssh_argv(project: Project, vm: str, command: Sequence[str] = ()) -> list[str]:
    """The ssh command line that logs in to a created VM (or runs ``command`` there) with
    the project's key, its host key recorded on first contact and checked after."""
    from orchestrator.runtime.query import ssh_argv as argv_of

    state = read_state(project)
    if vm not in state.vms:
        raise UsageError(f"VM {vm!r} is not created; run `qemu-compose up {vm}` first")
    return argv_of(project, vm, state, list(command))


async def inspect(project: Project, vm: str, *, bus: str = "user") -> dict[str, Any]:
    """Everything about one VM, as `inspect --format json` prints it."""
    from orchestrator.runtime.inspection import inspect as gather

    return await gather(project, _settings((vm,), bus), vm)


@asynccontextmanager
async def events(
    project: Project, *vms: str, since: str | None = None
) -> AsyncIterator[AsyncIterator[EventRecord]]:
    """The project's event log (what `watch --json` prints), as EventRecord objects.

    ``since``: as `watch --since` ("all", "#N", "10m", an ISO time); None: only new ones.
    Records of the VMs named (all when none) and the project's own; it never ends by itself::

        async with api.events(project, "web", since="all") as stream:
            async for record in stream:
                if record.event == "SHUTDOWN":
                    break
    """
    from orchestrator.state.paths import ProjectPaths
    from orchestrator.supervisor.eventlog import EventLog

    start = parse_since(since)
    log = EventLog(ProjectPaths(project.state_dir, project.name).events_dir)
    async with log.follow(
        since_seq=start.seq, since_time=start.time, from_end=start.from_end
    ) as follower:
        yield _Only(follower, set(vms))


class _Only:
    """The records of some VMs (and the project's own) from a follower."""

    def __init__(self, records: AsyncIterator[EventRecord], vms: set[str]) -> None:
        self._records = records
        self._vms = vms

    def __aiter__(self) -> _Only:
        return self

    async def __anext__(self) -> EventRecord:
        while True:
            record = await self._records.__anext__()
            if concerns(record, self._vms):
                return record
