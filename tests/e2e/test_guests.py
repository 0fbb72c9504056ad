"""Real Debian guests with cloud-init, brought up by the CLI: bridge network, names, volumes.

Three VMs (app needs db healthy, web needs db started; a healthcheck on db) on an automatic
bridge subnet, a named volume on db and a bind mount on web. Slow under TCG (minutes per
boot), so one test walks the whole life: up, names over the bridge, faults, snapshots, a
changed VM restarted alone, a graceful stop, destroy keeping the volume and its data; and
one boots warm replicas of a Debian guest.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.guest_images.build import build
from tests.support.cli import EXE, compose, compose_env, events, ps_rows
from tests.support.systemd_user import ManagerHandle
from tests.support.volumes import ext4_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.built_guest,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None or shutil.which("dnsmasq") is None,
        reason="needs QEMU and dnsmasq",
    ),
]


def ssh(project: Path, port: int, command: str) -> str:
    result = subprocess.run(
        [
            "ssh", "-o", "LogLevel=ERROR", "-i", str(project / ".qemu-compose/ssh/id_ed25519"), "-p", str(port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "debian@127.0.0.1", command,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def console_login(project: Path, manager: ManagerHandle, vm: str, user: str, password: str) -> str:
    """Log in on the serial console through `qemu-compose console` on a pty; what it showed."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [EXE, "console", vm],
        cwd=project,
        env=compose_env(project, manager),
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    seen = b""

    def expect(text: bytes, timeout: float = 60) -> bool:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if select.select([master], [], [], left)[0]:
                seen += os.read(master, 4096)
        return True

    try:
        for _ in range(20):  # until attached (raw mode drops what was typed before) and asked
            os.write(master, b"\r")
            if expect(b"login: ", 3):
                break
        else:
            pytest.fail(f"no login prompt on the console: {seen[-300:]!r}")
        os.write(master, user.encode() + b"\r")
        assert expect(b"Password: "), seen[-300:]
        os.write(master, password.encode() + b"\r")
        assert expect(b"$ "), seen[-300:]
        seen = b""
        os.write(master, b"cat /etc/hostname\r")
        assert expect(b"$ "), seen[-300:]
        shown = seen.decode(errors="replace")
        os.write(master, b"exit\r\x1d")  # log out, then Ctrl+] detaches
        assert process.wait(10) == 0
        assert process.stderr is not None
        assert "qemu-compose: detached" in process.stderr.read().decode()
        return shown
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)


def faults_on_a_real_guest(project: Path, manager: ManagerHandle, web: int) -> None:
    """Faults on Debian (cloud-init, systemd-networkd): its kernel panics on an NMI as our
    cloud-init set it to; a partition cuts web off from db's sshd by name, and heals; a
    delay on what db sends shows in web's TCP handshake with it, and goes."""
    assert ssh(project, web, "cat /proc/sys/kernel/unknown_nmi_panic") == "1\n"
    handshake = (  # timed inside bash (its clock, no process started): the connect alone
        "timeout 5 bash -c 's=${EPOCHREALTIME/./}; exec 3<>/dev/tcp/db/22 || exit 1; "
        "echo $(( (${EPOCHREALTIME/./} - s) / 1000 ))' 2>/dev/null || echo cut"
    )

    def connect_ms() -> int | None:
        said = ssh(project, web, handshake).strip()
        return None if said == "cut" else int(said)

    def fault(*args: str) -> None:
        done = compose("fault", *args, "--progress", "quiet", cwd=project, manager=manager)
        assert done.returncode == 0, (args, done.stderr)

    # (a handshake here takes well under a second under TCG, even on a busy machine: a
    # second of delay stands out of that)
    assert connect_ms() is not None
    fault("partition", "web", "db")
    assert connect_ms() is None
    fault("heal")
    bases = [connect_ms(), connect_ms()]
    assert None not in bases
    base = min(b for b in bases if b is not None)
    fault("net", "db", "lan", "--egress", "--delay", "1s")
    delayed = connect_ms()
    assert delayed is not None
    assert delayed >= 950  # db's SYN-ACK waits a second
    assert delayed - base > 700, (bases, delayed)
    fault("clear")
    cleared = connect_ms()
    assert cleared is not None
    assert cleared < delayed - 500


