"""Snapshots on real guests: two tiny guests (one with a named volume), frozen together,
saved, changed, restored: the volume's old bytes are back, a process in memory runs on with
its old counter, uptime goes on from the snapshot, nothing boots again; a stopped VM comes
back running; a changed hardware and bad input are refused with nothing changed; `rm`
frees the space; the API's context manager restores on leaving. Skipped without QEMU."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from orchestrator import api
from tests.guest_images.build import build
from tests.support.cli import compose, compose_env
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]

COUNTER = (
    "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done'"
    " </dev/null >/dev/null 2>&1 & echo $! > /tmp/counter.pid"
)
VOLUME = '$(for d in /sys/block/vd*; do [ "$(cat $d/serial)" = data ] && echo /dev/${d##*/}; done)'


def tags(image: Path) -> list[str]:
    """The internal snapshots (points in time) a qcow2 image holds."""
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(image)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [s["name"] for s in json.loads(info.stdout).get("snapshots", [])]


@pytest.fixture
def project(tmp_path: Path, user_manager: ManagerHandle) -> Any:
    yield tmp_path
    compose("destroy", "--volumes", "--progress", "quiet", cwd=tmp_path, manager=user_manager)


def test_save_change_restore_on_tiny_guests(
    project: Path, user_manager: ManagerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = build("tiny")
    compose_file = project / "qemu-compose.yaml"
    compose_file.write_text(
        f"""
name: snaps
volumes:
  data: {{size: 16M}}
x-tiny: &tiny
  boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}
  memory: 128
  cpu: 1
  user: root
vms:
  a:
    <<: *tiny
    volumes: ["data:/data"]
  b:
    <<: *tiny
    depends_on: [a]
