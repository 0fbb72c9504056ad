"""A guest's wall clock set to the host's, after it resumed from saved state (a snapshot or
a warm clone's template: its clock is where it was saved). Pure.

The time is not sent as a number when the command is made: the SSH exec, sudo and the
shell take a second or more under TCG, and the guest would run that much behind. The
guest's uptime runs on while it lives, so one reading of it (`UPTIME_COMMAND`, answered
within milliseconds of the reading) anchors it to the host's clock: the host's time less
that uptime is the guest's boot as an epoch (`boot_epoch`). `set_clock` is sh that adds
the uptime *at the moment it runs* to that anchor.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

UPTIME_COMMAND = "cut -d' ' -f1 /proc/uptime"

# $boot: the anchor. GNU date takes a fraction of a second; busybox's only whole seconds
# (rounded: within half a second). awk in the C locale: a decimal point, never a comma.
SET_CLOCK = r"""t=$(LC_ALL=C awk -v b="$boot" '{printf "%.3f", b + $1}' /proc/uptime) &&
{ date -u -s "@$t" >/dev/null 2>&1 ||
{ t=$(LC_ALL=C awk -v t="$t" 'BEGIN {printf "%d", t + 0.5}') &&
date -u -s "@$t" >/dev/null 2>&1; }; }"""


def boot_epoch(uptime_output: bytes, host_now: float) -> float | None:
    """The guest's boot on the host's clock, from what `UPTIME_COMMAND` printed and the
    host's time when it came back (None: not an uptime)."""
    lines = uptime_output.decode(errors="replace").split()  # (the last: after any login noise)
    try:
        uptime = float(lines[-1])
    except (IndexError, ValueError):
        return None
    if not 0 <= uptime < host_now:
        return None
    return host_now - uptime


def clock_command(boot: float) -> str:
    """The command that sets the clock from the anchor, as root (or with sudo)."""
    return as_root(f"boot={boot:.3f}\n{SET_CLOCK}", "qemu-compose-clock", [])


def as_root(script: str, name: str, args: Sequence[str]) -> str:
    """A command line that runs sh ``script`` (``$0`` ``name``, then ``args``, every one
    quoted) as root: directly where the account is root, else with ``sudo -n``. The script
    is in it once: dropbear refuses a command longer than 9000 bytes (MAX_CMD_LEN)."""
    inner = shlex.join(["sh", "-c", script, name, *args])
    return f'if [ "$(id -u)" = 0 ]; then set --; else set -- sudo -n; fi; "$@" {inner}'


__all__ = ["SET_CLOCK", "UPTIME_COMMAND", "as_root", "boot_epoch", "clock_command"]
