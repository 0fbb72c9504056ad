"""Faults on real guests: tiny guests on a bridge network, pinging each other over it.

A link cut and a partition stop the ping and heal; shaping shows in the ping's round trip
(and a loss of 100% stops it); a throttled disk makes direct writes in
the guest slower; a panic on demand shows GUEST_PANICKED and its restart policy answers,
and the VM comes back without its faults (FAULTS_CLEARED); the Python API's context
managers heal on exception; every fault and its undoing is in the event log. Skipped
without root (bridge networks) or dnsmasq.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from orchestrator import api
from tests.guest_images.build import build
from tests.support.cli import compose, compose_env, ps_rows
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("dnsmasq") is None,
        reason="bridge networks need CAP_NET_ADMIN and dnsmasq",
    ),
]


@pytest.fixture
def project(tmp_path: Path, user_manager: ManagerHandle) -> Any:
    yield tmp_path
    compose("destroy", "--progress", "quiet", cwd=tmp_path, manager=user_manager, timeout=300)


def until(condition: Any, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not in time: {what}")
        time.sleep(0.3)


def test_link_partition_disk_and_panic_on_tiny_guests(
    project: Path, user_manager: ManagerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = build("tiny")
    (project / "qemu-compose.yaml").write_text(
        f"""
name: chaos
networks:
  lan: {{}}
volumes:
  data: {{size: 64M}}
x-tiny: &tiny
  boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}
  memory: 128
  cpu: 1
  user: root
  networks: [lan]
  healthcheck: {{disable: true}}
vms:
  a:
    <<: *tiny
    volumes: ["data:/data"]
  b:
    <<: *tiny
    restart: on-failure
