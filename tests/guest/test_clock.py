"""A resumed guest's clock: anchored to its uptime, set by sh when it runs (not when the
command was made). The sh runs here, with a `date` that records what it was asked."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.guest.clock import SET_CLOCK, as_root, boot_epoch, clock_command


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def test_the_anchor_is_the_hosts_time_less_the_uptime() -> None:
    assert boot_epoch(b"123.45\n", 1_000_000.0) == pytest.approx(1_000_000.0 - 123.45)
    assert boot_epoch(b"no\n", 1_000_000.0) is None
    assert boot_epoch(b"", 1_000_000.0) is None
    assert boot_epoch(b"-1\n", 1_000_000.0) is None
    assert boot_epoch(b"2000000\n", 1_000_000.0) is None


def run_set_clock(shell: str, asked: Path, boot: float, *, whole_seconds_only: bool) -> None:
    """SET_CLOCK with its `date` swapped for a shell function that records its arguments in
    ``asked`` (and, like busybox's date, refuses a fraction of a second where told to): no
    real date is ever run (as root it would set this machine's clock)."""
    assert SET_CLOCK.count("date -u -s ") == 2
    script = SET_CLOCK.replace("date -u -s ", "record -u -s ")
    refuse = 'case "$3" in *.*) return 1;; esac; ' if whole_seconds_only else ""
    record = f'record() {{ {refuse}echo "$@" >> "{asked}"; }}'
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    done = subprocess.run(
        [*argv, "-c", f"{record}\nboot={boot}\n{script}"], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("shell", ["sh", "dash", "busybox"])
def test_the_clock_is_set_from_the_uptime_when_the_script_runs(tmp_path: Path, shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    boot = 1_700_000_000.0  # an anchor; the set time is this plus the uptime of then
    before = uptime()
    run_set_clock(shell, tmp_path / "asked", boot, whole_seconds_only=False)
    after = uptime()
    flag, _, value = (tmp_path / "asked").read_text().split()
    assert flag == "-u"
    assert value.startswith("@")
    assert "." in value  # to the millisecond
    assert boot + before - 0.01 <= float(value[1:]) <= boot + after + 0.01


@pytest.mark.parametrize("shell", ["sh", "busybox"])
def test_a_date_without_fractions_gets_the_nearest_whole_second(tmp_path: Path, shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    now = uptime()
    boot = 1_700_000_000 + 0.75 - (now - int(now))  # the time set: N.75 and some milliseconds
    run_set_clock(shell, tmp_path / "asked", boot, whole_seconds_only=True)
    after = uptime()
    value = (tmp_path / "asked").read_text().split()[-1]
    assert value.startswith("@17")
    assert "." not in value
    assert round(boot + now) <= int(value[1:]) <= round(boot + after)  # N + 1, not N: rounded


def test_the_command_runs_the_script_as_root_with_its_values_quoted() -> None:
    command = as_root('printf "%s|" "$0" "$@"', "name", ["a b", "$(id)"])
    if os.geteuid() != 0:
        pytest.skip("as root: elsewhere sudo -n may refuse")
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    assert done.stdout == "name|a b|$(id)|"
    assert "boot=1700000000.250" in clock_command(1_700_000_000.25)


def test_login_noise_before_the_uptime_is_ignored() -> None:
    assert boot_epoch(b"Could not chdir to home directory\n42.5\n", 100.0) == 57.5
