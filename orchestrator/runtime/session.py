"""One session per command: the project locked (unless only reading), its state read, systemd
connected, and the state written back as VMs change."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

import netcfg
import qmp
import systemd_dbus
from netcfg.plumbing import HOST, Links, OneShotAgent
from netcfg.userns import Namespace
from orchestrator.config.project import Project, scaled
from orchestrator.config.topology import instances, select
from orchestrator.errors import PeerError, QemuComposeError, UsageError, VmError
from orchestrator.progress import Event, Reporter, Stage
from orchestrator.state.files import (
    NO_SPACE,
    ProjectLock,
    ProjectState,
    StateDir,
    check_project_dir,
    no_space,
    sweep_temporaries,
)
from orchestrator.state.identity import Kind, project_dir, taken_by
from orchestrator.state.paths import ProjectPaths, dnsmasq_unit, supervisor_unit, vm_unit
from orchestrator.supervisor.eventlog import EventLog
from orchestrator.supervisor.supervised import write_supervised

from .netmode import Mode, keeper_namespace, network_mode
from .observe import ProjectUnits, project_units, rebuild
from .options import Connection
from .supervision import supervised_table

log = logging.getLogger(__name__)

# The roots of the leaf packages' errors: past the runtime they are PeerError (or VmError)
PEER_ERRORS = (systemd_dbus.SystemdError, qmp.QmpError, netcfg.NetcfgError)
# systemd answers in milliseconds, but a host whose CPUs are all busy starting a hundred TCG
# guests can keep it from answering for more than the default 10 s
CALL_TIMEOUT = 60.0


@dataclass
class Store:
    """The state cache and the supervisor's VM table, written together.

    While VMs start, saves are only noted (``deferred``) and ``flush`` writes them in a
    thread: each write fsyncs, and done inline for every VM of a large project it stalled
    them all.
    """

    project: Project
    paths: ProjectPaths
    state_dir: StateDir
    state: ProjectState
    deferred: bool = False
    dirty: bool = False

    def save(self) -> None:
        if self.deferred:
            self.dirty = True
        else:
            self.state_dir.write_state(self.state)
            supervised = supervised_table(self.project, self.paths, self.state, set(self.state.vms))
            write_supervised(self.paths.supervised_vms, supervised)

    async def flush(self) -> None:
        """Write the state and the supervised VMs if they changed, off the event loop."""
        if not self.dirty:
            return
        self.dirty = False
        state = StateDir.encode(self.state)
        supervised = supervised_table(self.project, self.paths, self.state, set(self.state.vms))
        await trio.to_thread.run_sync(self.state_dir.write_encoded, state)
        await trio.to_thread.run_sync(write_supervised, self.paths.supervised_vms, supervised)

    async def flush_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            await self.flush()

    @asynccontextmanager
    async def deferring(self) -> AsyncIterator[None]:
        """Saves are gathered and flushed every 0.2 s; whatever happens (cancelled too), what
        was saved is written at the end."""
        self.deferred = True
        try:
            async with trio.open_nursery() as saver:
                saver.start_soon(self.flush_every, 0.2)
                yield
                saver.cancel_scope.cancel()
        except BaseException:
            self.deferred = self.dirty = False
            try:  # what failed is what the user must hear of; a full disk here is logged
                self.save()
            except (QemuComposeError, OSError) as err:
                log.warning("cannot save the state after a failure: %s", err)
            raise
        self.deferred = self.dirty = False
        self.save()


@dataclass
class Session:
    project: Project
    paths: ProjectPaths
    manager: systemd_dbus.SystemdManager
    report: Reporter
    connection: Connection
    store: Store
    units: ProjectUnits  # as they were when it opened (with whose they are)
    namespace: Namespace | None = None  # the user's (rootless mode), once asked for
    _links: Links | None = field(default=None, repr=False)

    @property
    def network_mode(self) -> Mode:
        return network_mode(os.environ, netcfg.has_net_admin())[0]

    async def links(self) -> Links:
        """Where this command makes bridges and TAPs: the host, or the user's namespace
        (its keeper started if need be)."""
        if self._links is None:
            if self.network_mode == "host":
                self._links = HOST
            else:
                self.namespace = await keeper_namespace(self.manager)
                self._links = OneShotAgent(self.namespace)
        return self._links

    @property
    def state(self) -> ProjectState:
        return self.store.state

    def taken(self, status: systemd_dbus.UnitStatus, kind: Kind, name: str = "") -> str | None:
        """Whose a unit is, if it is there and not this project's ``kind`` ``name``."""
        if not status.exists:
            return None
        return taken_by(
            status.description, kind, self.project.name, project_dir(self.project), name
        )

    def vm_unit(self, vm: str) -> str:
        """The unit a VM runs (or ran) as: the one its state names, or that systemd has
        for it (an earlier version's name), else the one it will get."""
        saved = self.state.vms.get(vm)
        if saved is not None:
            return saved.unit
        found = self.units.vms.get(vm)
        return found.name if found else vm_unit(self.project.name, vm)

    def dnsmasq_unit(self, network: str) -> str:
        found = self.units.networks.get(network)
        return found.name if found else dnsmasq_unit(self.project.name, network)

    def supervisor_unit(self) -> str:
        found = self.units.supervisor
        return found.name if found else supervisor_unit(self.project.name)

    def names(self, services: Sequence[str]) -> list[str]:
        """The instances a command acts on: the named ones, else all (the file's, then the
        orphans)."""
        model = self.project.model
        if services:
            return [i.name for i in select(model, services, project=self.project.name)]
        everything = [i.name for i in instances(model)]
        others = sorted((set(self.state.vms) | set(self.units.vms)) - set(everything))
        return everything + others  # orphans: in the state, or only on systemd's side