"""
    )

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return compose(*args, cwd=project, manager=user_manager, timeout=timeout)

    def ok(*args: str) -> subprocess.CompletedProcess[str]:
        done = run(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    ok("up", "-d", "--wait", "--progress", "quiet")
    address = {vm: row["addresses"]["lan"] for vm, row in ps_rows(project, user_manager).items()}

    def pings(source: str, target: str) -> bool:
        done = run("ssh", source, "ping", "-c", "1", "-W", "2", address[target], timeout=60)
        return done.returncode == 0

    def faults_of(vm: str) -> list[str]:
        return list(ps_rows(project, user_manager)[vm]["faults"])

    until(lambda: pings("a", "b") and pings("b", "a"), what="the guests reach each other")

    # bad input changes nothing: exit 2, nothing kept
    for args in (
        ["fault", "link", "a", "wan", "down"],
        ["fault", "link", "a", "sideways"],
        ["fault", "disk", "b", "--iops", "10"],  # b has no disk
        ["fault", "disk", "a", "nope", "--iops", "10"],
        ["fault", "disk", "a"],
        ["fault", "disk", "a", "data", "--bps", "0"],
        ["fault", "partition", "a"],
        ["fault", "partition", "a", "a,b"],
        ["fault", "partition", "a", "zz"],
    ):
        refused = run(*args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
    assert "not on network 'wan'" in run("fault", "link", "a", "wan", "down").stderr
    assert json.loads(ok("fault", "ls", "--format", "json").stdout or "[]") == []

    # a link cut on the bridge: the guests no longer reach each other; up again, they do
    ok("fault", "link", "b", "lan", "down", "--progress", "quiet")
    assert faults_of("b") == ["link lan down"]
    assert "FAULTS" in ok("ps").stdout
    assert json.loads(ok("inspect", "b", "--format", "json").stdout)["faults"] == ["link lan down"]
    assert "  Faults: link lan down\n" in ok("inspect", "b").stdout
    assert not pings("a", "b")
    ok("fault", "link", "b", "lan", "up", "--progress", "quiet")
    assert faults_of("b") == []
    assert "FAULTS" not in ok("ps").stdout  # the column only while some fault is in force
    until(lambda: pings("a", "b"), 30, "the link up again")

    # a partition, then healed; one way: a's packets to b are dropped, b's to a pass
    ok("fault", "partition", "a", "b", "--progress", "quiet")
    assert faults_of("a") == faults_of("b") == ["partition a | b"]
    assert not pings("a", "b")
    assert not pings("b", "a")
    listed = json.loads(ok("fault", "ls", "--format", "json").stdout)
    assert [(f["kind"], f["vms"]) for f in listed] == [("partition", ["a", "b"])]
    ok("fault", "heal", "--progress", "quiet")
    assert faults_of("a") == []
    until(lambda: pings("a", "b"), 30, "healed")

    def received(vm: str) -> int:  # frames its bridge NIC got
        done = run("ssh", vm, "cat /sys/class/net/eth1/statistics/rx_packets", timeout=60)
        return int(done.stdout)

    ok("fault", "partition", "--one-way", "a", "b", "--progress", "quiet")
    assert faults_of("b") == ["partition a -> b"]
    before = received("a")
    assert not pings("b", "a")  # b's requests reach a; a's replies do not reach b
    assert received("a") > before
    assert not pings("a", "b")
    ok("fault", "heal", "--progress", "quiet")
    until(lambda: pings("a", "b"), 30, "healed, one way")

    # shaped: a delay on what b sends shows in a's pings of b (the reply is b's); both ways,
    # each direction gets the whole delay; a loss of 100% is a cut; cleared, fast again
    def rtt(source: str, target: str) -> float:
        done = run("ssh", source, f"ping -c 3 -W 3 {address[target]}", timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        summary = done.stdout.rsplit("=", 1)[1]  # "round-trip min/avg/max = 0.4/0.5/0.6 ms"
        return float(summary.split("/")[1]) / 1000

    base = rtt("a", "b")
    ok("fault", "net", "b", "lan", "--egress", "--delay", "200ms", "--progress", "quiet")
    assert faults_of("b") == ["net lan egress delay=200ms"]
    assert 0.14 < rtt("a", "b") - base < 0.26
    ok("fault", "net", "b", "--delay", "100ms", "--progress", "quiet")  # both, replacing
    assert sorted(faults_of("b")) == ["net lan egress delay=100ms", "net lan ingress delay=100ms"]
    assert 0.14 < rtt("a", "b") - base < 0.26
    ok("fault", "net", "b", "lan", "--ingress", "--loss", "100%", "--progress", "quiet")
    assert not pings("a", "b")
    ok("fault", "net", "b", "--clear", "--progress", "quiet")
    assert faults_of("b") == []
    assert rtt("a", "b") < base + 0.05
    for args in (["--loss", "101%"], ["--delay", "-1ms"], ["--rate", "1mb"], ["--jitter", "5ms"]):
        refused = run("fault", "net", "b", *args)
        assert refused.returncode == 2, (args, refused.stderr)

    # the API's context manager heals on exception
    monkeypatch.setenv("XDG_STATE_HOME", str(project / ".xdg-state"))
    for key, value in compose_env(project, user_manager).items():
        monkeypatch.setenv(key, value)
    loaded = api.load(project / "qemu-compose.yaml", environ={})

    async def partitioned_then_raise() -> None:
        faults = api.faults(loaded, bus=user_manager.bus_address)
        inside: list[bool] = []

        async def raising() -> None:
            async with faults.partition(["a"], ["b"], network="lan"):
                inside.append(faults_of("a") == ["partition a | b"] and not pings("a", "b"))
                raise RuntimeError("the test's own")

        with pytest.raises(RuntimeError, match="the test's own"):
            await raising()
        assert inside == [True]
        assert await faults.ls() == []

    trio.run(partitioned_then_raise)
    until(lambda: pings("a", "b"), 30, "healed by the context manager")

    # a throttled disk: direct writes to the volume's device get slower. The volume's
    # device by its serial (the seed is a virtio disk too); one argument: ssh hands the
    # guest's shell one command line
    dd = (
        "d=$(grep -l '^data$' /sys/block/vd*/serial) && d=${d%/serial} && "
        "dd if=/dev/zero of=/dev/${d##*/} bs=4096 count=60 oflag=direct 2>&1"
    )

    def write_seconds() -> float:
        started = time.monotonic()
        done = run("ssh", "a", dd, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "60+0 records out" in done.stdout
        return time.monotonic() - started

    fast = write_seconds()
    ok("fault", "disk", "a", "data", "--iops", "10", "--progress", "quiet")
    assert faults_of("a") == ["disk data iops=10"]
    slow = write_seconds()
    assert slow > fast + 3, (fast, slow)  # 60 writes at 10 a second: 6 s at least
    ok("fault", "disk", "a", "data", "--clear", "--progress", "quiet")
    assert faults_of("a") == []
    # a failing disk: the guest's writes get EIO; cleared, they succeed again
    ok("fault", "disk", "a", "data", "--error", "write", "--progress", "quiet")
    assert faults_of("a") == ["disk data write errors"]
    failed = run("ssh", "a", dd, timeout=120)
    assert failed.returncode != 0
    assert "Input/output error" in failed.stdout + failed.stderr
    ok("fault", "disk", "a", "data", "--clear", "--progress", "quiet")
    assert faults_of("a") == []
    write_seconds()  # (it asserts they all went through)

    # a panic on demand; restart: on-failure boots b again, without the link cut it had
    ok("fault", "link", "b", "lan", "down", "--progress", "quiet")
    ok("fault", "net", "b", "--egress", "--delay", "50ms", "--progress", "quiet")
    ok("fault", "panic", "b", "--progress", "quiet")
    until(lambda: ps_rows(project, user_manager)["b"]["restarts"] >= 1, 120, "b restarted")
    until(lambda: faults_of("b") == [], 30, "b's faults cleared")
    until(lambda: pings("a", "b"), 120, "b back on the bridge")

    log = run("watch", "--since", "all", "--no-follow", "--json")
    records = [json.loads(line) for line in log.stdout.splitlines()]
    said = [(r["vm"], r["event"], r["data"].get("detail", "")) for r in records]
    for wanted in [
        ("b", "FAULT", "link lan down"),
        ("b", "HEAL", "link lan up"),
        ("a", "FAULT", "partition a | b"),
        ("b", "HEAL", "partition a | b healed"),
        ("a", "FAULT", "disk data iops=10"),
        ("a", "HEAL", "disk data unthrottled"),
        ("a", "FAULT", "disk data write errors"),
        ("a", "HEAL", "disk data no errors"),
        ("b", "FAULT", "kernel panic (NMI)"),
        ("b", "FAULT", "net lan egress delay=200ms"),
        ("b", "HEAL", "net lan egress/ingress unshaped"),
    ]:
        assert wanted in said, wanted
    events_of_b = [r["event"] for r in records if r["vm"] == "b"]
    panicked = events_of_b.index("GUEST_PANICKED")
    assert "RESTARTED" in events_of_b[panicked:]
    cleared = [(r["vm"], r["data"]["faults"]) for r in records if r["event"] == "FAULTS_CLEARED"]
    assert cleared == [("b", ["link lan down", "net lan egress delay=50ms"])]


def test_the_readme_example_partitions_and_heals_a_three_node_cluster(
    tmp_path: Path, user_manager: ManagerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's Python example, run as written (its sleeps shortened), on VMs without
    disks: it must run, print what was in force, and leave nothing in force."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index(
        '```python\nimport trio\nfrom orchestrator import api\n\nproject = api.load("cluster/'
    )
    code = readme[start + len("```python\n") : readme.index("```", start + 10)]
    assert "faults.partition" in code
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "qemu-compose.yaml").write_text(
        "name: cluster\nnetworks: {lan: {}}\nvms:\n"
        + "".join(
            f"  {n}: {{memory: 64, cpu: 1, healthcheck: {{disable: true}}, networks: [lan]}}\n"
            for n in ("n1", "n2", "n3")
        )
    )
    for key, value in compose_env(tmp_path, user_manager).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code.replace("trio.sleep(30)", "trio.sleep(0.5)")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "['partition n1 | n2,n3']"
        listed = compose(
            "fault", "ls", "--format", "json", cwd=tmp_path / "cluster", manager=user_manager
        )
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip() in ("", "[]")
        rows = ps_rows(tmp_path / "cluster", user_manager)
        assert {r["state"] for r in rows.values()} == {"running"}  # n3 unpaused
        assert all(r["faults"] == [] for r in rows.values())
    finally:
        compose("destroy", "--progress", "quiet", cwd=tmp_path / "cluster", manager=user_manager)
