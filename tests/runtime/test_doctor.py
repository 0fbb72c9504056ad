"""`doctor` on this very machine, through the real CLI and a real systemd manager."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.cli import EXE, compose
from tests.support.systemd_user import ManagerHandle


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_doctor_passes_here_and_says_why_vms_use_tcg(
    tmp_path: Path, user_manager: ManagerHandle
) -> None:
    result = compose("doctor", "--format", "json", cwd=tmp_path, manager=user_manager)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["systemd"]["verdict"] == "ok"
    assert checks["qemu-system-x86_64"]["detail"].startswith("QEMU emulator version")
    kvm = checks["kvm"]
    with open("/proc/cpuinfo") as fh:
        hardware = any(flag in fh.read().split() for flag in ("vmx", "svm"))
    if not hardware:  # this machine: TCG, and doctor says so with the reason
        assert kvm["verdict"] == "warn"
        assert "no vmx or svm" in kvm["detail"]


def test_doctor_fails_without_qemu_and_names_the_fix(
    tmp_path: Path, user_manager: ManagerHandle
) -> None:
    import subprocess

    env = {
        "DBUS_SESSION_BUS_ADDRESS": user_manager.bus_address,
        "PATH": str(tmp_path),  # nothing on it: qemu is not found (it is not in /usr/sbin)
        "HOME": os.environ.get("HOME", "/root"),
    }
    if user_manager.private is not None:
        env["XDG_RUNTIME_DIR"] = str(user_manager.private.runtime_dir)
    result = subprocess.run(
        [EXE, "doctor"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stdout
    assert "FAIL  qemu-system-x86_64" in result.stdout
    assert "apt-get install -y qemu-system-x86" in result.stdout
    assert "required check(s) failed" in result.stdout
