"""The runtime end to end: the real CLI, a real systemd user manager, real QEMUs.

No-disk VMs (firmware only, healthcheck disabled) test orchestration at scale; the tiny guest
(SSH in seconds) tests readiness, dependencies on health, graceful stop and restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.state.files import ProjectLock
from tests.guest_images.build import build
from tests.support.cli import compose, compose_background, events, ps_rows
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]


@pytest.fixture
def project(tmp_path: Path, user_manager: ManagerHandle) -> Iterator[Path]:
    yield tmp_path
    compose("destroy", "--progress", "quiet", cwd=tmp_path, manager=user_manager, timeout=300)


def test_a_dag_of_30_vms_starts_in_dependency_order(
    project: Path, user_manager: ManagerHandle
) -> None:
    lines = ["name: dag", "vms:"]
    layers = [[f"l{layer}v{i}" for i in range(6)] for layer in range(5)]
    for depth, layer in enumerate(layers):
        for i, name in enumerate(layer):
            lines += [
                f"  {name}:",
                "    memory: 64",
                "    cpu: 1",
                "    healthcheck: {disable: true}",
            ]
            if depth:
                needs = sorted({layers[depth - 1][i], layers[depth - 1][(i + 1) % 6]})
                lines.append(f"    depends_on: [{', '.join(needs)}]")
    (project / "qemu-compose.yaml").write_text("\n".join(lines) + "\n")
    result = compose("up", "-d", "--wait", "--progress", "json", cwd=project, manager=user_manager)
    assert result.returncode == 0, result.stderr
    seen = events(result.stdout)
    started = {e["vm"]: e["time"] for e in seen if e["stage"] == "unit" and e["status"] == "done"}
    running = {
        e["vm"]: e["time"] for e in seen if e["stage"] == "running" and e["status"] == "done"
    }
    assert len(started) == len(running) == 30
    for depth in range(1, 5):
        for i, name in enumerate(layers[depth]):
            for need in (layers[depth - 1][i], layers[depth - 1][(i + 1) % 6]):
                assert started[name] >= running[need], f"{name} started before {need} ran"
    rows = ps_rows(project, user_manager)
    assert sorted(rows) == sorted(n for layer in layers for n in layer)
    assert {r["state"] for r in rows.values()} == {"running"}
    assert {r["health"] for r in rows.values()} == {None}  # no OS: no health
    again = compose("up", "--dry-run", cwd=project, manager=user_manager)
    assert {line.split()[1] for line in again.stdout.splitlines()} == {"keep"}
    gone = compose("destroy", "--progress", "quiet", cwd=project, manager=user_manager)
    assert gone.returncode == 0, gone.stderr
    units = user_manager.systemctl(
        "list-units", "--all", "--plain", "--no-legend", "qemu-compose-dag-*"
    ).stdout
    assert units.strip() == ""
    assert {r["state"] for r in ps_rows(project, user_manager).values()} == {"not-created"}


def test_tiny_guests_ready_in_order_stop_gracefully_and_come_back(
    project: Path, user_manager: ManagerHandle
) -> None:
    tiny = build("tiny")
    (project / "qemu-compose.yaml").write_text(
        f"""
name: tiny
x-tiny: &tiny
  boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}
  memory: 128
  cpu: 1
  user: dev
  stop_grace_period: 30s
vms:
  db:
    <<: *tiny
    healthcheck:
      test: ["CMD", "test", "-d", "/home/dev/.ssh"]
      interval: 1s
  web:
    <<: *tiny
    depends_on:
      db: {{condition: service_healthy}}
