"""The real `qemu-compose` CLI run by tests, against a test's systemd user manager."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .systemd_user import ManagerHandle

EXE = str(Path(sys.executable).parent / "qemu-compose")


def compose(
    *args: str,
    cwd: Path,
    manager: ManagerHandle,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        manager.as_owner(EXE, *args),
        cwd=cwd,
        env={**compose_env(cwd, manager), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def compose_background(*args: str, cwd: Path, manager: ManagerHandle) -> subprocess.Popen[str]:
    """The CLI left running (watch, or an up to kill): stdout is a pipe, stderr a file."""
    return subprocess.Popen(
        manager.as_owner(EXE, *args),
        cwd=cwd,
        env=compose_env(cwd, manager),
        stdout=subprocess.PIPE,
        stderr=(cwd / f"stderr-{args[0]}-{os.urandom(3).hex()}.txt").open("w"),
        text=True,
    )


def compose_env(cwd: Path, manager: ManagerHandle) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_COMPOSE")}
    env["DBUS_SESSION_BUS_ADDRESS"] = manager.bus_address
    if manager.private is not None:
        env["XDG_RUNTIME_DIR"] = str(manager.private.runtime_dir)
        if manager.private.uid != 0:  # an ordinary user's: their home
            env.update(HOME=str(manager.private.home), USER=manager.private.user)
            env.update(LOGNAME=manager.private.user)
    if manager.journal_dir is not None:
        env["QEMU_COMPOSE_JOURNAL_DIR"] = str(manager.journal_dir)
    env["XDG_STATE_HOME"] = str(cwd / ".xdg-state")  # the port and subnet claims of this test
    return env


def ps_rows(cwd: Path, manager: ManagerHandle) -> dict[str, dict[str, Any]]:
    result = compose("ps", "--format", "json", cwd=cwd, manager=manager)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