# An echo server and a client that keeps one connection to it busy (Debian's python3, which
# cloud-init needs): the client counts the echoes it got, and ends on any error.
ECHO_SERVER = """import socket, threading
def echo(c):
    while data := c.recv(64):
        c.sendall(data)
s = socket.create_server(("0.0.0.0", 7007))
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""
ECHO_CLIENT = """import os, socket, time
for _ in range(300):  # (until db's server listens: python starts slowly under TCG)
    try:
        s = socket.create_connection(("db", 7007), timeout=60)
        break
    except OSError:
        time.sleep(0.2)
n = 0
while True:
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    n += 1
    with open("/tmp/.talk.count", "w") as f:
        f.write(f"{n}\\n")
    os.replace("/tmp/.talk.count", "/tmp/talk.count")
    time.sleep(0.2)
"""


def snapshots_on_a_real_guest(project: Path, manager: ManagerHandle, rows: dict[str, Any]) -> None:
    """Snapshots of Debian guests: web's mounted 9p share blocks saving its memory (refused,
    nothing kept); db and app saved, changed, restored: the volume's file and a process in
    memory as they were, a TCP connection between them going on, no boot, the clock set, db
    healthy again. (Suspend and the API's context manager: on the tiny guests.)"""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return compose(*args, cwd=project, manager=manager, timeout=600)

    def ok(*args: str) -> str:
        done = run(*args, "--progress", "quiet")
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def boots(vm: str) -> int:
        text = (project / f".qemu-compose/{vm}/console.log").read_text(errors="replace")
        return text.count("Linux version")

    db, app = rows["db"]["ssh_port"], rows["app"]["ssh_port"]
    refused = run("snapshot", "save", "all")
    assert refused.returncode == 1, refused.stderr
    assert "web" in refused.stderr
    assert "--no-memory" in refused.stderr
    assert json.loads(run("snapshot", "ls", "--format", "json").stdout) == []
    assert {r["state"] for r in ps_rows(project, manager).values()} == {"running"}

    ssh(project, db, "echo v1 | sudo tee /var/lib/db/snap.txt >/dev/null && sync")
    ssh(project, app, "setsid bash -c 'while :; do date +%s%N > /tmp/beat; sleep 0.2; done' "
        "</dev/null >/dev/null 2>&1 & echo $! > /tmp/beat.pid")  # fmt: skip
    pid = ssh(project, app, "cat /tmp/beat.pid").strip()
    ssh(project, app, "echo r1 > ~/root.txt && sync")  # on its root disk
    # a TCP connection between two VMs restored together: app sends, db echoes, on and on
    # (`;`, not `&&`: only python goes to the background, its descriptors not the session's)
    ssh(project, db, f"printf '%s' {shlex.quote(ECHO_SERVER)} > /tmp/echo.py; setsid python3"
        " /tmp/echo.py </dev/null >/dev/null 2>&1 &")  # fmt: skip
    ssh(project, app, f"printf '%s' {shlex.quote(ECHO_CLIENT)} > /tmp/talk.py; setsid python3"
        " /tmp/talk.py </dev/null >/dev/null 2>/tmp/talk.err & echo $! > /tmp/talk.pid")  # fmt: skip
    talker = ssh(project, app, "cat /tmp/talk.pid").strip()
    waited = "for i in $(seq 120); do [ -s /tmp/talk.count ] && break; sleep 0.5; done"
    assert int(ssh(project, app, f"{waited}; cat /tmp/talk.count")) > 0, "no echo"
    before = {vm: boots(vm) for vm in ("db", "app")}
    ok("snapshot", "save", "s1", "db", "app")
    ok("snapshot", "save", "cold", "--no-memory")  # disks only: web's too
    assert [s["name"] for s in json.loads(run("snapshot", "ls", "--format", "json").stdout)] == [
        "s1",
        "cold",
    ]
    ssh(project, db, "echo v2 | sudo tee /var/lib/db/snap.txt >/dev/null && sync")
    ssh(project, app, f"kill {pid}; echo r2 > ~/root.txt && sync")
    ok("snapshot", "restore", "s1", "--wait")
    assert ssh(project, db, "cat /var/lib/db/snap.txt") == "v1\n"
    assert ssh(project, app, "cat ~/root.txt") == "r1\n"
    talked = ssh(project, app, f"kill -0 {talker} && cat /tmp/talk.count; sleep 2;"
                 " cat /tmp/talk.count /tmp/talk.err").split()  # fmt: skip
    assert len(talked) == 2, talked  # (nothing in talk.err)
    assert int(talked[1]) > int(talked[0]) + 3, talked  # the connection goes on
    assert ssh(project, app, f"kill -0 {pid} && echo alive") == "alive\n"
    assert abs(int(ssh(project, app, "date +%s")) - time.time()) < 10
    assert {vm: boots(vm) for vm in ("db", "app")} == before
    assert ps_rows(project, manager)["db"]["health"] == "healthy"

    ok("snapshot", "rm", "s1", "cold")
    assert json.loads(run("snapshot", "ls", "--format", "json").stdout) == []


def test_three_vms_on_a_bridge_with_a_volume_and_a_share(
    tmp_path: Path, user_manager: ManagerHandle
) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("needs the ssh client")
    guest = build("debian")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from the host\n")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "note.txt").write_text("mounted on restart\n")
    config = tmp_path / "qemu-compose.yaml"
    config.write_text(
        f"""
name: trio
x-guest: &guest
  image: {guest}/root.qcow2
  boot: {{kernel: {guest}/vmlinuz, initrd: {guest}/initrd.img, cmdline: root=LABEL=rootfs rw console=ttyS0 quiet}}
  memory: 384
  user: debian
networks:
  lan: {{}}
volumes:
  dbdata: {{size: 64M}}
vms:
  db:
    <<: *guest
    networks: [lan]
    volumes: [dbdata:/var/lib/db]
    healthcheck:
      test: ["CMD", "test", "-d", "/var/lib/db/lost+found"]
      interval: 2s
  app:
    <<: *guest
    networks: [lan]
    depends_on: {{db: {{condition: service_healthy}}}}
  web:
    <<: *guest
    networks: [lan]
    volumes: [./site:/srv/www:ro]
    environment: {{GREETING: hello}}
    depends_on: [db]  # started, not healthy: boots beside db (two cores); app once db is healthy
"""
    )
    try:
        up = compose(
            "up",
            "-d",
            "--wait",
            "--progress",
            "json",
            cwd=tmp_path,
            manager=user_manager,
            timeout=900,
        )
        assert up.returncode == 0, up.stderr
        rows = ps_rows(tmp_path, user_manager)
        assert {(r["state"], r["health"]) for r in rows.values()} == {("running", "healthy")}
        addresses = {name: row["addresses"]["lan"] for name, row in rows.items()}
        assert len(set(addresses.values())) == 3
        web = rows["web"]["ssh_port"]
        # names over the bridge, through the network's dnsmasq
        resolved = ssh(
            tmp_path, web, "getent ahostsv4 db.trio | head -1; getent ahostsv4 app | head -1"
        )
        assert resolved.split()[0] == addresses["db"]
        assert addresses["app"] in resolved
        # and in /etc/hosts, for a resolver that does not ask the network's DNS
        hosts = ssh(tmp_path, web, "sed -n '/^# qemu-compose hosts: begin$/,/end$/p' /etc/hosts")
        entries = {tuple(line.split()) for line in hosts.splitlines()}  # (cloud-init: tabs)
        for name in ("app", "db", "web"):
            assert (addresses[name], name, f"{name}.trio") in entries, hosts
        assert ssh(tmp_path, web, "cat /srv/www/index.html") == "hello from the host\n"
        assert ssh(tmp_path, web, "grep ^GREETING= /etc/environment") == "GREETING=hello\n"
        db = rows["db"]["ssh_port"]
        ssh(tmp_path, db, "echo precious | sudo tee /var/lib/db/data.txt >/dev/null && sync")
        hostname = compose("ssh", "web", "cat", "/etc/hostname", cwd=tmp_path, manager=user_manager)
        assert (hostname.returncode, hostname.stdout) == (0, "web\n"), hostname.stderr
        info = json.loads(
            compose("inspect", "web", "--format", "json", cwd=tmp_path, manager=user_manager).stdout
        )
        assert (info["state"], info["qemu_status"]) == ("running", "running")
        assert info["health"]["status"] == "healthy"
        assert info["health"]["log"][-1]["exit_code"] == 0
        lan = next(n for n in info["networks"] if n["name"] == "lan")
        assert (lan["address"], lan["dhcp"]) == (addresses["web"], "active")
        assert info["volumes"][0]["host_path"] == str(site)
        assert info["depends_on"] == {"db": "service_started"}
        faults_on_a_real_guest(tmp_path, user_manager, web)
        snapshots_on_a_real_guest(tmp_path, user_manager, rows)
        console = console_login(
            tmp_path, user_manager, "web", "debian", info["console"]["password"]
        )
        assert re.search(r"[\r\n]web\r\n", console), console  # typed on the serial console
        replay = compose(
            "watch", "--since", "all", "--no-follow", "--json", cwd=tmp_path, manager=user_manager
        )
        seen = [json.loads(line) for line in replay.stdout.splitlines()]
        for vm in ("db", "app", "web"):
            mine = {(r["event"], r["data"].get("status")) for r in seen if r["vm"] == vm}
            assert {("QMP_CONNECTED", "running"), ("SSH", "done"), ("READY", "done")} <= mine
        assert any(r["vm"] == "db" and r["event"] == "HEALTH" for r in seen)
        # another environment and one more share for web: `up` restarts web alone, on its
        # disk, gracefully (its kernel says it powered down); db and app run on untouched
        rows = ps_rows(tmp_path, user_manager)  # (db and app run anew since the restore)
        disks = {vm: (tmp_path / f".qemu-compose/{vm}/disk.qcow2").stat().st_ino for vm in rows}
        started = {vm: r["started_at"] for vm, r in rows.items()}
        config.write_text(
            config.read_text()
            .replace("GREETING: hello", "GREETING: changed")
            .replace("[./site:/srv/www:ro]", "[./site:/srv/www:ro, ./more:/srv/more:ro]")
        )
        planned = compose("up", "--dry-run", cwd=tmp_path, manager=user_manager).stdout
        assert re.search(r"^web +restart .*volumes.*environment", planned, re.M), planned
        assert re.search(r"^db +keep ", planned, re.M), planned
        resumed = compose(
            "up", "-d", "--wait", "--progress", "json", cwd=tmp_path, manager=user_manager,
            timeout=900,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert not [e for e in events(resumed.stdout) if e["stage"] == "disk"]
        web_log = (tmp_path / ".qemu-compose/web/console.log").read_text(errors="replace")
        assert "reboot: Power down" in web_log, web_log[-2000:]
        assert disks == {
            vm: (tmp_path / f".qemu-compose/{vm}/disk.qcow2").stat().st_ino for vm in rows
        }
        rows = ps_rows(tmp_path, user_manager)
        assert {vm: r["started_at"] for vm, r in rows.items() if vm != "web"} == {
            vm: at for vm, at in started.items() if vm != "web"
        }
        assert rows["web"]["started_at"] != started["web"]
        web = rows["web"]["ssh_port"]
        assert ssh(tmp_path, web, "grep ^GREETING= /etc/environment") == "GREETING=changed\n"
        assert ssh(tmp_path, web, "cat /srv/more/note.txt") == "mounted on restart\n"
        assert ssh(tmp_path, web, "cat /srv/www/index.html") == "hello from the host\n"
        # stop is graceful: every guest's kernel says it powered down
        stopped = compose("stop", "--progress", "json", cwd=tmp_path, manager=user_manager)
        assert stopped.returncode == 0, stopped.stderr
        for vm in rows:
            log = (tmp_path / f".qemu-compose/{vm}/console.log").read_text(errors="replace")
            assert log.rstrip().endswith("reboot: Power down"), log[-500:]
        # destroy keeps the named volume, and what db wrote on it (read from the host)
        gone = compose("destroy", "--progress", "quiet", cwd=tmp_path, manager=user_manager)
        assert gone.returncode == 0, gone.stderr
        volume = tmp_path / ".qemu-compose/volumes/dbdata/disk.qcow2"
        assert ext4_file(volume, "/data.txt", tmp_path / "dbdata.raw") == "precious\n"
    finally:
        compose(
            "destroy",
            "--volumes",
            "--progress",
            "quiet",
            cwd=tmp_path,
            manager=user_manager,
            timeout=300,
        )
    assert not (tmp_path / ".qemu-compose/volumes/dbdata").exists()


def test_warm_replicas_of_a_debian_guest(tmp_path: Path, user_manager: ManagerHandle) -> None:
    """Three replicas for one boot: the clones have their own names (resolved over the
    bridge), machine-ids, host keys (recorded: `qemu-compose ssh` checks them), cloud-init
    instance-ids and clocks, and their kernels know they are copies (vmgenid)."""
    if shutil.which("ssh") is None:
        pytest.skip("needs the ssh client")
    guest = build("debian")
    (tmp_path / "qemu-compose.yaml").write_text(
        f"""
name: warm
networks:
  lan: {{}}
vms:
  worker:
    image: {guest}/root.qcow2
    boot: {{kernel: {guest}/vmlinuz, initrd: {guest}/initrd.img, cmdline: root=LABEL=rootfs rw console=ttyS0 quiet}}
    memory: 384
    user: debian
    replicas: 3
    warm: true
    networks: [lan]
    # as on a stock image, only cloud-init's network files (by MAC) configure the NICs
    provision: [rm -f /etc/systemd/network/99-fallback-dhcp.network]
"""
    )
    names = ["worker-1", "worker-2", "worker-3"]

    def in_guest(vm: str, command: str) -> str:
        done = compose("ssh", vm, command, cwd=tmp_path, manager=user_manager)
        assert done.returncode == 0, (vm, command, done.stderr)  # its recorded host key too
        return done.stdout.strip()

    try:
        up = compose(
            "up", "-d", "--wait", "--progress", "quiet", cwd=tmp_path, manager=user_manager,
            timeout=900,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        log = events(
            compose(
                "watch", "--since", "all", "--no-follow", "--json", cwd=tmp_path,
                manager=user_manager,
            ).stdout
        )  # fmt: skip
        assert [r["vm"] for r in log if r["event"] == "TEMPLATE_SAVE"] == ["worker-1"]
        assert sorted(r["vm"] for r in log if r["event"] == "CLONE") == names[1:]
        rows = ps_rows(tmp_path, user_manager)
        addresses = {n: rows[n]["addresses"]["lan"] for n in names}
        assert len(set(addresses.values())) == 3
        seen = {
            n: in_guest(
                n,
                "hostname; cat /etc/machine-id /var/lib/cloud/data/instance-id;"
                " cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub",
            ).splitlines()
            for n in names
        }
        for name, lines in seen.items():
            assert lines[0] == name
            before = time.time()
            clock = int(in_guest(name, "date +%s"))
            assert before - 2 < clock < time.time() + 2, (name, clock, before)
            others = [n for n in names if n != name]
            looked_up = in_guest(
                name,
                f"for i in $(seq 20); do getent ahostsv4 {others[0]}.warm {others[1]} && break;"
                " sleep 0.5; done | awk '{print $1}'",
            ).split()
            assert {addresses[o] for o in others} <= set(looked_up), (name, looked_up)  # by name
        for field in (1, 2, 3):  # machine-id, instance-id, host key
            assert len({lines[field] for lines in seen.values()}) == 3, (field, seen)
        for record in (r for r in log if r["event"] == "CLONE"):
            clone, data = record["vm"], record["data"]
            assert (data["hostname"], data["machine_id"]) == (clone, seen[clone][1])
            assert data["instance_id"] == seen[clone][2]
            for new in data["macs"].values():  # its next boot finds a file for every NIC
                assert in_guest(clone, f"grep -rlix 'MACAddress=.*{new}' /etc/systemd/network")
        forked = in_guest("worker-3", "sudo dmesg | grep -c 'virtual machine fork' || true")
        assert int(forked) >= 1  # the kernel reseeded its random numbers
        consoles = {
            n: (tmp_path / f".qemu-compose/{n}/console.log").read_text(errors="replace")
            for n in names
        }
        assert "Cloud-init v." in consoles["worker-1"]  # it booted
        assert "Cloud-init v." not in consoles["worker-2"]  # it never did
    finally:
        compose("destroy", "--progress", "quiet", cwd=tmp_path, manager=user_manager, timeout=300)
    assert not (tmp_path / ".qemu-compose/templates/worker").exists()
