"""Ctrl-C while QMP sessions are connecting: a prompt exit, no hang, no stray QEMU.

Regression test for the trio-asyncio hazard in HOSTING.md. The child starts QEMUs (owned by
its nursery, as the CLI's would be by systemd) and connects to them and to sockets that
never greet, all at once, under orchestrator's runner; SIGINT lands during the connects.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.qemu import QEMU

CHILD = textwrap.dedent(
    """
    import socket, sys, trio
    from orchestrator.cli.runner import run
    from qmp import QmpSession, asyncio_loop, monitor_args
    directory = sys.argv[1]

    async def main():
        silent = []
        for i in range(4):
            s = socket.socket(socket.AF_UNIX)
            s.bind(f"{directory}/silent{i}.qmp")
            s.listen(4)
            silent.append(s)
        async with asyncio_loop(), trio.open_nursery() as nursery:
            for i in range(4):
                argv = [sys.argv[2], "-accel", "tcg", "-machine", "q35", "-m", "64",
                        "-nodefaults", "-display", "none", "-S",
                        *monitor_args(f"{directory}/vm{i}.qmp", f"{directory}/vm{i}.ctl")]
                proc = await nursery.start(trio.run_process, argv)
                print("qemu", proc.pid, flush=True)
            for i in range(4):
                nursery.start_soon(QmpSession(f"{directory}/silent{i}.qmp").connect)
                nursery.start_soon(QmpSession(f"{directory}/never{i}.qmp").connect)
            print("connecting", flush=True)
            await trio.sleep_forever()

    try:
        run(main)
    except Exception as err:
        print(type(err).__name__, err, flush=True)
        sys.exit(getattr(err, "exit_status", 1))
    """
)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


@pytest.mark.parametrize("attempt", range(6))
def test_sigint_during_connects(attempt: int, shortdir: Path) -> None:
    directory = shortdir
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), QEMU],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    pids = []
    for line in proc.stdout:
        if line.startswith("qemu "):
            pids.append(int(line.split()[1]))
        if line.strip() == "connecting":
            break
    assert len(pids) == 4
    time.sleep(0.01 * attempt)  # land at different points of the connects
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        pytest.fail("hung after SIGINT")
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130, (out, err)
    assert "Interrupted interrupted by SIGINT" in out
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids), "a QEMU outlived the interrupted command"
