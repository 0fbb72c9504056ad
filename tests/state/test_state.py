"""The state directory: private permissions, atomic writes, corrupt files, the project lock.

The lock is tested across real processes: flock is per open file description, so only a
second process shows whether it really excludes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio

from orchestrator import LockHeldError, ProjectLock, ProjectState, StateDir, StateError
from orchestrator.state.files import STATE_VERSION, VmState, atomic_write

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from orchestrator.state.files import ProjectLock
    lock = ProjectLock(Path(sys.argv[1]), command="qemu-compose up")
    lock.try_acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def _start_holder(state_dir: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_dir), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the project lock (for 60 s, unless killed)."""
    proc = _start_holder(tmp_path / ".qemu-compose", 60)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def brief_holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the project lock for half a second."""
    proc = _start_holder(tmp_path / ".qemu-compose", 0.5)
    yield proc
    proc.kill()
    proc.wait()


def test_state_dir_is_private(tmp_path: Path) -> None:
    state = StateDir(tmp_path / ".qemu-compose").ensure()
    assert state.path.stat().st_mode & 0o777 == 0o700
    state.path.chmod(0o755)
    state.ensure()
    assert state.path.stat().st_mode & 0o777 == 0o700


def test_state_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path / ".qemu-compose")
    assert state.read_state("demo") == ProjectState(project="demo")
    saved = ProjectState(
        project="demo",
        vms={
            "web": VmState(unit="qemu-compose-demo-web.service", config_hash="abc", created_at=1.5)
        },
    )
    state.write_state(saved)
    assert state.read_state("demo") == saved
    assert state.state_file.stat().st_mode & 0o777 == 0o600
    assert msgspec.json.decode(state.state_file.read_bytes())["version"] == STATE_VERSION


def test_atomic_write_leaves_no_temporary_file_and_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")
    atomic_write(target, b"new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")

    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_writer_killed_mid_write_leaves_the_old_state(tmp_path: Path) -> None:
    """SIGKILL while writing a large state: readers still see the old, whole file."""
    state = StateDir(tmp_path / ".qemu-compose")
    state.write_state(ProjectState(project="demo"))
    writer = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from orchestrator.state.files import ProjectState, StateDir, VmState
        big = ProjectState(project="demo", vms={
            f"vm{i}": VmState(unit="u" * 200, config_hash="h" * 64, created_at=0.0)
            for i in range(20000)})
        s = StateDir(Path(sys.argv[1]))
        print("ready", flush=True)
        while True:
            s.write_state(big)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", writer, str(state.path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    read = state.read_state("demo")  # whole: the old one or a complete new one
    assert read.project == "demo"
    assert len(read.vms) in (0, 20000)
    assert not list(state.path.glob("*.corrupt-*"))


def test_corrupt_state_is_moved_aside_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateDir(tmp_path / ".qemu-compose").ensure()
    state.state_file.write_text('{"version": 1, "vms": {"web": ')
    assert state.read_state("demo") == ProjectState(project="demo")
    aside = list(state.path.glob("state.json.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_text().startswith('{"version": 1')
    assert not state.state_file.exists()
    assert "moved it to" in caplog.text


def test_state_of_the_wrong_shape_is_moved_aside(tmp_path: Path) -> None:
    state = StateDir(tmp_path / ".qemu-compose").ensure()
    state.state_file.write_text('{"version": 1, "vms": ["not", "a", "mapping"]}')
    assert state.read_state("demo").vms == {}
    assert list(state.path.glob("state.json.corrupt-*"))


def test_state_from_a_newer_version_is_refused_not_destroyed(tmp_path: Path) -> None:
    state = StateDir(tmp_path / ".qemu-compose").ensure()
    state.state_file.write_text('{"version": 99, "future": true}')
    with pytest.raises(StateError, match="newer qemu-compose"):
        state.read_state("demo")
    assert state.state_file.read_text() == '{"version": 99, "future": true}'


def test_lock_excludes_another_process_and_names_it(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    lock = ProjectLock(tmp_path / ".qemu-compose")
    with pytest.raises(LockHeldError) as caught:
        lock.try_acquire()
    assert caught.value.holder_pid == holder.pid
    assert caught.value.holder_command == "qemu-compose up"
    assert f"process {holder.pid} (qemu-compose up)" in str(caught.value)
    assert not lock.held


def test_lock_is_freed_when_its_holder_dies(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = ProjectLock(tmp_path / ".qemu-compose")
    with lock.held_now():
        assert lock.held
        assert (tmp_path / ".qemu-compose" / "lock").read_text().split()[0] == str(os.getpid())
        assert (tmp_path / ".qemu-compose" / "lock").stat().st_mode & 0o777 == 0o600
    assert not lock.held


async def test_waiting_for_the_lock(tmp_path: Path, brief_holder: subprocess.Popen[str]) -> None:
    lock = ProjectLock(tmp_path / ".qemu-compose")
    with pytest.raises(LockHeldError):
        await lock.acquire(wait=False)
    started = trio.current_time()
    with trio.fail_after(10):
        await lock.acquire(wait=True)
    assert lock.held
    assert trio.current_time() - started > 0.1
    lock.release()


async def test_waiting_for_the_lock_is_cancellable(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    lock = ProjectLock(tmp_path / ".qemu-compose")
    with trio.move_on_after(0.3) as scope:
        await lock.acquire(wait=True)
    assert scope.cancelled_caught
    assert not lock.held


def test_two_locks_in_one_process_still_exclude(tmp_path: Path) -> None:
    first = ProjectLock(tmp_path / ".qemu-compose")
    second = ProjectLock(tmp_path / ".qemu-compose")
    with first.held_now(), pytest.raises(LockHeldError):
        second.try_acquire()


def test_what_killed_writers_left_is_swept_and_a_live_writers_file_kept(tmp_path: Path) -> None:
    import subprocess

    from orchestrator.state.files import sweep_temporaries

    dead_pid = subprocess.Popen(["true"])  # a PID that is no longer there
    dead_pid.wait()
    vm = tmp_path / "web"
    vm.mkdir()
    dead = tmp_path / f".state.json.{dead_pid.pid}.abc123.tmp"
    alive = tmp_path / f".state.json.{os.getpid()}.def456.tmp"
    fixed = vm / ".seed.iso.tmp"
    raw = vm / ".disk.qcow2.raw"
    kept = vm / "disk.qcow2"
    for path in (dead, alive, fixed, raw, kept):
        path.write_bytes(b"x")
    assert sorted(sweep_temporaries(tmp_path)) == sorted([dead, fixed, raw])
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        alive.name,
        "disk.qcow2",
    ]
