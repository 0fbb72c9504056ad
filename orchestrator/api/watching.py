"""What the VMs do and say: the project's event log (followed or read), their consoles and logs."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from orchestrator.config.project import Project
from orchestrator.config.topology import select, select_one

from .vms import journal_dir

if TYPE_CHECKING:
    from orchestrator.state.files import VmState
    from orchestrator.state.paths import VmPaths
    from orchestrator.supervisor.eventlog import EventLog, EventRecord


def _log(project: Project) -> EventLog:
    from orchestrator.state.paths import ProjectPaths
    from orchestrator.supervisor.eventlog import EventLog

    return EventLog(ProjectPaths(project.state_dir, project.name).events_dir)


def _named(project: Project, vms: Sequence[str]) -> set[str]:
    """The instances of the VMs named (a name with replicas is all of them); none: all."""
    if not vms:
        return set()
    return {i.name for i in select(_current(project).model, vms, project=project.name)}


def _current(project: Project) -> Project:
    from orchestrator.runtime.session import current_project

    return current_project(project)


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
    from orchestrator.supervisor.watch import parse_since

    names, start = _named(project, vms), parse_since(since)
    async with _log(project).follow(
        since_seq=start.seq, since_time=start.time, from_end=start.from_end
    ) as follower:
        yield _Only(follower, names)


def records(project: Project, *vms: str, since: str | None = None) -> list[EventRecord]:
    """The log's records so far (of the VMs named, and the project's own); ``since`` as for
    `events`, None: all of them."""
    from orchestrator.supervisor.watch import concerns, parse_since

    names, start = _named(project, vms), parse_since(since or "all")
    found = _log(project).read(since_seq=start.seq, since_time=start.time)
    return [r for r in found if concerns(r, names)]


class _Only:
    """The records of some VMs (and the project's own) from a follower."""

    def __init__(self, records: AsyncIterator[EventRecord], vms: set[str]) -> None:
        self._records = records
        self._vms = vms

    def __aiter__(self) -> _Only:
        return self

    async def __anext__(self) -> EventRecord:
        from orchestrator.supervisor.watch import concerns

        while True:
            record = await self._records.__anext__()
            if concerns(record, self._vms):
                return record


async def logs(
    project: Project,
    vm: str,
    *,
    follow: bool = False,
    lines: int | None = None,
    sources: Collection[str] = ("console", "journal"),
) -> None:
    """Write a VM's serial console (since it was first powered on) and its unit's journal
    (QEMU's own messages, marked ``unit |``) to standard output; ``follow``: until cancelled."""
    from orchestrator.guest.logs import show_logs
    from orchestrator.state.paths import vm_unit

    select_one(_current(project).model, vm, project=project.name)
    paths, saved = _checked(project, vm)
    await show_logs(
        saved.unit if saved else vm_unit(project.name, vm),  # an earlier version's name too
        paths.console_log,
        user=True,
        journal_dir=journal_dir(),
        follow=follow,
        lines=lines,
        sources=frozenset(sources),
    )


def console_ends(project: Project, vms: Sequence[str]) -> dict[str, tuple[int, int | None]]:
    """Where each VM's console log ends now, and its inode (0, None: none yet): what
    `consoles` starts from (a log made anew since, by a VM re-created, from its start)."""
    ends: dict[str, tuple[int, int | None]] = {}
    for vm in vms:
        try:
            info = _console_log(project, vm).stat()
        except FileNotFoundError:
            ends[vm] = (0, None)
        else:
            ends[vm] = (info.st_size, info.st_ino)
    return ends


async def consoles(
    project: Project,
    since: Mapping[str, tuple[int, int | None]],
    *,
    prefix: bool = True,
    colour: bool = False,
    terminal: bool = False,
    out: BinaryIO | None = None,
) -> None:
    """Write what the consoles of the VMs of ``since`` print after those ends (see
    `console_ends`), line by line, each line prefixed with ``vm | `` (names padded; in a
    colour of their own with ``colour``), to ``out`` (standard output), until cancelled or
    ``out`` cannot be written: what an attached `up` shows. ``terminal``: ``out`` is one,
    so what the guest sent that could drive it goes (its colours stay with ``colour``)."""
    from orchestrator.guest.logs import console_prefixes, follow_consoles

    names = list(since)
    logs = {vm: (_console_log(project, vm), *since[vm]) for vm in names}
    prefixes = console_prefixes(names, colour=colour) if prefix else {}
    await follow_consoles(
        logs, prefixes, out or sys.stdout.buffer, terminal=terminal, colours=colour
    )


def _console_log(project: Project, vm: str) -> Path:
    from orchestrator.state.paths import ProjectPaths

    return ProjectPaths(project.state_dir, project.name).vm(vm).console_log


def console(project: Project, vm: str) -> str:
    """Join this terminal to a VM's serial console until Ctrl+]; returns why it ended."""
    from orchestrator.guest.console import attach

    select_one(_current(project).model, vm, project=project.name)
    paths, _ = _checked(project, vm)  # what is typed goes to whoever serves the socket
    return attach(paths.console_socket, vm)


def _checked(project: Project, vm: str) -> tuple[VmPaths, VmState | None]:
    """A VM's paths and record, every directory on the way checked to be this user's own."""
    from orchestrator.runtime.session import read_state
    from orchestrator.state.files import check_private_dir
    from orchestrator.state.paths import ProjectPaths

    saved = read_state(project).vms.get(vm)  # refuses a state directory that is not ours
    paths = ProjectPaths(project.state_dir, project.name).vm(vm)
    for directory in dict.fromkeys([paths.directory, paths.sockets]):
        if directory.exists() or directory.is_symlink():
            check_private_dir(directory)
    return paths, saved
