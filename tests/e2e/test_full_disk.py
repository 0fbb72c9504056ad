"""`up` on a full disk (#13, item 5): a clear error, nothing half-written, and once there is
room again the same `up` converges. A real tmpfs of 1 MiB, a no-disk VM, the real CLI.

The tmpfs must be seen by the CLI and by what systemd starts: with a private user manager
(its own mount namespace) it is mounted there and the CLI runs there too (nsenter)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import EXE, compose_env
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs"),
]


class Place:
    """A directory on a small tmpfs, where the manager's units see it."""

    def __init__(self, path: Path, manager: ManagerHandle) -> None:
        self.path = path
        self.manager = manager
        pid = manager.private.journald_pid if manager.private else None
        self.enter = ["nsenter", f"--mount=/proc/{pid}/ns/mnt"] if pid else []
        self.seen = Path(f"/proc/{pid}/root{path}") if pid else path  # as this process sees it

    def run(self, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        if self.enter:  # the working directory is the namespace's: cd there, then exec
            argv = ("sh", "-c", 'cd "$0" && exec "$@"', str(cwd or "/"), *argv)
        return subprocess.run(
            [*self.enter, "--", *argv] if self.enter else list(argv),
            cwd=None if self.enter else cwd, env=compose_env(self.path, self.manager),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    def compose(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return self.run(EXE, *args, cwd=cwd)


@pytest.fixture
def small(
    tmp_path: Path, user_manager: ManagerHandle, request: pytest.FixtureRequest
) -> Iterator[Place]:
    place = Place(tmp_path / "small", user_manager)
    place.path.mkdir()
    size = getattr(request, "param", "1m")
    options = f"size={size},mode=0755"
    mounted = place.run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(place.path))
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield place
    finally:
        place.run("umount", "-l", str(place.path))


def test_up_on_a_full_disk_fails_clearly_and_converges(small: Place) -> None:
    project = small.path / "p"
    (small.seen / "p").mkdir()
    (small.seen / "p" / "qemu-compose.yaml").write_text(
        "name: full\nvms:\n  a: {memory: 64, cpu: 1, healthcheck: {disable: true}}\n"
    )
    small.run("sh", "-c", f"dd if=/dev/zero of={small.path}/filler bs=4k 2>/dev/null; true")
    failed = small.compose("up", "-d", "--progress", "plain", cwd=project)
    assert failed.returncode == 1, failed.stderr
    assert "no space left" in failed.stderr
    assert "internal error" not in failed.stderr
    assert "Traceback" not in failed.stderr
    assert [p.name for p in (small.seen / "p").rglob(".*.tmp")] == []  # nothing half-written
    (small.seen / "filler").unlink()
    try:
        again = small.compose("up", "-d", "--progress", "plain", cwd=project)
        assert again.returncode == 0, again.stderr
        rows = small.compose("ps", "--format", "json", cwd=project)
        assert '"state":"running"' in rows.stdout, rows.stdout
    finally:
        gone = small.compose("destroy", "--progress", "quiet", cwd=project)
        assert gone.returncode == 0, gone.stderr


@pytest.mark.parametrize("small", ["128m"], indirect=True)
def test_a_snapshot_on_a_full_disk_harms_neither_the_last_one_nor_the_vm(small: Place) -> None:
    """A save that cannot fit is refused before the VM stands still (memory: QEMU's state is
    up to its RAM) or undone when the disk fills under it (the volume's point in time, which
    qcow2 writes): the snapshot before it restores, and the VM runs on."""
    project = small.path / "p"
    (small.seen / "p").mkdir()
    (small.seen / "p" / "qemu-compose.yaml").write_text(
        "name: fullsnap\nvolumes:\n  data: {size: 16M}\nvms:\n"
        "  a: {memory: 16, cpu: 1, healthcheck: {disable: true}, volumes: ['data:/data']}\n"
    )

    def ok(*args: str) -> str:
        done = small.compose(*args, cwd=project)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def listed() -> list[tuple[str, bool]]:
        rows = json.loads(ok("snapshot", "ls", "--format", "json"))
        return [(r["name"], r["complete"]) for r in rows]

    def status() -> str:
        return str(json.loads(ok("inspect", "a", "--format", "json"))["qemu_status"])

    try:
        ok("up", "-d", "--progress", "quiet")
        ok("snapshot", "save", "s1", "--progress", "quiet")
        small.run("sh", "-c", f"dd if=/dev/zero of={small.path}/filler bs=64k 2>/dev/null; true")
        for args, says in (
            (["snapshot", "save", "s2"], "not enough room for the memory"),
            (["snapshot", "save", "s3", "--no-memory"], "no space left"),
        ):
            failed = small.compose(*args, "--progress", "plain", cwd=project)
            assert failed.returncode == 1, (args, failed.stderr)
            assert says in failed.stderr.lower(), failed.stderr
            assert "Traceback" not in failed.stderr
            assert listed() == [("s1", True)]
            assert status() == "running"
        assert sorted(p.name for p in (small.seen / "p/.qemu-compose/snapshots").iterdir()) == [
            "s1"
        ]
        (small.seen / "filler").unlink()
        ok("snapshot", "restore", "s1", "--progress", "quiet")
        assert status() == "running"
        ok("snapshot", "save", "s3", "--no-memory", "--progress", "quiet")  # room again
        assert listed() == [("s1", True), ("s3", True)]
    finally:
        gone = small.compose("destroy", "--volumes", "--progress", "quiet", cwd=project)
        assert gone.returncode == 0, gone.stderr
