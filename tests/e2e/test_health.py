"""Health kept by the supervisor, on tiny guests: docker's states in ps, watch and inspect; a
check made to fail from inside turns unhealthy and heals; the start period; paused and
stopped guests are not probed; a no-op `up --wait` reads the kept health (it loads no SSH).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.guest_images.build import build
from tests.support.cli import compose, compose_background, ps_rows
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]

INTERVAL, RETRIES = 1.0, 2


@pytest.fixture
def project(tmp_path: Path, user_manager: ManagerHandle) -> Any:
    yield tmp_path
    compose("destroy", "--progress", "quiet", cwd=tmp_path, manager=user_manager, timeout=300)


def health(project: Path, vm: str) -> dict[str, Any]:
    kept: dict[str, Any] = json.loads((project / ".qemu-compose" / vm / "health.json").read_text())
    return kept


def until(condition: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("not in time")
        time.sleep(0.2)


def test_kept_health_in_ps_watch_and_inspect(project: Path, user_manager: ManagerHandle) -> None:
    tiny = build("tiny")
    (project / "qemu-compose.yaml").write_text(
        f"""
name: hc
x-tiny: &tiny
  boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}
  memory: 128
  cpu: 1
  user: dev
  stop_grace_period: 30s
vms:
  web:
    <<: *tiny
    healthcheck:
      test: ["CMD-SHELL", "test ! -e /tmp/broken || {{ echo broken; exit 1; }}"]
      interval: {INTERVAL:g}s
      timeout: 10s
      retries: {RETRIES}
  slow:
    <<: *tiny
    healthcheck:
      test: ["CMD", "test", "-e", "/tmp/ok"]
      interval: 1s
      retries: 1
      start_period: 10m
      start_interval: 1s
"""
    )
    up = compose("up", "-d", "--progress", "quiet", "slow", cwd=project, manager=user_manager)
    assert up.returncode == 0, up.stderr
    up = compose(
        "up", "-d", "--wait", "--progress", "quiet", "web", cwd=project, manager=user_manager
    )
    assert up.returncode == 0, up.stderr
    rows = ps_rows(project, user_manager)
    assert (rows["web"]["state"], rows["web"]["health"]) == ("running", "healthy")
    assert rows["web"]["status"].startswith("running (healthy) ")
    assert rows["web"]["started_at"] <= time.time()
    table = compose("ps", cwd=project, manager=user_manager).stdout
    [line] = [line for line in table.splitlines() if line.startswith("web ")]
    assert line.split()[1:3] == ["running", "(healthy)"]

    # a no-op up --wait reads what the supervisor keeps: it loads no SSH client at all
    again = compose(
        "up", "-d", "--wait", "--progress", "json", "web",
        cwd=project, manager=user_manager, env={"PYTHONPROFILEIMPORTTIME": "1"},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    steps = [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")]
    assert [s for s in steps if s["stage"] == "supervisor"] == []  # kept: the same version
    imported = [line.split("|")[-1].strip() for line in again.stderr.splitlines() if "|" in line]
    assert "trio" in imported  # (the import list is there)
    assert "asyncssh" not in imported

    # the check fails from inside: unhealthy within interval x retries plus one interval
    watcher = compose_background("watch", "--json", "web", cwd=project, manager=user_manager)
    broken = compose("ssh", "web", "touch /tmp/broken", cwd=project, manager=user_manager)
    assert broken.returncode == 0, broken.stderr
    broke_at = time.time()
    until(lambda: ps_rows(project, user_manager)["web"]["health"] == "unhealthy", timeout=60)
    info = json.loads(
        compose("inspect", "web", "--format", "json", cwd=project, manager=user_manager).stdout
    )
    kept = info["health"]
    assert kept["status"] == "unhealthy"
    assert kept["failing_streak"] >= RETRIES
    assert kept["log"][-1]["exit_code"] == 1
    assert kept["log"][-1]["output"] == "broken\n"
    assert (
        "Health: unhealthy" in compose("inspect", "web", cwd=project, manager=user_manager).stdout
    )
    healed = compose("ssh", "web", "rm /tmp/broken", cwd=project, manager=user_manager)
    assert healed.returncode == 0, healed.stderr
    until(lambda: ps_rows(project, user_manager)["web"]["health"] == "healthy", timeout=60)
    time.sleep(1)  # the watcher reads on
    watcher.terminate()
    seen = [json.loads(line) for line in watcher.communicate(timeout=20)[0].splitlines()]
    changes = [r for r in seen if r["event"] == "health_status"]
    assert [(r["data"]["old"], r["data"]["new"]) for r in changes] == [
        ("healthy", "unhealthy"), ("unhealthy", "healthy")
    ]  # fmt: skip
    assert changes[0]["data"]["output"] == "broken\n"
    assert changes[0]["source"] == "health"
    # a probe every interval: the RETRIES-th failure comes at most one interval after the
    # first (begun at most one interval after the break), each taking well under a second
    assert changes[0]["time"] - broke_at < INTERVAL * RETRIES + INTERVAL + 3

    # the start period: failures do not count, however many; a success ends it
    until(lambda: sum(r["exit_code"] == 1 for r in health(project, "slow")["log"]) >= 3)
    slow = health(project, "slow")
    assert slow["status"] == "starting"  # retries: 1, yet 3 failures
    assert slow["failing_streak"] == 0
    assert (
        compose("ssh", "slow", "touch /tmp/ok", cwd=project, manager=user_manager).returncode == 0
    )
    until(lambda: health(project, "slow")["status"] == "healthy", timeout=60)

    # a paused guest answers nothing and is not probed; unpaused, it is again
    paused = compose("pause", "web", "--progress", "quiet", cwd=project, manager=user_manager)
    assert paused.returncode == 0, paused.stderr
    time.sleep(INTERVAL * 2)  # a probe under way is dropped
    frozen = health(project, "web")["log"]
    with pytest.raises(subprocess.TimeoutExpired):  # QEMU takes the connection; nobody answers
        compose("ssh", "web", "true", cwd=project, manager=user_manager, timeout=INTERVAL * 3)
    time.sleep(INTERVAL)
    assert health(project, "web")["log"] == frozen
    assert ps_rows(project, user_manager)["web"]["state"] == "paused"
    unpaused = compose("unpause", "web", "--progress", "quiet", cwd=project, manager=user_manager)
    assert unpaused.returncode == 0, unpaused.stderr
    assert compose("ssh", "web", "true", cwd=project, manager=user_manager).returncode == 0
    until(lambda: health(project, "web")["log"] != frozen, timeout=30)

    # a stopped VM is not probed, and ps says how it ended
    stop = compose("stop", "--progress", "quiet", "web", cwd=project, manager=user_manager)
    assert stop.returncode == 0, stop.stderr
    ended = health(project, "web")["log"]
    time.sleep(INTERVAL * 4)
    assert health(project, "web")["log"] == ended
    row = ps_rows(project, user_manager)["web"]
    assert (row["state"], row["health"]) == ("exited", None)
    assert row["status"].startswith("exited (0) ")
