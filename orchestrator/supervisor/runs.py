"""What the supervisor keeps of each VM's run, for `ps` and `inspect` to read without asking
anyone: whether QMP says its guest runs or is paused, the restarts it made in place, and how
the run ended (the unit's result and QEMU's exit status, when). One small file a VM
(``<vm>/run.json``), written whole when one of these changes, which is seldom.
"""

from __future__ import annotations

import logging
import time

import msgspec

import systemd_dbus
from orchestrator.errors import QemuComposeError
from orchestrator.state.files import atomic_write, read_struct
from orchestrator.state.paths import ProjectPaths, VmPaths
from qmp.events import Resume, SessionClosed, SessionEvent, SessionOpened, Shutdown, Stop

log = logging.getLogger(__name__)


class RunRecord(msgspec.Struct, kw_only=True):
    since: int = 0  # the run it is about: the unit's ActiveEnterTimestamp (µs)
    guest: str = ""  # QMP's status: running, paused, shutdown, guest-panicked, ... ("" unknown)
    restarts: int = 0  # in place, by the restart policy (system_reset)
    ended_at: float | None = None  # when the unit stopped (seconds since the epoch)
    result: str = ""  # systemd's: success, exit-code, signal, ...
    exit_code: int | None = None  # QEMU's exit status, or 128 + the signal that killed it

    def is_of(self, since: int) -> bool:
        return since != 0 and self.since == since


def write_run(vm: VmPaths, record: RunRecord) -> None:
    atomic_write(vm.run_record, msgspec.json.encode(record), mode=0o600, durable=False)


def read_run(vm: VmPaths) -> RunRecord | None:
    return read_struct(vm.run_record, RunRecord)


class RunKeeper:
    """The supervisor's side: fed what it sees of each VM's unit and QMP session, it keeps
    each VM's `RunRecord` and writes it when it changes."""

    def __init__(self, paths: ProjectPaths) -> None:
        self.paths = paths
        self._since: dict[str, int] = {}  # by VM: the run its unit is in (0: none)
        self._guest: dict[str, str] = {}  # by VM: the guest's QMP status, as last seen
        self._kept: dict[str, RunRecord] = {}

    def since(self, vm: str) -> int:
        """The run the VM's unit is in: its ActiveEnterTimestamp (µs); 0 when not active."""
        return self._since.get(vm, 0)

    def unit(self, vm: str, status: systemd_dbus.UnitStatus) -> None:
        """The unit began a run (a new record) or ended it (its result kept)."""
        self._since[vm] = status.active_enter_usec if status.is_active else 0
        if status.is_active:
            record = self._record(vm, status.active_enter_usec)
            if record is not None and record.ended_at is not None:  # (a record of a reload)
                record.ended_at, record.result, record.exit_code = None, "", None
                self._write(vm)
        elif status.has_stopped:
            record = self._kept.get(vm)
            if record is None or record.ended_at is not None:
                return
            ended = status.inactive_enter_usec or status.active_exit_usec
            record.ended_at = ended / 1e6 if ended else time.time()  # (collected at once)
            record.result = status.result
            code = status.exec_main_code
            if code == 1:
                record.exit_code = status.exec_main_status
            elif code in (2, 3):
                record.exit_code = 128 + status.exec_main_status
            record.guest = ""
            self._write(vm)

    def _record(self, vm: str, since: int) -> RunRecord | None:
        """The VM's record of the run its unit began at ``since``: kept, read back (an
        earlier supervisor's), or new (and written)."""
        record = self._kept.get(vm)
        if record is not None and record.is_of(since):
            return record
        if since == 0:
            return None
        found = read_run(self.paths.vm(vm))
        if found is not None and found.is_of(since):
            record = found
            if vm in self._guest:
                record.guest = self._guest[vm]
        else:
            record = RunRecord(since=since, guest=self._guest.get(vm, ""))
        self._kept[vm] = record
        self._write(vm)
        return record

    def _write(self, vm: str) -> None:
        try:
            write_run(self.paths.vm(vm), self._kept[vm])
        except (OSError, QemuComposeError) as err:  # destroyed meanwhile, or a full disk
            log.warning("cannot write the run record of %s: %s", vm, err)

    def guest(self, vm: str, event: SessionEvent) -> None:
        """The guest's QMP status after ``event``; a restart in place counted."""
        before = self._guest.get(vm, "")
        if isinstance(event, SessionOpened):
            now = event.status or ""
        elif isinstance(event, Resume):
            now = "running"
        elif isinstance(event, Stop):
            now = "paused" if before == "running" else before  # (STOP follows a SHUTDOWN too)
        elif isinstance(event, Shutdown):
            now = "shutdown"
        elif isinstance(event, SessionClosed):
            now = ""
        else:
            return
        self._guest[vm] = now
        record = self._record(vm, self.since(vm))
        if record is not None and record.guest != now and record.ended_at is None:
            record.guest = now
            self._write(vm)

    def restarted(self, vm: str) -> None:
        record = self._record(vm, self.since(vm))
        if record is not None:
            record.restarts += 1
            self._write(vm)
