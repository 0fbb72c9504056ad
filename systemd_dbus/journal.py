"""The last lines a unit logged, read with journalctl (there is no D-Bus API for it)."""

from __future__ import annotations

import logging
from pathlib import Path

import trio

log = logging.getLogger(__name__)


def journal_argv(
    unit: str,
    *,
    user: bool,
    lines: int | None,
    directory: Path | None = None,
    follow: bool = False,
    pid: int = 0,
) -> list[str]:
    """journalctl's arguments for ``unit``'s messages, the message text only (``lines``:
    the last so many, or None for all).

    ``pid``: the unit's main process, whose output is matched by PID too: journald cannot
    tell which unit a line came from when the process exited before it read the line.
    """
    argv = [
        "journalctl",
        "--no-pager",
        "--quiet",
        "--output=cat",
        f"--lines={'all' if lines is None else lines}",
    ]
    if directory is not None:
        argv.append(f"--directory={directory}")
    elif user:
        argv.append("--user")
    if follow:
        argv.append("--follow")
    # What --user-unit/--unit match (the unit's lines, the manager's lines about it), spelled
    # as field matches so that the process's PID can be OR-ed in ("+").
    if user:
        argv += [f"_SYSTEMD_USER_UNIT={unit}", "+", f"USER_UNIT={unit}"]
    else:
        argv += [f"_SYSTEMD_UNIT={unit}", "+", f"UNIT={unit}"]
    if pid > 0:
        argv += ["+", f"_PID={pid}"]
    return argv


async def last_lines(
    unit: str,
    *,
    user: bool,
    lines: int = 20,
    directory: Path | None = None,
    timeout: float = 5.0,
    pid: int = 0,
) -> list[str]:
    """Up to ``lines`` last messages of ``unit``; [] when the journal cannot be read.

    journald stores what a process wrote a moment after it wrote it, and may store the
    manager's own messages about the unit before it: so the journal is read until two reads
    0.3 s apart agree (within ``timeout``).
    """
    argv = journal_argv(unit, user=user, lines=lines, directory=directory, pid=pid)
    previous: list[str] | None = None
    with trio.move_on_after(timeout):
        while True:
            try:
                result = await trio.run_process(
                    argv, capture_stdout=True, capture_stderr=True, check=False
                )
            except OSError as err:
                log.debug("cannot run journalctl: %s", err)
                return []
            if result.returncode != 0:
                log.debug("journalctl: %s", result.stderr.decode(errors="replace").strip())
            found = result.stdout.decode(errors="replace").splitlines()[-lines:]
            if found and found == previous:
                return found
            previous = found
            await trio.sleep(0.3)
    if previous:
        return previous
    log.debug("journalctl took longer than %s s", timeout)
    return []