"""
    )
    result = compose("up", "-d", "--wait", "--progress", "json", cwd=project, manager=user_manager)
    assert result.returncode == 0, result.stderr
    seen = events(result.stdout)
    healthy = next(
        e["time"]
        for e in seen
        if e["vm"] == "db" and e["stage"] == "health" and e["status"] == "done"
    )
    web_unit = next(
        e["time"]
        for e in seen
        if e["vm"] == "web" and e["stage"] == "unit" and e["status"] == "done"
    )
    assert web_unit >= healthy
    rows = {
        r["name"]: r
        for r in json.loads(
            compose("ps", "--format", "json", cwd=project, manager=user_manager).stdout
        )
    }
    assert rows["db"]["health"] == rows["web"]["health"] == "healthy"  # the supervisor's word
    assert rows["web"]["state"] == "running"
    assert rows["web"]["status"].startswith("running (healthy) ")
    assert rows["db"]["ssh_port"] != rows["web"]["ssh_port"]
    # `ssh VM command`: the project key, the guest's host key recorded on first contact
    for _ in range(2):
        out = compose("ssh", "web", "hostname", cwd=project, manager=user_manager, timeout=60)
        assert (out.returncode, out.stdout.strip()) == (0, "web"), out.stderr
    recorded = (project / ".qemu-compose/ssh/known_hosts").read_text()
    assert recorded.startswith("qemu-compose.tiny.web ssh-ed25519 ")
    bad = compose("ssh", "nope", "true", cwd=project, manager=user_manager)
    assert bad.returncode == 2
    assert "VM 'nope' is not created" in bad.stderr
    stopped = compose("stop", "--progress", "json", cwd=project, manager=user_manager)
    assert stopped.returncode == 0, stopped.stderr
    outcomes = {
        e["vm"]: e["detail"]
        for e in events(stopped.stdout)
        if e["stage"] == "stop" and e["status"] == "done"
    }
    assert outcomes == {"db": "guest-shutdown", "web": "guest-shutdown"}
    assert "qemu-compose.tiny.web" in (project / ".qemu-compose/ssh/known_hosts").read_text()
    plan = compose("up", "--dry-run", cwd=project, manager=user_manager).stdout.splitlines()
    assert [line.split() for line in plan] == [  # stop stopped the supervisor too
        ["(supervisor)", "start", "not", "running"],
        ["db", "start", "stopped"],
        ["web", "start", "stopped"],
    ]
    again = compose("up", "-d", "--wait", "--progress", "quiet", cwd=project, manager=user_manager)
    assert again.returncode == 0, again.stderr
    rows = {
        r["name"]: r
        for r in json.loads(
            compose("ps", "--format", "json", cwd=project, manager=user_manager).stdout
        )
    }
    assert rows["web"]["health"] == "healthy"


def test_a_busy_project_names_the_holder(project: Path, user_manager: ManagerHandle) -> None:
    (project / "qemu-compose.yaml").write_text(
        "vms:\n  a: {memory: 64, healthcheck: {disable: true}}\n"
    )
    lock = ProjectLock(project / ".qemu-compose", command="qemu-compose up")
    with lock.held_now():
        result = compose("up", "-d", cwd=project, manager=user_manager)
    assert result.returncode == 1
    assert f"the project is busy: process {os.getpid()} (qemu-compose up) holds" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_vm_that_cannot_start_fails_clearly_and_the_others_come_up(
    project: Path, user_manager: ManagerHandle
) -> None:
    (project / "qemu-compose.yaml").write_text(
        "vms:\n"
        "  good: {memory: 64, healthcheck: {disable: true}}\n"
        "  bad: {memory: 64, machine: 'no-such-machine', healthcheck: {disable: true}}\n"
        "  after-bad: {memory: 64, depends_on: [bad], healthcheck: {disable: true}}\n"
    )
    result = compose("up", "-d", "--progress", "plain", cwd=project, manager=user_manager)
    assert result.returncode == 1
    assert "2 of 3 VMs did not come up" in result.stderr
    assert "bad:" in result.stderr
    assert "after-bad: bad failed" in result.stderr
    assert "Traceback" not in result.stderr
    rows = {
        r["name"]: r["state"]
        for r in json.loads(
            compose("ps", "--format", "json", cwd=project, manager=user_manager).stdout
        )
    }
    assert rows["good"] == "running"


def test_three_replicas_and_one_that_powers_off_comes_back(
    project: Path, user_manager: ManagerHandle
) -> None:
    tiny = build("tiny")
    (project / "qemu-compose.yaml").write_text(
        f"""
name: reps
vms:
  web:
    boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}
    memory: 128
    cpu: 1
    user: dev
    ssh: {{user: root}}  # to power off from inside
    replicas: 3
    restart: always
    stop_grace_period: 30s
"""
    )
    result = compose("up", "-d", "--wait", "--progress", "quiet", cwd=project, manager=user_manager)
    assert result.returncode == 0, result.stderr
    rows = ps_rows(project, user_manager)
    assert sorted(rows) == ["web-1", "web-2", "web-3"]
    assert {r["health"] for r in rows.values()} == {"healthy"}
    assert len({r["ssh_port"] for r in rows.values()}) == 3
    for name in rows:
        out = compose("ssh", name, "hostname", cwd=project, manager=user_manager, timeout=60)
        assert (out.returncode, out.stdout.strip()) == (0, name), out.stderr
    # web-2's guest powers off by itself: restart: always brings it back (the supervisor)
    watcher = compose_background("watch", "--json", "web-2", cwd=project, manager=user_manager)
    with contextlib.suppress(subprocess.TimeoutExpired):  # the connection dies with the guest
        compose("ssh", "web-2", "poweroff -f", cwd=project, manager=user_manager, timeout=20)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        replay = compose(
            "watch", "--since", "all", "--no-follow", "--json", "web-2",
            cwd=project, manager=user_manager,
        )  # fmt: skip
        if '"RESTARTED"' in replay.stdout and ps_rows(project, user_manager)["web-2"]["health"] == (
            "healthy"
        ):
            break
        time.sleep(1)
    else:
        pytest.fail("web-2 did not come back")
    watcher.send_signal(signal.SIGTERM)
    seen = [json.loads(line) for line in watcher.communicate(timeout=20)[0].splitlines()]
    assert {r["vm"] for r in seen} == {"web-2"}
    order = [r["event"] for r in seen if r["event"] in ("SHUTDOWN", "RESTARTING", "RESTARTED")]
    assert order == ["SHUTDOWN", "RESTARTING", "RESTARTED"]
    shutdown = next(r for r in seen if r["event"] == "SHUTDOWN")
    assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
    logs = compose("logs", "web-2", "--source", "console", cwd=project, manager=user_manager)
    assert logs.stdout.count("tiny-init: ssh ready") == 2  # booted twice, one console log
    rows = ps_rows(project, user_manager)
    assert {r["health"] for r in rows.values()} == {"healthy"}
    assert [rows[n]["restarts"] for n in sorted(rows)] == [0, 1, 0]  # in place, by the supervisor
