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

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from orchestrator import runtime
from orchestrator.config.project import Project, load_project
from orchestrator.runtime import Settings, UpResult, VmRow
from orchestrator.runtime.events import Event, Reporter
from orchestrator.runtime.plan import Action
from orchestrator.supervisor.watch import concerns, parse_since
from qmp.eventlog import EventRecord

EventCallback = Callable[[Event], None]

__all__ = ["Event", "Project", "UpResult", "VmRow", "destroy", "load", "plan", "ps", "stop", "up"]


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


async def up(
    project: Project,
    *vms: str,
    wait: bool = True,
    ready_timeout: float = runtime.DEFAULT_READY_TIMEOUT,
    parallel: int | None = None,
    no_recreate: bool = False,
    force_recreate: bool = False,
    remove_orphans: bool = False,
    wait_lock: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> UpResult:
    """Create and start the VMs (``vms`` and what they depend on, or all)."""
    settings = Settings(
        services=vms,
        wait=wait,
        ready_timeout=ready_timeout,
        parallel=parallel,
        no_recreate=no_recreate,
        force_recreate=force_recreate,
        remove_orphans=remove_orphans,
        wait_lock=wait_lock,
        bus=bus,
    )
    return await runtime.up(project, settings, Reporter(callback=on_event))


async def plan(project: Project, *vms: str, bus: str = "user") -> list[Action]:
    """What ``up`` would do, with causes; changes nothing."""
    result = await runtime.up(project, Settings(services=vms, bus=bus), Reporter(), dry_run=True)
    return list(result.actions)


async def stop(
    project: Project,
    *vms: str,
    timeout: float | None = None,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Power VMs down gracefully; ``timeout`` overrides their stop_grace_period."""
    settings = Settings(services=vms, bus=bus)
    return await runtime.stop(project, settings, Reporter(callback=on_event), timeout=timeout)


async def destroy(
    project: Project,
    *vms: str,
    volumes: bool = False,
    bus: str = "user",
    on_event: EventCallback | None = None,
) -> list[str]:
    """Stop and remove VMs (and unused networks); named volumes only with ``volumes``."""
    settings = Settings(services=vms, bus=bus)
    return await runtime.destroy(project, settings, Reporter(callback=on_event), volumes=volumes)


async def ps(project: Project, *vms: str, bus: str = "user") -> list[VmRow]:
    """Every VM (or those named) with its status, addresses, SSH port and unit."""
    return await runtime.ps(project, Settings(services=vms, bus=bus))


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
    from qmp.eventlog import EventLog

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
