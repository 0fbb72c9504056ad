"""Latency of starting transient units: systemd_dbus against `systemd-run --user`.

For 1 unit at a time and for 100 at once, the time from asking for a unit to its start job
being done (Type=exec: the command has been executed), p50 and p95, for
  - systemd_dbus: StartTransientUnit over one D-Bus connection, waiting for JobRemoved;
  - systemd-run --user: one process per unit, the prototype's way (it also waits for the job).
Both run here, side by side, against the same manager; the ratio is systemd-run / ours.

Usage: .venv/bin/python bench/systemd_units.py [--rounds N]
Where PID 1 is not systemd it starts a private user manager (needs root), as the tests do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from systemd_dbus import TransientUnit, connect
from tests.support.systemd_user import UserManager, pid1_is_systemd

SLEEP = ["/bin/sleep", "600"]


@contextmanager
def user_manager_env() -> Iterator[dict[str, str]]:
    if pid1_is_systemd() and os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        yield dict(os.environ)
        return
    state = Path(tempfile.mkdtemp(prefix="qc-bench-"))
    manager = UserManager(state / "m", name="qc-bench", stop_grace=5)
    manager.start()
    try:
        yield {**os.environ, **manager.env()}
    finally:
        manager.stop()
        shutil.rmtree(state, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def names(n: int, tag: str) -> list[str]:
    return [f"qc-bench-{tag}-{uuid.uuid4().hex[:8]}.service" for _ in range(n)]


async def ours(bus: str, n: int, rounds: int) -> list[float]:
    latencies: list[float] = []
    async with connect(bus) as manager:
        for _ in range(rounds):
            batch = names(n, "dbus")

            async def one(name: str) -> None:
                t0 = time.perf_counter()
                await manager.start(TransientUnit(name, SLEEP))
                latencies.append(time.perf_counter() - t0)

            async with trio.open_nursery() as nursery:
                for name in batch:
                    nursery.start_soon(one, name)
            async with trio.open_nursery() as nursery:
                for name in batch:
                    nursery.start_soon(manager.stop, name)
    return latencies


def systemd_run(env: dict[str, str], n: int, rounds: int) -> list[float]:
    latencies: list[float] = []
    for _ in range(rounds):
        batch = names(n, "run")
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(  # the same argv shape for every unit
                [
                    "systemd-run",
                    "--user",
                    "--quiet",
                    f"--unit={name}",
                    "--property=Type=exec",
                    "--collect",
                    *SLEEP,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for name in batch
        ]
        pending = dict(enumerate(procs))
        while pending:
            for i, proc in list(pending.items()):
                if proc.poll() is not None:
                    if proc.returncode != 0:
                        why = proc.stderr.read().decode() if proc.stderr else ""
                        raise RuntimeError(f"systemd-run failed: {why}")
                    latencies.append(time.perf_counter() - t0)
                    del pending[i]
            time.sleep(0.0005)
        subprocess.run(
            ["systemctl", "--user", "stop", *batch], env=env, check=True, capture_output=True
        )
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 100 (x10 for 1 unit)")
    args = parser.parse_args()
    with user_manager_env() as env:
        os.environ.update(env)
        bus = env["DBUS_SESSION_BUS_ADDRESS"]
        print(f"machine: {os.cpu_count()} cores, {os.uname().release}; manager bus {bus}")
        print(f"{'units at once':>14} {'method':>16} {'p50 ms':>9} {'p95 ms':>9} {'n':>5}")
        for n, rounds in ((1, args.rounds * 10), (100, args.rounds)):
            mine = trio.run(ours, bus, n, rounds)
            theirs = systemd_run(env, n, rounds)
            for label, values in (("systemd_dbus", mine), ("systemd-run", theirs)):
                print(
                    f"{n:>14} {label:>16} {percentile(values, 0.5) * 1e3:>9.1f} "
                    f"{percentile(values, 0.95) * 1e3:>9.1f} {len(values):>5}"
                )
            p50_ratio = statistics.median(theirs) / statistics.median(mine)
            p95_ratio = percentile(theirs, 0.95) / percentile(mine, 0.95)
            print(
                f"{'':>14} {'ratio':>16} {p50_ratio:>8.1f}x {p95_ratio:>8.1f}x"
                "   (systemd-run / systemd_dbus: higher means we are faster)"
            )


if __name__ == "__main__":
    main()
