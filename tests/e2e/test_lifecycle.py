"""The life of a project beyond one `up`, with no-disk VMs: watchers, inspect, logs, restart,
a CLI killed mid-`up`, two `up` at once. The real CLI, a real user manager, real QEMUs.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import netcfg
from orchestrator.guest.firmware import find_ovmf
from tests.guest_images.build import build
from tests.support.cli import compose, compose_background, events, ps_rows
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]


def no_disk_vms(names: list[str], *, networks: str = "") -> str:
    lines = []
    for name in names:
        lines.append(f"  {name}: {{memory: 64, cpu: 1, healthcheck: {{disable: true}}{networks}}}")
    return "\n".join(lines) + "\n"


def units(manager: ManagerHandle, pattern: str) -> list[str]:
    out = manager.systemctl("list-units", "--all", "--plain", "--no-legend", pattern).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def links_of(project: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if f"alias qemu-compose {project}/" in line]


def stop_watcher(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def project(tmp_path: Path, user_manager: ManagerHandle) -> Any:
    yield tmp_path
    compose("destroy", "--progress", "quiet", cwd=tmp_path, manager=user_manager, timeout=300)


def test_watchers_inspect_logs_and_restart(project: Path, user_manager: ManagerHandle) -> None:
    (project / "qemu-compose.yaml").write_text(
        "name: life\nvms:\n" + no_disk_vms(["a", "b"]) + "  c: {memory: 64, replicas: 2}\n"
    )
    watchers = [  # from the log's start: a watcher may be still starting when up writes
        compose_background("watch", "--json", "--since", "all", cwd=project, manager=user_manager)
        for _ in range(2)
    ]
    up = compose("up", "-d", "b", "--progress", "quiet", cwd=project, manager=user_manager)
    assert up.returncode == 0, up.stderr
    refused = compose("restart", "a", cwd=project, manager=user_manager)
    assert refused.returncode == 2
    assert "not created: a" in refused.stderr
    restarted = compose("restart", "--progress", "json", cwd=project, manager=user_manager)
    assert restarted.returncode == 0, restarted.stderr
    assert [e["stage"] for e in events(restarted.stdout) if e["status"] == "done"][-3:] == [
        "unit",
        "running",
        "ready",
    ]
    # inspect: the unit, QEMU's own status, the console password
    info = compose("inspect", "b", "--format", "json", cwd=project, manager=user_manager)
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert (data["state"], data["qemu_status"]) == ("running", "running")
    assert data["unit"]["name"] == "qemu-compose-life-b.service"
    assert data["unit"]["main_pid"] > 0
    saved = json.loads((project / ".qemu-compose/console-password").read_text())
    assert data["console"]["password"] == saved["password"]
    assert data["networks"][0]["ssh_port"] == ps_rows(project, user_manager)["b"]["ssh_port"]
    text = compose("inspect", "b", cwd=project, manager=user_manager).stdout
    assert "Systemd unit: qemu-compose-life-b.service (active/running)" in text
    missing = compose("inspect", "zz", cwd=project, manager=user_manager)
    assert missing.returncode == 2
    assert "no VM named 'zz'" in missing.stderr
    logs = compose("logs", "b", cwd=project, manager=user_manager)
    assert logs.returncode == 0, logs.stderr
    if user_manager.private is not None or user_manager.journal_dir is None:
        assert "unit | Started qemu-compose-life-b.service" in logs.stdout
    replicas = compose("logs", "c", cwd=project, manager=user_manager)
    assert replicas.returncode == 2
    assert "c-1, c-2" in replicas.stderr
    stop = compose("stop", "--progress", "quiet", cwd=project, manager=user_manager)
    assert stop.returncode == 0, stop.stderr
    assert units(user_manager, "qemu-compose-life-*") == []  # the supervisor went too
    seen = [stop_watcher(w) for w in watchers]
    assert seen[0] == seen[1]  # any number of watchers, each sees everything
    records = seen[0]
    assert {r["vm"] for r in records} == {"b"}  # up b: b alone
    mine = [(r["source"], r["event"]) for r in records]
    for expected in [
        ("unit", "UNIT_STATE"),
        ("supervisor", "QMP_CONNECTED"),
        ("up", "RUNNING"),
        ("up", "STOP"),
        ("qmp", "SHUTDOWN"),
        ("supervisor", "QMP_DISCONNECTED"),
    ]:
        assert expected in mine, expected
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing skipped
    assert mine.count(("up", "RUNNING")) == 2  # once for up, once for restart
    replay = compose(
        "watch", "b", "--since", "all", "--no-follow", "--json", cwd=project, manager=user_manager
    )
    assert [json.loads(line) for line in replay.stdout.splitlines()] == records
    human = compose("watch", "--since", "all", "--no-follow", cwd=project, manager=user_manager)
    assert " b                SHUTDOWN guest=false reason=host-qmp-quit" in human.stdout


@pytest.mark.skipif(
    not netcfg.has_net_admin() or shutil.which("dnsmasq") is None,
    reason="bridge networks need CAP_NET_ADMIN and dnsmasq",
)
def test_a_cli_killed_mid_up_converges_and_leaks_nothing(
    project: Path, user_manager: ManagerHandle
) -> None:
    names = [f"v{i}" for i in range(6)]
    (project / "qemu-compose.yaml").write_text(
        "name: crash\nnetworks:\n  lan: {}\nvms:\n"
        + no_disk_vms(names, networks=", networks: [lan]")
    )
    first = compose_background(
        "up", "-d", "--parallel", "1", "--progress", "json", cwd=project, manager=user_manager
    )
    assert first.stdout is not None
    started = 0
    for line in first.stdout:
        event = json.loads(line)
        if event["stage"] == "unit" and event["status"] == "done":
            started += 1
            if started == 2:
                first.kill()  # SIGKILL: no clean-up of any kind
                break
    first.wait(10)
    assert first.returncode == -signal.SIGKILL
    again = compose("up", "-d", "--progress", "json", cwd=project, manager=user_manager)
    assert again.returncode == 0, again.stderr
    assert {r["state"] for r in ps_rows(project, user_manager).values()} == {"running"}
    vm_units = [f"qemu-compose-crash-{n}.service" for n in names]
    assert units(user_manager, "qemu-compose-crash-*") == sorted(
        [*vm_units, "qemu-compose-crash-supervisor.service"]
    )
    assert len(units(user_manager, "qemu-compose-dnsmasq-crash-*")) == 1
    assert len(links_of("crash")) == 7  # the bridge and a TAP a VM
    listed = json.loads(
        compose("network", "ls", "--format", "json", cwd=project, manager=user_manager).stdout
    )
    assert [(n["name"], n["vms"], n["bridge_exists"]) for n in listed] == [("lan", names, True)]
    busy = compose("network", "rm", "lan", cwd=project, manager=user_manager)
    assert busy.returncode == 2
    assert "in use by v0, v1" in busy.stderr
    gone = compose("destroy", "--progress", "quiet", cwd=project, manager=user_manager)
    assert gone.returncode == 0, gone.stderr
    assert units(user_manager, "qemu-compose-crash-*") == []
    assert units(user_manager, "qemu-compose-dnsmasq-crash-*") == []
    assert links_of("crash") == []


def test_two_ups_at_once_are_serialised(project: Path, user_manager: ManagerHandle) -> None:
    names = [f"s{i}" for i in range(5)]
    (project / "qemu-compose.yaml").write_text("name: twice\nvms:\n" + no_disk_vms(names))
    both = [
        compose_background(
            "up", "-d", "--wait-lock", "--progress", "json", cwd=project, manager=user_manager
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0]
    made = sorted(
        len([e for e in events(out) if e["stage"] == "unit" and e["detail"].endswith(".service")])
        for out in outputs
    )
    kept = sorted(
        len([e for e in events(out) if e["detail"] == "already running"]) for out in outputs
    )
    assert (made, kept) == ([0, 5], [0, 5])  # one made them all; the other found them running
    assert units(user_manager, "qemu-compose-twice-*") == sorted(
        [
            *(f"qemu-compose-twice-{n}.service" for n in names),
            "qemu-compose-twice-supervisor.service",
        ]
    )


def test_a_frozen_qemu_is_said_so_and_stopped(project: Path, user_manager: ManagerHandle) -> None:
    """A SIGSTOPped QEMU (#13, item 8): inspect says it does not answer, and stop names what
    happened instead of a bare errno."""
    (project / "qemu-compose.yaml").write_text("name: frozen\nvms:\n" + no_disk_vms(["a"]))
    up = compose("up", "-d", "--progress", "quiet", cwd=project, manager=user_manager)
    assert up.returncode == 0, up.stderr
    pid = int((project / ".qemu-compose" / "a" / "qemu.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    info = compose("inspect", "a", "--format", "json", cwd=project, manager=user_manager)
    assert json.loads(info.stdout)["qemu_status"] == "unresponsive"
    stopped = compose("stop", "--progress", "json", cwd=project, manager=user_manager)
    assert stopped.returncode == 0, stopped.stderr
    [done] = [e for e in events(stopped.stdout) if e["stage"] == "stop" and e["status"] == "done"]
    assert done["detail"].startswith("QEMU did not answer QMP within 5 s (frozen or hung)")
    assert "Errno" not in done["detail"]
    assert ps_rows(project, user_manager)["a"]["state"] == "exited"


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_pause_unpause_and_kill(project: Path, user_manager: ManagerHandle) -> None:
    """The faults docker compose has: QMP stop and cont, a signal through systemd that the
    restart policy answers as a crash; refused, changing nothing, for what does not run."""
    (project / "qemu-compose.yaml").write_text(
        "name: faults\nvms:\n"
        + no_disk_vms(["a", "idle"])
        + "  b: {memory: 64, cpu: 1, healthcheck: {disable: true}, restart: on-failure}\n"
        + "  c: {memory: 64, cpu: 1, healthcheck: {disable: true}, replicas: 2}\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return compose(*args, cwd=project, manager=user_manager)

    assert run("up", "-d", "a", "b", "c-1", "--progress", "quiet").returncode == 0

    def qemu_status(vm: str) -> str:
        info = run("inspect", vm, "--format", "json")
        assert info.returncode == 0, info.stderr
        return str(json.loads(info.stdout)["qemu_status"])

    for args in (["pause", "a", "idle"], ["kill", "idle"], ["pause", "zz"], ["kill", "-s", "NOPE"]):
        refused = run(*args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
    assert "cannot pause what does not run: idle" in run("pause", "a", "idle").stderr
    assert qemu_status("a") == "running"  # the refused pause changed nothing

    paused = run("pause", "a", "--progress", "json")
    assert paused.returncode == 0, paused.stderr
    assert [(e["vm"], e["stage"], e["status"]) for e in events(paused.stdout)] == [
        ("a", "pause", "done")
    ]
    assert qemu_status("a") == "paused"
    wait_for(lambda: ps_rows(project, user_manager)["a"]["state"] == "paused")  # the supervisor's
    assert run("pause", "a").returncode == 0  # already paused: nothing to do
    assert run("unpause", "--progress", "quiet").returncode == 0  # every running VM
    assert qemu_status("a") == "running"
    wait_for(lambda: ps_rows(project, user_manager)["a"]["state"] == "running")
    # a definition names its running replicas (c-2 was never started); up makes them run
    paused = run("pause", "c", "--progress", "json")
    assert paused.returncode == 0, paused.stderr
    assert [e["vm"] for e in events(paused.stdout)] == ["c-1"]
    wait_for(lambda: ps_rows(project, user_manager)["c-1"]["state"] == "paused")
    up = run("up", "-d", "c-1", "--progress", "json")
    assert up.returncode == 0, up.stderr
    assert ("c-1", "unpause", "done") in [
        (e["vm"], e["stage"], e["status"]) for e in events(up.stdout)
    ]
    assert qemu_status("c-1") == "running"

    pid = json.loads(run("inspect", "b", "--format", "json").stdout)["unit"]["main_pid"]
    killed = run("kill", "b", "--progress", "json")
    assert killed.returncode == 0, killed.stderr
    assert [(e["stage"], e["detail"]) for e in events(killed.stdout)] == [("kill", "SIGKILL")]

    def restarted() -> bool:
        info = json.loads(run("inspect", "b", "--format", "json").stdout)
        return info["state"] == "running" and info["unit"]["main_pid"] not in (0, pid)

    wait_for(restarted, timeout=60)  # restart: on-failure answered it as a crash
    assert ps_rows(project, user_manager)["b"]["restarts"] >= 1
    assert run("kill", "-s", "TERM", "a", "--progress", "quiet").returncode == 0
    wait_for(lambda: ps_rows(project, user_manager)["a"]["state"] in ("exited", "failed"))
    log = run("watch", "--json", "--since", "all", "--no-follow")
    mine = [(r["vm"], r["event"]) for r in map(json.loads, log.stdout.splitlines())]
    for expected in [("a", "PAUSE"), ("a", "STOP"), ("a", "UNPAUSE"), ("a", "RESUME"),
                     ("b", "KILL"), ("a", "KILL")]:  # fmt: skip
        assert expected in mine, expected


def test_stop_and_destroy_take_dependants_first(project: Path, user_manager: ManagerHandle) -> None:
    """c needs b, b needs a, d needs nothing: c, then b, then a, as docker compose stops them;
    d at once."""
    (project / "qemu-compose.yaml").write_text(
        "name: order\nvms:\n"
        + no_disk_vms(["a", "d"])
        + "  b: {memory: 64, cpu: 1, healthcheck: {disable: true}, depends_on: [a]}\n"
        + "  c: {memory: 64, cpu: 1, healthcheck: {disable: true}, depends_on: [b]}\n"
    )

    def run(*args: str) -> list[tuple[str, str, str]]:
        done = compose(*args, "--progress", "json", cwd=project, manager=user_manager)
        assert done.returncode == 0, (args, done.stderr)
        return [(e["vm"], e["stage"], e["status"]) for e in events(done.stdout)]

    def first(said: list[tuple[str, str, str]], vm: str, status: str) -> int:
        return next(
            i for i, (v, stage, s) in enumerate(said) if (v, stage, s) == (vm, "stop", status)
        )

    run("up", "-d")
    for command in ("stop", "destroy"):
        said = run(command)
        assert first(said, "c", "done") < first(said, "b", "working"), (command, said)
        assert first(said, "b", "done") < first(said, "a", "working"), (command, said)
        assert first(said, "d", "working") < first(said, "a", "working"), (command, said)
        if command == "stop":
            run("up", "-d")


def test_an_attached_up_follows_the_consoles(project: Path, user_manager: ManagerHandle) -> None:
    """Without -d, once ready, `up` prints each VM's serial console, every line prefixed with
    the VM's name (padded), the VMs --no-attach names left out; Ctrl-C stops them: 130, no
    error. With --no-log-prefix, the lines as the guest wrote them."""
    tiny = build("tiny")
    boot = f"{{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}"
    (project / "qemu-compose.yaml").write_text(
        f"name: attached\nvms:\n  a: {{boot: {boot}, memory: 128, cpu: 1, user: root}}\n"
        f"  bb: {{boot: {boot}, memory: 128, cpu: 1, user: root}}\n"
    )

    def attached_up(*args: str, until: str) -> list[str]:
        process = compose_background(
            "up", *args, "--progress", "quiet", cwd=project, manager=user_manager
        )
        assert process.stdout is not None
        out = b""
        deadline = time.monotonic() + 300
        with selectors.DefaultSelector() as waiting:  # (unbuffered: no line is held back)
            waiting.register(process.stdout.fileno(), selectors.EVENT_READ)
            while until.encode() not in out and time.monotonic() < deadline:
                if waiting.select(timeout=1):
                    chunk = os.read(process.stdout.fileno(), 65536)
                    if not chunk:
                        break  # it ended
                    out += chunk
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
        seen = out.decode(errors="replace").splitlines()
        assert process.returncode == 130, seen
        said = max(project.glob("stderr-up-*.txt"), key=lambda p: p.stat().st_mtime)
        assert "error" not in said.read_text(), said.read_text()
        return seen + rest.splitlines()

    seen = attached_up("--no-attach", "bb", until="tiny-init: ssh ready")
    assert any(line.startswith("a | tiny-init: ssh ready") for line in seen), seen
    assert all(line.startswith("a | ") for line in seen), seen  # bb's console not followed
    assert units(user_manager, "qemu-compose-attached-*") == []
    seen = attached_up("--attach", "a", "--no-log-prefix", until="tiny-init: ssh ready")
    assert any(line.startswith("tiny-init: ssh ready") for line in seen), seen
    assert compose("up", "-d", "--attach", "a", cwd=project, manager=user_manager).returncode == 2


@pytest.mark.skipif(find_ovmf() is None, reason="needs OVMF (apt-get install ovmf)")
def test_uefi_firmware_boots_ovmf_with_the_vms_own_variables(
    project: Path, user_manager: ManagerHandle
) -> None:
    """firmware: uefi: OVMF runs (its shell, on the serial console, with no disk to boot);
    the VM's variables are its own private copy, kept across a restart; bios: no OVMF."""
    (project / "qemu-compose.yaml").write_text(
        "name: fw\nvms:\n" + no_disk_vms(["bios"])
        + "  uefi: {memory: 64, cpu: 1, healthcheck: {disable: true}, firmware: uefi}\n"
    )  # fmt: skip
    done = compose("up", "-d", "--progress", "quiet", cwd=project, manager=user_manager)
    assert done.returncode == 0, done.stderr
    console = project / ".qemu-compose/uefi/console.log"

    def ovmf_said() -> bool:  # its boot manager: a PXE try on the NIC first, then its shell
        said = console.read_bytes() if console.exists() else b""
        return any(m in said for m in (b"BdsDxe", b">>Start PXE", b"UEFI Interactive Shell"))

    deadline = time.monotonic() + 120
    while not ovmf_said() and time.monotonic() < deadline:
        time.sleep(1)
    assert ovmf_said(), console.read_bytes()[-500:]
    bios = (project / ".qemu-compose/bios/console.log").read_bytes()
    assert b"PXE" not in bios, bios[-500:]
    assert b"BdsDxe" not in bios, bios[-500:]
    variables = project / ".qemu-compose/uefi/efivars.fd"
    ovmf = find_ovmf()
    assert ovmf is not None
    assert variables.stat().st_size == ovmf.variables.stat().st_size
    assert variables.stat().st_mode & 0o777 == 0o600
    assert not (project / ".qemu-compose/bios/efivars.fd").exists()
    inode = variables.stat().st_ino
    done = compose("restart", "uefi", "--progress", "quiet", cwd=project, manager=user_manager)
    assert done.returncode == 0, done.stderr
    assert variables.stat().st_ino == inode  # kept: what the guest stored stays
