"""Warm clones on real guests: tiny guests on a bridge network, `warm: true`; the first
replica boots, the others start from its saved state and become themselves: their own
hostnames, MACs, addresses, SSH host keys and machine-ids, clocks set, reachable from each
other. Skipped without QEMU."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.guest_images.build import build
from tests.support.cli import compose
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]

HOST_KEY = "dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key | grep ^ssh- | cut -d' ' -f2"


@pytest.fixture
def project(tmp_path: Path, user_manager: ManagerHandle) -> Any:
    yield tmp_path
    compose("destroy", "--volumes", "--progress", "quiet", cwd=tmp_path, manager=user_manager)


def compose_text(tiny: Path, replicas: int, memory: int = 128) -> str:
    return f"""
name: clones
networks:
  back: {{}}
vms:
  w:
    boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}
    memory: {memory}
    cpu: 1
    user: root
    replicas: {replicas}
    warm: true
    networks: [back]
"""


def test_warm_replicas_of_a_tiny_guest(project: Path, user_manager: ManagerHandle) -> None:
    tiny = build("tiny")
    compose_file = project / "qemu-compose.yaml"
    compose_file.write_text(compose_text(tiny, 6))

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return compose(*args, cwd=project, manager=user_manager, timeout=timeout)

    def ok(*args: str) -> str:
        done = run(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def sh(vm: str, command: str) -> str:
        return ok("ssh", vm, command).strip()

    ok("up", "-d", "--wait", "--progress", "quiet")
    names = [f"w-{i}" for i in range(1, 7)]
    log = [
        json.loads(line)
        for line in ok("watch", "--since", "all", "--no-follow", "--json").splitlines()
    ]
    templates = [r for r in log if r["event"] == "TEMPLATE_SAVE"]
    clones = {r["vm"]: r["data"] for r in log if r["event"] == "CLONE"}
    assert [r["vm"] for r in templates] == ["w-1"]
    assert templates[0]["data"]["ram_file"]  # (QEMU 7.2 leaves a memfd's RAM out of the state)
    assert templates[0]["data"]["bytes"] > 1 << 20  # bytes on disk (its RAM is some MiB)
    assert sorted(clones) == names[1:]
    assert all(c["source"] == "w-1" for c in clones.values())
    record = json.loads((project / ".qemu-compose/templates/w/template.json").read_bytes())
    assert (record["source"], record["has_disk"]) == ("w-1", False)
    consoles = {n: (project / ".qemu-compose" / n / "console.log").read_text() for n in names}
    assert all("tiny-init: ssh ready" not in consoles[n] for n in names[1:]), consoles  # no boot
    assert "tiny-init: ssh ready" in consoles["w-1"]

    state = json.loads((project / ".qemu-compose/state.json").read_bytes())
    seen: dict[str, dict[str, Any]] = {}
    for name in names:
        before = time.time()
        lines = sh(
            name,
            "hostname; cat /sys/class/net/eth0/address /sys/class/net/eth1/address;"
            f" ip -4 -o addr show eth1 | awk '{{print $4}}'; {HOST_KEY};"
            " cat /etc/machine-id 2>/dev/null || echo none;"
            " date +%s",
        ).splitlines()
        after = time.time()
        assert len(lines) == 7, (name, lines)
        hostname, user, bridge, address, key, machine_id, clock = lines
        seen[name] = {"bridge": bridge, "address": address, "key": key, "id": machine_id}
        assert hostname == name
        recorded = state["vms"][name]["macs"]
        # the user-mode NIC: the template's MAC, till it boots
        assert (user, bridge) == (state["vms"]["w-1"]["macs"]["nic0"], recorded["nic1"])
        assert before - 2 < int(clock) < after + 2, (name, before, clock, after)
        assert clones.get(name, {}).get("machine_id", machine_id) == machine_id
    for field in ("bridge", "address", "key", "id"):
        assert len({s[field] for s in seen.values()}) == 6, (field, seen)
    assert all(s["address"] for s in seen.values()), seen
    known = (project / ".qemu-compose/ssh/known_hosts").read_text()
    for name in names[1:]:  # known from the clone's own word, not trusted on first use
        assert f"qemu-compose.clones.{name} ssh-ed25519 {seen[name]['key']}" in known
    dns = ipaddress.ip_interface(seen["w-1"]["address"]).network.network_address + 1
    for name in names:  # each reaches every other, by address and by its name in the DNS
        # (the tiny guest's resolver is the user-mode NIC's: it asks the network's dnsmasq,
        # at the bridge's address, by name)
        others = " ".join(f"{o}:{seen[o]['address'].split('/')[0]}" for o in names if o != name)
        reached = sh(
            name,
            f"for t in {others}; do n=${{t%%:*}} a=${{t#*:}};"
            f" ping -c 1 -W 5 $a >/dev/null && nslookup $n.clones {dns} | grep -qwF $a"
            " && echo $n; done",
        ).split()
        assert reached == [o for o in names if o != name], (name, reached)

    # the RAM: in a file beside a state of devices only, mapped by each clone's QEMU
    assert record["ram_bytes"] == 128 << 20
    assert record["state_bytes"] * 4 < record["ram_bytes"]
    ram = project / ".qemu-compose/templates/w/ram"
    for name in names[1:]:
        pid = (project / ".qemu-compose" / name / "qemu.pid").read_text().strip()
        assert str(ram) in Path(f"/proc/{pid}/maps").read_text(), name

    # up --scale: new replicas from the kept template, those above N removed
    ok("up", "-d", "--wait", "--scale", "w=7", "--progress", "quiet")
    log = [
        json.loads(line)
        for line in ok("watch", "--since", "all", "--no-follow", "--json").splitlines()
    ]
    assert [r["vm"] for r in log if r["event"] == "TEMPLATE_SAVE"] == ["w-1"]  # the same one
    clones = {r["vm"]: r["data"] for r in log if r["event"] == "CLONE"}
    assert sorted(clones) == [f"w-{i}" for i in range(2, 8)]
    assert sh("w-7", "hostname") == "w-7"
    sh("w-7", f"ping -c 1 -W 5 {seen['w-1']['address'].split('/')[0]}")
    dry = ok("up", "--dry-run", "--scale", "w=2")
    assert [line.split()[:2] for line in dry.splitlines() if line.startswith("w-")] == [
        ["w-1", "keep"], ["w-2", "keep"], *[[f"w-{i}", "remove"] for i in range(3, 8)]
    ]  # fmt: skip
    ok("up", "-d", "--scale", "w=2", "--progress", "quiet")
    state = json.loads((project / ".qemu-compose/state.json").read_bytes())
    assert sorted(state["vms"]) == ["w-1", "w-2"]
    assert not (project / ".qemu-compose/w-3").exists()
    assert run("up", "--scale", "w=x").returncode == 2
    assert run("up", "--scale", "nope=2").returncode == 2

    # a change of the definition makes the template go (the replicas restart: they boot)
    compose_file.write_text(compose_text(tiny, 2, memory=144))
    ok("up", "-d", "--wait", "--progress", "quiet")
    template = project / ".qemu-compose/templates/w"
    assert not template.exists()
    ok("up", "-d", "--wait", "--scale", "w=3", "--progress", "quiet")  # w-3 boots: the new one
    [row] = json.loads(ok("template", "ls", "--format", "json"))
    assert (row["vm"], row["source"], row["in_file"]) == ("w", "w-3", True)
    on_disk = sum(p.stat().st_blocks * 512 for p in template.iterdir())  # (no disk: no image)
    assert row["size"] == on_disk
    assert row["size"] < (template / "ram").stat().st_size  # the RAM file's holes not counted
    assert run("template", "rm", "nope").returncode == 2
    ok("template", "rm", "w", "--progress", "quiet")
    assert not template.exists()
    assert ok("template", "ls") == "no templates\n"
