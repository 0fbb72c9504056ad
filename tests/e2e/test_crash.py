"""Crash consistency (#13, items 6 and 9): the CLI killed at random moments, or interrupted
with Ctrl-C, never leaves what the next command cannot repair, and never loses a volume's
data. The real CLI, a real user manager, real QEMUs (no-disk VMs, one with a named volume)
and, as root, a bridge network with its dnsmasq.

The moments are random but reproducible: the seed is printed, and QEMU_COMPOSE_TEST_SEED
replays a run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import netcfg
from tests.e2e.test_lifecycle import links_of, units
from tests.support.cli import compose, compose_background
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]
BRIDGES = netcfg.has_net_admin() and shutil.which("dnsmasq") is not None
RUNS = 40
PATTERN = "0x5a"
COMMANDS = (
    ("up", "-d"),
    ("stop",),
    ("up", "-d", "--force-recreate"),
    ("up", "-d"),
    ("destroy",),
)


def qemu_io(volume: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(volume)],
                          capture_output=True, text=True, check=False)  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, user_manager: ManagerHandle) -> Any:
    yield tmp_path
    compose("destroy", "--volumes", "--progress", "quiet", cwd=tmp_path, manager=user_manager,
            timeout=300)  # fmt: skip


def write_project(directory: Path) -> None:
    lan = ", networks: [lan]" if BRIDGES else ""
    (directory / "qemu-compose.yaml").write_text(
        "name: crashy\n"
        + ("networks: {lan: {}}\n" if BRIDGES else "")
        + "volumes: {data: {size: 16M}}\nvms:\n"
        + f"  a: {{memory: 64, cpu: 1, healthcheck: {{disable: true}}, volumes: [data:/data]{lan}}}\n"
        + f"  b: {{memory: 64, cpu: 1, healthcheck: {{disable: true}}{lan}}}\n"
    )


def stray_files(state_dir: Path) -> list[str]:
    """Temporary files a killed write left behind (the next command that takes the lock
    removes those of writers that are gone)."""
    return sorted(str(p.relative_to(state_dir)) for p in state_dir.rglob(".*.tmp"))


def check_converged(project: Path, manager: ManagerHandle, command: tuple[str, ...]) -> None:
    """What must hold once ``command`` ran to its end after a killed one."""
    state_dir = project / ".qemu-compose"
    state = state_dir / "state.json"
    if state.exists():
        json.loads(state.read_text())  # always parses
    vm_units = units(manager, "qemu-compose-crashy-*")
    dnsmasq = units(manager, "qemu-compose-dnsmasq-crashy-*")
    if command[0] == "up":
        assert vm_units == [
            "qemu-compose-crashy-a.service",
            "qemu-compose-crashy-b.service",
            "qemu-compose-crashy-supervisor.service",
        ], command
        if BRIDGES:
            assert len(dnsmasq) == 1, command
            assert len(links_of("crashy")) == 3, command  # the bridge and a TAP a VM
    elif command[0] == "stop":
        assert vm_units == [], command
    else:  # destroy: nothing of the project but its volume
        assert (vm_units, dnsmasq) == ([], []), command
        if BRIDGES:
            assert links_of("crashy") == [], command
        assert [vm for vm in ("a", "b") if (state_dir / vm).exists()] == [], command
        runtime = manager.private.runtime_dir if manager.private else None
        if runtime is not None and (runtime / "qemu-compose").exists():
            assert list((runtime / "qemu-compose").iterdir()) == [], command  # no socket dir


def test_a_cli_killed_at_random_moments_converges_and_loses_nothing(
    project: Path, user_manager: ManagerHandle
) -> None:
    seed = int(os.environ.get("QEMU_COMPOSE_TEST_SEED") or time.time_ns() % 1_000_000)
    print(f"QEMU_COMPOSE_TEST_SEED={seed}")
    chance = random.Random(seed)
    write_project(project)
    quiet = ("--progress", "quiet")
    assert compose("up", "-d", *quiet, cwd=project, manager=user_manager).returncode == 0
    assert compose("stop", *quiet, cwd=project, manager=user_manager).returncode == 0
    volume = project / ".qemu-compose" / "volumes" / "data" / "disk.qcow2"
    assert qemu_io(volume, f"write -P {PATTERN} 1M 64k").returncode == 0

    durations = dict.fromkeys(COMMANDS, 2.0)  # learnt from the uninterrupted runs
    for run in range(RUNS):
        command = COMMANDS[run % len(COMMANDS)]
        moment = chance.uniform(0.05, durations[command])
        killed = compose_background(*command, *quiet, cwd=project, manager=user_manager)
        try:
            killed.wait(moment)
        except subprocess.TimeoutExpired:
            killed.send_signal(signal.SIGKILL)  # no clean-up of any kind
            killed.wait(30)
        began = time.monotonic()
        again = compose(*command, *quiet, cwd=project, manager=user_manager, timeout=300)
        assert again.returncode == 0, (seed, run, command, moment, again.stderr)
        durations[command] = max(durations[command], time.monotonic() - began)
        check_converged(project, user_manager, command)
        print(f"run {run}: {' '.join(command)} killed after {moment:.2f} s: converged")

    assert compose("stop", *quiet, cwd=project, manager=user_manager).returncode == 0
    assert qemu_io(volume, f"read -P {PATTERN} 1M 64k").returncode == 0  # the data is there
    assert stray_files(project / ".qemu-compose") == []


def wait_ready(attached: subprocess.Popen[str], vms: set[str]) -> None:
    assert attached.stdout is not None
    ready = set()
    for line in attached.stdout:
        event = json.loads(line)
        if event["stage"] == "ready" and event["status"] == "done":
            ready.add(event["vm"])
            if ready == vms:
                return
    raise AssertionError(f"up ended before {sorted(vms - ready)} were ready")


def test_ctrl_c_at_any_moment_of_an_attached_up_stops_what_it_started(
    project: Path, user_manager: ManagerHandle
) -> None:
    """Ctrl-C while `up` (attached) still starts the VMs, and once they run: exit 130, the
    VMs and the supervisor stopped."""
    write_project(project)
    for moment in (0.0, 1.0, None):  # before the VMs run, while they start, once up
        attached = compose_background("up", "--progress", "json", cwd=project, manager=user_manager)
        if moment is None:
            wait_ready(attached, {"a", "b"})
        else:
            assert attached.stdout is not None
            assert json.loads(attached.stdout.readline())  # up has begun: trio runs
            time.sleep(moment)
        attached.send_signal(signal.SIGINT)
        attached.communicate(timeout=120)
        assert attached.returncode == 130, moment
        assert units(user_manager, "qemu-compose-crashy-*") == [], moment
        said = max(project.glob("stderr-up-*.txt"), key=lambda p: p.stat().st_mtime).read_text()
        assert "error" not in said, (moment, said)  # how an attached up ends: no error


def test_a_second_ctrl_c_skips_the_grace_period(project: Path, user_manager: ManagerHandle) -> None:
    """A guest that ignores the power button (firmware on a blank disk), a long grace: the
    first Ctrl-C waits for it, the second ends it now."""
    blank = project / "blank.raw"
    blank.write_bytes(b"\0" * (1 << 20))
    (project / "qemu-compose.yaml").write_text(
        "name: crashy\nvms:\n"
        f"  a: {{image: {blank}, memory: 64, cpu: 1, healthcheck: {{disable: true}},"
        " stop_grace_period: 5m}\n"
    )
    attached = compose_background("up", "--progress", "json", cwd=project, manager=user_manager)
    wait_ready(attached, {"a"})
    attached.send_signal(signal.SIGINT)
    time.sleep(3)
    assert attached.poll() is None  # waiting out the grace period
    began = time.monotonic()
    attached.send_signal(signal.SIGINT)
    attached.communicate(timeout=60)
    assert attached.returncode == 130
    assert time.monotonic() - began < 30
    assert units(user_manager, "qemu-compose-crashy-*") == []
