"""qemu-compose run by an ordinary user: no root, no capability, their own `systemd --user`
(a private one, started as them) and its session bus. A tiny guest on user-mode networking
comes up, answers `ssh`, stops gracefully and is destroyed; every process and file is the
user's. Bridge networks are refused with the reason until rootless networks are wired in
(#19), and the refusal changes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest_images.build import build
from tests.support.cli import EXE, compose, events, ps_rows
from tests.support.systemd_user import ManagerHandle, UserManager, pid1_is_systemd
from tests.support.users import User, ordinary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]


@pytest.fixture
def person() -> User:
    if pid1_is_systemd():
        pytest.skip("PID 1 is systemd: an ordinary user's manager comes with their login")
    user = ordinary()
    if user.run(EXE, "--version", check=False).returncode != 0:
        pytest.skip(f"{user.name} may not run this venv ({EXE}): make it with Debian's python3")
    return user


@pytest.fixture
def place(person: User) -> Iterator[Path]:
    """A directory of the user's (reachable through /tmp), with a copy of the tiny guest."""
    top = Path(tempfile.mkdtemp(prefix="qc-ordinary-", dir="/tmp"))
    top.chmod(0o755)
    try:
        tiny = build("tiny")
        (top / "tiny").mkdir()
        for name in ("vmlinuz", "initrd.img"):
            shutil.copyfile(tiny / name, top / "tiny" / name)
            (top / "tiny" / name).chmod(0o644)
        project = top / "project"
        project.mkdir()
        os.chown(project, person.uid, person.gid)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def their_manager(person: User, place: Path) -> Iterator[ManagerHandle]:
    manager = UserManager(
        place / "manager", name=f"qc-ordinary-{os.getpid()}", uid=person.uid, gid=person.gid,
        user=person.name,
    )  # fmt: skip
    manager.start()
    try:
        yield ManagerHandle(manager.bus_address, manager.journal_dir, manager)
    finally:
        manager.stop()


def test_an_ordinary_user_runs_vms_without_privilege(
    person: User, place: Path, their_manager: ManagerHandle
) -> None:
    project, tiny = place / "project", place / "tiny"
    config = project / "qemu-compose.yaml"
    person.run("sh", "-c", f"cat > {config}", input=f"""
name: mine
vms:
  a:
    boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}
    memory: 128
    cpu: 1
    user: dev
    stop_grace_period: 30s
""")  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return compose(*args, cwd=project, manager=their_manager, timeout=300)

    try:
        up = run("up", "-d", "--wait", "--progress", "json")
        assert up.returncode == 0, up.stderr
        row = ps_rows(project, their_manager)["a"]
        assert (row["state"], row["health"]) == ("running", "healthy")
        unit = their_manager.systemctl("show", "-p", "MainPID", "-p", "User", row["unit"]).stdout
        pid = int(dict(line.split("=", 1) for line in unit.split())["MainPID"])
        assert os.stat(f"/proc/{pid}").st_uid == person.uid  # QEMU is theirs
        status = Path(f"/proc/{pid}/status").read_text()
        assert "CapEff:\t0000000000000000" in status  # with no capability at all
        said = run("ssh", "a", "hostname")
        assert (said.returncode, said.stdout.strip()) == (0, "a"), said.stderr
        for path in (project / ".qemu-compose").rglob("*"):
            assert path.lstat().st_uid == person.uid, path  # every file theirs
        stopped = run("stop", "--progress", "json")
        assert stopped.returncode == 0, stopped.stderr
        outcome = [e["detail"] for e in events(stopped.stdout) if e["stage"] == "stop"]
        assert outcome[-1] == "guest-shutdown"

        # a bridge network: refused, with why; nothing made, the VM as it was
        person.run(
            "sh", "-c", f"cat >> {config}", input="    networks: [lan]\nnetworks:\n  lan: {}\n"
        )
        refused = run("up", "-d", "--progress", "quiet")
        assert refused.returncode != 0
        assert "CAP_NET_ADMIN" in refused.stderr, refused.stderr
        assert ps_rows(project, their_manager)["a"]["state"] == "exited"
    finally:
        run("destroy", "--progress", "quiet")
    units = their_manager.systemctl("list-units", "--all", "--plain", "--no-legend", "qemu-*")
    assert units.stdout.strip() == ""
    assert not (project / ".qemu-compose" / "a").exists()
