"""qemu-compose run by an ordinary user: no root, no capability, their own `systemd --user`
(a private one, started as them) and its session bus. Two tiny guests on a bridge network
come up, answer `ssh`, reach each other and resolve each other's names, are partitioned and
healed, stop gracefully and are destroyed; every process and file is the user's, and the
bridge is in the user's own network namespace (rootless mode), never on the host."""

from __future__ import annotations

import json
import os
import shutil
import socket
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


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except FileNotFoundError:
                pass
    return found


def _net_admin_on_the_host(pid: int) -> bool:
    """CAP_NET_ADMIN in its effective set, and its user namespace the initial one."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        user_ns = os.stat(f"/proc/{pid}/ns/user").st_ino
    except (FileNotFoundError, ProcessLookupError):
        return False
    effective = int(next(line for line in status.splitlines() if line.startswith("CapEff:"))
                    .split()[1], 16)  # fmt: skip
    return (
        bool(effective >> 12 & 1) and user_ns == os.stat("/proc/self/ns/user").st_ino
    )  # (the host's, as the test sees it)


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
volumes:
  data: {{size: 16M}}
vms:
  a:
    <<: *tiny
    ports: ["22"]  # (its sshd: a published port to knock on)
    volumes: ["data:/data"]
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
        # a published port, answered on the host's 127.0.0.1 (QEMU's hostfwd, in the host's
        # namespaces); the named volume, attached (the tiny guest leaves it unmounted)
        (published,) = row["ports"]
        host, _, guest = published.partition("->")
        assert host.startswith("127.0.0.1:"), published
        assert guest == "22/tcp", published
        with socket.create_connection(("127.0.0.1", int(host.split(":")[1])), timeout=30) as c:
            c.settimeout(30)
            assert c.recv(64).startswith(b"SSH-")
        serials = run("ssh", "a", "for s in /sys/block/vd*/serial; do cat $s; echo; done")
        assert "data" in serials.stdout.split(), serials.stdout
        assert (project / ".qemu-compose" / "volumes" / "data" / "disk.qcow2").stat().st_uid == (
            person.uid
        )
        # no process of the run may change the host's network: none has CAP_NET_ADMIN in the
        # initial user namespace (dnsmasq and the keeper have it in the user's own only)
        assert _net_admin_on_the_host(os.getpid())  # (the test's own, root's: it would see)
        theirs = _processes_of(person.uid)
        assert len(theirs) >= 5  # their manager, the keeper, dnsmasq, two QEMUs at least
        for pid in theirs:
            assert not _net_admin_on_the_host(pid), Path(f"/proc/{pid}/cmdline").read_bytes()
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


def test_up_refuses_a_bridge_network_the_machine_cannot_hold_before_making_anything(
    person: User, place: Path, their_manager: ManagerHandle
) -> None:
    project, tiny = place / "project", place / "tiny"
    person.run("sh", "-c", f"cat > {project}/qemu-compose.yaml", input=f"""
name: mine
networks:
  lan: {{}}
vms:
  a:
    boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img}}
    memory: 128
    networks: [lan]
""")  # fmt: skip
    tun = Path("/dev/net/tun")
    mode = tun.stat().st_mode & 0o777
    tun.chmod(0o600)  # (as some machines have it): the user cannot open it
    try:
        refused = compose("up", "-d", "--progress", "quiet", cwd=project, manager=their_manager)
    finally:
        tun.chmod(mode)
    assert refused.returncode == 1, refused.stderr
    assert "rootless mode" in refused.stderr
    assert "/dev/net/tun is not open to this user; fix: sudo chmod 0666 /dev/net/tun" in (
        refused.stderr
    )
    units = their_manager.systemctl("list-units", "--all", "--plain", "--no-legend", "qemu-*")
    assert units.stdout.strip() == ""  # no keeper, no dnsmasq, no VM
    assert not (project / ".qemu-compose" / "a").exists()
    assert not (project / ".qemu-compose" / "networks").exists()
