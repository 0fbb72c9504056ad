"""A VM its restart policy restarts starts without faults (state.faults): the supervisor takes
them away, and says so in the event log (FAULTS_CLEARED, with the reason and the faults).

Restarted in place (system_reset, the same QEMU): the link cuts, disk throttles and errors
and the network shaping are undone in QEMU through the supervision session (the shaper unit
ends when its chardevs go). A new QEMU (systemd restarted a crashed one, or `up` started it
again): those died with the old one. In both, the VM leaves its partitions (their drops
between TAPs outlive QEMU). A new session on the same QEMU (the supervisor itself restarted)
changes nothing. What QEMU will not take back stays kept, and is said (SUPERVISOR_ERROR).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import netcfg
import qmp
from netcfg.plumbing import HOST, Links
from orchestrator.state.faults import (
    Fault,
    PartitionFault,
    already_undone,
    changing_faults,
    faults_file,
    qemu_of,
    qemu_pid,
    undo_commands,
    without_vms,
)


class Executes(Protocol):
    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...


async def clear_after_restart(
    state_dir: Path,
    vm: str,
    pidfile: Path,
    session: Executes,
    *,
    in_place: bool,
    plumbing: Links = HOST,
) -> tuple[list[str], list[str]]:
    """Take ``vm``'s faults away after its restart (``in_place``: system_reset, else a new
    QEMU); returns what was cleared and what QEMU would not take back (kept), described.
    Nothing kept: nothing read but one stat."""
    if not faults_file(state_dir).exists():
        return [], []
    pid = qemu_pid(pidfile)
    failed: list[Fault] = []
    async with changing_faults(state_dir) as kept:
        mine = [f for f in kept.faults if f.involves(vm)]
        if not in_place and all(qemu_of(f, vm) == pid for f in mine):
            return [], []  # the same QEMU as when they were made: a new session, not a restart
        changed = without_vms(kept, [vm])
        for fault in changed if in_place else ():
            for command in undo_commands(fault):
                try:
                    await session.execute(*command)
                except qmp.CommandError as err:
                    if not already_undone(str(err)):
                        failed.append(fault)  # still in QEMU: still kept
                        break
                except qmp.QmpTimeoutError:  # a live QEMU that did not answer: still there
                    failed.append(fault)
                    break
                except qmp.QmpError:  # QEMU ended meanwhile: so did the fault
                    break
        kept.faults += failed
        if any(isinstance(f, PartitionFault) for f in changed) and kept.table:
            await netcfg.set_partition_drops(kept.table, kept.drops(), plumbing=plumbing)
    cleared = [f.describe() for f in changed if f not in failed]
    return cleared, [f.describe() for f in failed]