def read_state(project: Project) -> ProjectState:
    """The state cache, or an empty state where the project has no state directory yet."""
    state_dir = StateDir(project.state_dir)
    return state_dir.read_state(project.name) if state_dir.path.exists() else ProjectState()


def with_scale(project: Project, state: ProjectState) -> Project:
    """The project with the replica counts `up --scale` set, where the file still says what
    it said then (an edited ``replicas:`` counts again)."""
    wanted = {
        definition: scale.count
        for definition, scale in state.scale.items()
        if definition in project.model.vms and project.model.vms[definition].replicas == scale.file
    }
    try:
        return scaled(project, wanted)
    except UsageError:  # no longer a replica set: the file's own number
        return project


def current_project(project: Project) -> Project:
    """The project as the commands see it: the file, with the counts `up --scale` set."""
    return with_scale(project, read_state(project))


@asynccontextmanager
async def open_session(
    project: Project, connection: Connection, report: Reporter, *, lock: bool = True
) -> AsyncIterator[Session]:
    """The project locked (unless only reading), its state read, systemd connected.

    A locked session is one that changes things: its steps go to the event log too. Errors
    of systemd, QEMU and the network leave it as PeerError (raised from them). What the state
    file lost is rebuilt from the project's units and instance directories first.
    """
    state_dir = StateDir(project.state_dir)
    held: ProjectLock | None = None
    try:
        with peer_errors():
            check_project_dir(project.directory)
            if lock:
                state_dir.ensure()
                held = ProjectLock(state_dir.path)
                await held.acquire(wait=connection.wait_lock)
                sweep_temporaries(state_dir.path)  # of commands killed while writing
            state = read_state(project)
            project = with_scale(project, state)
            if lock:
                state.project = project.name
            paths = ProjectPaths(project.state_dir, project.name)
            async with (
                qmp.asyncio_loop(),
                systemd_dbus.connect(
                    connection.bus, journal_dir=connection.journal_dir, call_timeout=CALL_TIMEOUT
                ) as manager,
            ):
                units = await project_units(project, manager, state)
                if lock:  # what changes things never touches another project of this name
                    units.refuse_foreign(project)
                store = Store(project, paths, state_dir, state)
                if await rebuild(project, manager, state, units) and lock:
                    store.save()
                yield Session(
                    project=project,
                    paths=paths,
                    manager=manager,
                    report=report.also(_event_log_writer(paths)) if lock else report,
                    connection=connection,
                    store=store,
                    units=units,
                )
    finally:
        if held is not None:
            held.release()


@contextmanager
def peer_errors() -> Iterator[None]:
    """The runtime's boundary: an error of systemd, QEMU or the network, alone or in a
    nursery's group, leaves as PeerError raised from it; a full disk as a StateError that
    says so."""
    try:
        yield
    except BaseExceptionGroup as group:
        if group.subgroup(_translated) is None:
            raise
        raise _as_peer_errors(group) from group
    except Exception as err:
        if not _translated(err):
            raise
        raise _ours(err) from err  # (a full disk a writer did not say itself: said here)


def _translated(err: BaseException) -> bool:
    return isinstance(err, PEER_ERRORS) or (isinstance(err, OSError) and err.errno in NO_SPACE)


def _ours(err: BaseException) -> QemuComposeError:
    """What a leaf error (or a full disk) is said as."""
    if isinstance(err, OSError) and not isinstance(err, PEER_ERRORS) and err.errno in NO_SPACE:
        return no_space(Path(err.filename) if err.filename else None, err)
    return PeerError(str(err))


def _as_peer_errors(group: BaseExceptionGroup[BaseException]) -> BaseExceptionGroup[BaseException]:
    def converted(err: BaseException) -> BaseException:
        if isinstance(err, BaseExceptionGroup):
            return _as_peer_errors(err)
        if _translated(err):
            ours = _ours(err)
            ours.__cause__ = err
            return ours
        return err

    return group.derive([converted(e) for e in group.exceptions])


@contextmanager
def vm_failures(vm: str, unit: str, stage: Callable[[], Stage]) -> Iterator[None]:
    """One VM's boundary: what fails it (systemd, QEMU, the network, a file) leaves as
    VmError naming the VM, its unit and the stage it had reached."""
    try:
        yield
    except VmError:
        raise
    except (*PEER_ERRORS, OSError) as err:
        raise VmError(vm, stage(), unit, str(err)) from err


def _event_log_writer(paths: ProjectPaths) -> Callable[[Event], None]:
    """What `up`, `stop` and `destroy` do to each VM goes to the event log too (for `watch`)."""
    log = EventLog(paths.events_dir)

    def write(event: Event) -> None:
        if event.vm:
            with contextlib.suppress(OSError):  # the log is for watchers: never fail a VM on it
                data = {"status": event.status.value, "detail": event.detail}
                log.append(event.vm, event.stage.value.upper(), data, source="up")

    return write