"""
    )

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return compose(*args, cwd=project, manager=user_manager, timeout=timeout)

    def ok(*args: str) -> str:
        done = run(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def sh(vm: str, command: str) -> str:
        return ok("ssh", vm, command).strip()

    ok("up", "-d", "--wait", "--progress", "quiet")
    sh("a", COUNTER)
    sh("a", f"printf before | dd of={VOLUME} conv=fsync 2>/dev/null")
    sh("b", "echo one > /root/note")
    pid = sh("a", "cat /tmp/counter.pid")

    ok("snapshot", "save", "s1", "--progress", "quiet")
    ok("snapshot", "save", "s1", "--force", "--progress", "quiet")  # replaced, VMs running
    saved_at = time.time()
    counted = int(sh("a", "cat /tmp/counter"))
    uptime_saved = float(sh("a", "cut -d' ' -f1 /proc/uptime"))
    listed = json.loads(ok("snapshot", "ls", "--format", "json"))
    assert [(s["name"], s["vms"], s["memory"]) for s in listed] == [("s1", ["a", "b"], True)]
    assert listed[0]["size"] > 1 << 20
    states = project / ".qemu-compose" / "snapshots" / "s1"
    assert sorted(p.name for p in states.iterdir()) == ["a.state", "b.state", "snapshot.json"]

    # frozen together: both STOPs before the first capture, both RESUMEs after the last
    log = [
        json.loads(line)
        for line in ok("watch", "--since", "all", "--no-follow", "--json").splitlines()
    ]
    stops = {r["vm"]: r["qemu_time"] for r in log if r["event"] == "STOP"}  # the last ones
    captures = [
        r["time"] for r in log if r["event"] == "SNAPSHOT" and r["data"]["status"] == "working"
    ]
    assert set(stops) == {"a", "b"}
    assert len(captures) == 4
    assert max(stops.values()) < min(captures[-2:])  # the last save's
    saves = [r for r in log if r["event"] == "SNAPSHOT_SAVE"]
    assert [(r["data"]["name"], r["data"]["vms"]) for r in saves] == [("s1", ["a", "b"])] * 2
    assert saves[-1]["data"]["size"] == listed[0]["size"]
    assert 0 < saves[-1]["data"]["frozen_for"] <= saves[-1]["data"]["duration"]

    # changed: the counter goes on, the volume and b's file are rewritten, time passes
    time.sleep(2)
    sh("a", f"printf after! | dd of={VOLUME} conv=fsync 2>/dev/null")
    sh("b", "echo two > /root/note")
    later = int(sh("a", "cat /tmp/counter"))
    assert later > counted + 10
    uptime_later = float(sh("a", "cut -d' ' -f1 /proc/uptime"))

    # bad input: refused, nothing changed
    for args, code in (
        (["snapshot", "restore", "nosuch"], 2),
        (["snapshot", "restore", "s1", "zz"], 2),
        (["snapshot", "save", "a/b"], 2),
        (["snapshot", "restore", "a/b"], 2),
        (["snapshot", "rm", "../s1"], 2),
        (["snapshot", "save", "s1"], 2),  # exists
        (["snapshot", "rm", "nosuch"], 2),
    ):
        refused = run(*args)
        assert refused.returncode == code, (args, refused.stdout, refused.stderr)
    assert sh("b", "cat /root/note") == "two"
    assert json.loads(ok("snapshot", "ls", "--format", "json")) == listed
    assert sh("a", "cat /tmp/counter.pid") == pid
    ok("up", "-d", "--progress", "quiet")  # snapshots survive `up` (and `stop`, below)
    assert json.loads(ok("snapshot", "ls", "--format", "json")) == listed

    # a changed hardware is refused, naming the change
    text = compose_file.read_text()
    compose_file.write_text(text + "    memory: 256\n")
    refused = run("snapshot", "restore", "s1")
    assert refused.returncode == 1, refused.stderr
    assert "b: its hardware changed since the snapshot (memory 128 -> 256)" in refused.stderr
    compose_file.write_text(text)
    assert sh("b", "cat /root/note") == "two"

    # restored: the old bytes, the old file, the same process with its old count, no boot
    ok("stop", "b", "--progress", "quiet")  # a stopped VM comes back running
    ok("snapshot", "restore", "s1", "--progress", "quiet")
    assert sh("a", f"dd if={VOLUME} bs=6 count=1 2>/dev/null") == "before"
    assert sh("b", "cat /root/note") == "one"
    assert sh("a", "cat /tmp/counter.pid") == pid
    assert sh("a", f"kill -0 {pid} && echo alive") == "alive"
    uptime_restored = float(sh("a", "cut -d' ' -f1 /proc/uptime"))
    assert uptime_saved - 1 < uptime_restored < uptime_later
    assert int(sh("a", "cat /tmp/counter")) < later + 5  # counting on from the snapshot's count
    for vm in ("a", "b"):
        console = (project / ".qemu-compose" / vm / "console.log").read_text(errors="replace")
        assert console.count("tiny-init: ssh ready") == 1, vm  # one boot, long ago
        guest_clock = int(sh(vm, "date +%s"))
        assert abs(guest_clock - time.time()) < 10, (vm, guest_clock)  # set to the host's
    assert time.time() - saved_at > 2  # (the clock had something to catch up)
    rows = {r["name"]: r for r in json.loads(ok("ps", "--format", "json"))}
    assert rows["a"]["state"] == rows["b"]["state"] == "running"

    # a paused VM is saved paused and stays so (its disks taken back from the save)
    ok("pause", "b", "--progress", "quiet")
    ok("snapshot", "save", "p", "b", "--progress", "quiet")
    assert json.loads(ok("inspect", "b", "--format", "json"))["qemu_status"] == "paused"
    ok("unpause", "b", "--progress", "quiet")
    assert sh("b", "echo three > /root/other && sync && cat /root/other") == "three"
    not_in_it = run("snapshot", "restore", "p", "a")
    assert not_in_it.returncode == 2, not_in_it.stderr
    assert "a is not in snapshot p" in not_in_it.stderr
    ok("snapshot", "rm", "p", "--progress", "quiet")

    # paused: restored frozen; removed: its files and the volume's point in time are gone
    ok("snapshot", "restore", "s1", "b", "--paused", "--progress", "quiet")
    assert json.loads(ok("inspect", "b", "--format", "json"))["qemu_status"] == "paused"
    assert sh("a", "cat /root/note 2>/dev/null || echo none") == "none"  # a ran on, untouched
    ok("unpause", "b", "--progress", "quiet")
    assert sh("b", "cat /root/note") == "one"
    ok("snapshot", "rm", "s1", "--progress", "quiet")
    assert not states.exists()
    assert json.loads(ok("snapshot", "ls", "--format", "json")) == []
    volume = project / ".qemu-compose" / "volumes" / "data" / "disk.qcow2"
    assert tags(volume) == []
    log = [
        json.loads(line)
        for line in ok("watch", "--since", "all", "--no-follow", "--json").splitlines()
    ]
    restores = [r["data"] for r in log if r["event"] == "SNAPSHOT_RESTORE"]
    assert [(r["name"], r["vms"], r["paused"]) for r in restores] == [
        ("s1", ["a", "b"], False),
        ("s1", ["b"], True),
    ]
    assert all(r["duration"] > 0 and r["size"] == listed[0]["size"] for r in restores)

    # the API's context manager restores on leaving, by an exception too
    for key, value in compose_env(project, user_manager).items():  # as the CLI has it
        monkeypatch.setenv(key, value)
    loaded = api.load(compose_file, environ={})

    async def changed_then_restored(fail: bool) -> None:
        async with api.snapshot(loaded, "t", ["a"], bus=user_manager.bus_address):
            sh("a", f"printf inside | dd of={VOLUME} conv=fsync 2>/dev/null")
            assert sh("a", f"dd if={VOLUME} bs=6 count=1 2>/dev/null") == "inside"
            if fail:
                raise LookupError("the test failed")

    trio.run(changed_then_restored, False)
    assert sh("a", f"dd if={VOLUME} bs=6 count=1 2>/dev/null") == "before"
    with pytest.raises(LookupError):
        trio.run(changed_then_restored, True)
    assert sh("a", f"dd if={VOLUME} bs=6 count=1 2>/dev/null") == "before"
    assert sh("a", f"kill -0 {pid} && echo alive") == "alive"
    assert json.loads(ok("snapshot", "ls", "--format", "json")) == []

    # suspended: QEMU ends, the state is kept; `up` resumes a, `resume` b, where they were
    def states_now() -> dict[str, str]:
        return {r["name"]: r["state"] for r in json.loads(ok("ps", "-a", "--format", "json"))}

    ok("suspend", "--progress", "quiet")
    assert states_now() == {"a": "suspended", "b": "suspended"}
    assert (project / ".qemu-compose" / "a" / "suspended.state").stat().st_size > 1 << 20
    assert run("ssh", "a", "true", timeout=30).returncode != 0
    assert run("resume", "zz").returncode == 2
    ok("up", "-d", "a", "--no-deps", "--progress", "quiet")
    assert sh("a", f"kill -0 {pid} && echo alive") == "alive"
    assert not (project / ".qemu-compose" / "a" / "suspended.state").exists()
    assert states_now() == {"a": "running", "b": "suspended"}
    assert run("resume", "a").returncode == 2  # not suspended
    ok("resume", "--progress", "quiet")
    assert sh("b", "cat /root/note") == "one"
    for vm in ("a", "b"):
        console = (project / ".qemu-compose" / vm / "console.log").read_text(errors="replace")
        assert console.count("tiny-init: ssh ready") == 1, vm
    # a stop discards the suspended state: the VM boots next time
    ok("suspend", "b", "--progress", "quiet")
    ok("stop", "b", "--progress", "quiet")
    assert not (project / ".qemu-compose" / "b" / "suspended.json").exists()
    assert states_now()["b"] == "exited"
    log = [
        json.loads(line)
        for line in ok("watch", "--since", "all", "--no-follow", "--json").splitlines()
    ]
    assert [r["vm"] for r in log if r["event"] == "SUSPEND" and r["data"]["status"] == "done"] in (
        ["a", "b", "b"],
        ["b", "a", "b"],
    )

    # disks only: restoring it puts the volume back and boots
    ok("snapshot", "save", "cold", "a", "--no-memory", "--progress", "quiet")
    assert not (project / ".qemu-compose" / "snapshots" / "cold" / "a.state").exists()
    sh("a", f"printf after! | dd of={VOLUME} conv=fsync 2>/dev/null")
    ok("snapshot", "restore", "cold", "--wait", "--progress", "quiet")  # (it boots: its SSH)
    # (the tiny guest makes a new host key at each boot, in its initramfs: forget the old)
    (project / ".qemu-compose" / "ssh" / "known_hosts").unlink()
    assert sh("a", f"dd if={VOLUME} bs=6 count=1 2>/dev/null") == "before"
    console = (project / ".qemu-compose" / "a" / "console.log").read_text(errors="replace")
    assert console.count("tiny-init: ssh ready") == 2  # booted
    ok("snapshot", "rm", "cold", "--progress", "quiet")

    # a tag of that name left in the volume by a snapshot `destroy` dropped: replaced by a
    # new save, not restored in its place
    ok("stop", "a", "--progress", "quiet")
    tagged = subprocess.run(
        ["qemu-img", "snapshot", "-c", "qemu-compose-x", str(volume)], capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert tagged.returncode == 0, tagged.stderr
    ok("up", "-d", "--wait", "a", "--progress", "quiet")
    (project / ".qemu-compose" / "ssh" / "known_hosts").unlink()  # (booted again)
    sh("a", f"printf xnew!! | dd of={VOLUME} conv=fsync 2>/dev/null")
    ok("snapshot", "save", "x", "a", "--progress", "quiet")
    sh("a", f"printf later! | dd of={VOLUME} conv=fsync 2>/dev/null")
    ok("snapshot", "restore", "x", "--progress", "quiet")
    assert sh("a", f"dd if={VOLUME} bs=6 count=1 2>/dev/null") == "xnew!!"

    # destroy (volumes kept): the snapshots go, with their points in time in the volume;
    # the volume's contents stay
    ok("destroy", "--progress", "quiet")
    assert json.loads(ok("snapshot", "ls", "--format", "json")) == []
    assert not (project / ".qemu-compose" / "snapshots" / "x").exists()
    assert tags(volume) == []
    kept = subprocess.run(
        ["qemu-io", "-r", "-c", "read -v 0 6", "-f", "qcow2", str(volume)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert kept.returncode == 0, kept.stderr
    assert "78 6e 65 77 21 21" in kept.stdout, kept.stdout  # xnew!!
    # and a VM created anew attaches it: its guest reads what the destroyed one wrote
    (project / ".qemu-compose" / "ssh" / "known_hosts").unlink(missing_ok=True)
    ok("up", "-d", "--wait", "--progress", "quiet", "a")
    assert sh("a", f"dd if={VOLUME} bs=6 count=1 2>/dev/null") == "xnew!!"
