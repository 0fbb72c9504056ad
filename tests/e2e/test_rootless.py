"""qemu-compose run by an ordinary user: no root, no capability, their own `systemd --user`
(a private one, started as them) and its session bus. Two tiny guests on a bridge network
come up, answer `ssh`, reach each other and resolve each other's names, are partitioned and
healed, stop gracefully and are destroyed; every process and file is the user's, and the
bridge is in the user's own network namespace (rootless mode), never on the host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netcfg import names
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
networks:
  lan: {{}}
x-tiny: &tiny
  boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}
  memory: 128
  cpu: 1
  user: root  # (busybox ping needs a raw socket)
  stop_grace_period: 30s
  networks: [lan]
vms:
  a: *tiny
  b: *tiny
""")  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return compose(*args, cwd=project, manager=their_manager, timeout=300)

    doctor = {c["name"]: c for c in json.loads(run("doctor", "--format", "json").stdout)}
    assert doctor["network_mode"]["verdict"] == "ok"
    assert doctor["network_mode"]["detail"].startswith("rootless: no CAP_NET_ADMIN")
    try:
        up = run("up", "-d", "--wait", "--progress", "json")
        assert up.returncode == 0, up.stderr
        rows = ps_rows(project, their_manager)
        row = rows["a"]
        assert {(r["state"], r["health"]) for r in rows.values()} == {("running", "healthy")}
        unit = their_manager.systemctl("show", "-p", "MainPID", "-p", "User", row["unit"]).stdout
        pid = int(dict(line.split("=", 1) for line in unit.split())["MainPID"])
        assert os.stat(f"/proc/{pid}").st_uid == person.uid  # QEMU is theirs
        status = Path(f"/proc/{pid}/status").read_text()
        assert "CapEff:\t0000000000000000" in status  # with no capability at all
        said = run("ssh", "a", "hostname")
        assert (said.returncode, said.stdout.strip()) == (0, "a"), said.stderr
        # the bridge: in the user's namespace (held by their keeper), not on the host
        address = {vm: r["addresses"]["lan"] for vm, r in rows.items()}
        gateway = address["a"].rsplit(".", 1)[0] + ".1"
        for vm, other in (("a", "b"), ("b", "a")):
            reached = run("ssh", vm, f"ping -c 1 -W 5 {address[other]}")
            assert reached.returncode == 0, reached.stdout + reached.stderr
            named = run("ssh", vm, f"nslookup {other}.mine {gateway}")
            assert address[other] in named.stdout, named.stdout + named.stderr
        bridge = names.bridge_name("mine", "lan")
        assert not Path(f"/sys/class/net/{bridge}").exists()
        listed = json.loads(run("network", "ls", "--format", "json").stdout)
        assert [(n["bridge"], n["bridge_exists"], n["dhcp"]) for n in listed] == [
            (bridge, True, "active")
        ]
        # a partition: nft in the user's namespace cuts a from b, and heals
        cut = run("fault", "partition", "a", "b", "--progress", "quiet")
        assert cut.returncode == 0, cut.stderr
        assert run("ssh", "a", f"ping -c 1 -W 2 {address['b']}").returncode != 0
        healed = run("fault", "heal", "--progress", "quiet")
        assert healed.returncode == 0, healed.stderr
        assert run("ssh", "a", f"ping -c 1 -W 5 {address['b']}").returncode == 0
        keeper = their_manager.systemctl("show", "-p", "MainPID", "qemu-compose-netns.service")
        holder = int(keeper.stdout.strip().split("=")[1])
        assert holder > 0
        assert os.stat(f"/proc/{holder}").st_uid == person.uid
        for path in (project / ".qemu-compose").rglob("*"):
            assert path.lstat().st_uid == person.uid, path  # every file theirs
        stopped = run("stop", "--progress", "json")
        assert stopped.returncode == 0, stopped.stderr
        outcome = {
            e["vm"]: e["detail"]
            for e in events(stopped.stdout)
            if e["stage"] == "stop" and e["status"] == "done"
        }
        assert outcome == {"a": "guest-shutdown", "b": "guest-shutdown"}
    finally:
        run("destroy", "--progress", "quiet")
    units = their_manager.systemctl("list-units", "--all", "--plain", "--no-legend", "qemu-*")
    assert units.stdout.strip() == ""
    assert not (project / ".qemu-compose" / "a").exists()
