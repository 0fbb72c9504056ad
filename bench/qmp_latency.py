"""QMP latency: our trio session and event log against raw sockets, in one run.

1. Round trip of query-status, 1000 calls: qmp.QmpSession (qemu.qmp under trio-asyncio)
   against a raw JSON-lines socket.
2. Event latency: from sending `stop`/`cont` on the control monitor to the event reaching
   (a) a follower of the event log written by the supervisor (woken by inotify),
   (b) a raw socket reading the supervision monitor of an identical VM (the physical limit).

Usage: .venv/bin/python bench/qmp_latency.py [--calls N] [--events N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.supervisor.eventlog import EventLog
from orchestrator.supervisor.service import log_session_event
from qmp import open_session
from qmp.supervisor import Supervisor
from tests.support.qemu import Vm, short_tempdir


class RawQmp:
    """QMP over a plain blocking socket: the baseline."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.file.readline()  # greeting
        self.command("qmp_capabilities")

    def send(self, command: str) -> None:
        self.file.write(json.dumps({"execute": command}).encode() + b"\n")
        self.file.flush()

    def command(self, command: str) -> object:
        self.send(command)
        while True:
            message = json.loads(self.file.readline())
            if "return" in message or "error" in message:
                return message

    def next_event(self) -> str:
        while True:
            message = json.loads(self.file.readline())
            if "event" in message:
                return str(message["event"])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1e3, p99 * 1e3


def row(label: str, values: list[float], base: list[float] | None = None) -> None:
    p50, p99 = stats(values)
    ratio = ""
    if base is not None:
        b50, b99 = stats(base)
        ratio = f"   {p50 / b50:>5.1f}x {p99 / b99:>5.1f}x of raw"
    print(f"  {label:<44} p50 {p50:>8.3f} ms  p99 {p99:>8.3f} ms{ratio}")


async def round_trips(vm: Vm, calls: int) -> tuple[list[float], list[float]]:
    raw = RawQmp(vm.control_socket)
    raw_times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        raw.command("query-status")
        raw_times.append(time.perf_counter() - t0)
    raw.close()
    ours = []
    async with open_session(vm.supervision_socket) as session:
        for _ in range(calls):
            t0 = time.perf_counter()
            await session.execute("query-status")
            ours.append(time.perf_counter() - t0)
    return raw_times, ours


def raw_event_latency(vm: Vm, events: int) -> list[float]:
    watcher = RawQmp(vm.supervision_socket)
    control = RawQmp(vm.control_socket)
    times = []
    for i in range(events):
        t0 = time.perf_counter()
        control.send("cont" if i % 2 == 0 else "stop")
        watcher.next_event()
        times.append(time.perf_counter() - t0)
        control.file.readline()  # the command's own reply
    watcher.close()
    control.close()
    return times


async def log_event_latency(vm: Vm, directory: Path, events: int, poll: float) -> list[float]:
    log = EventLog(directory)
    supervisor = Supervisor(
        lambda name, _, event: log_session_event(log, name, event),
        vms={"vm": vm.supervision_socket},
        retry_interval=0.01,
    )
    times = []
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        async with log.follow(from_end=True, poll_interval=poll) as records:
            async for record in records:  # wait until the supervisor is connected
                if record.event == "QMP_CONNECTED":
                    break
            control = RawQmp(vm.control_socket)
            for i in range(events):
                t0 = time.perf_counter()
                control.command("cont" if i % 2 == 0 else "stop")
                await records.__anext__()
                times.append(time.perf_counter() - t0)
            control.close()
        nursery.cancel_scope.cancel()
    return times


async def main(calls: int, events: int) -> None:
    directory = short_tempdir("qc-bench-")
    vms = [Vm(directory, name=f"vm{i}").start() for i in range(3)]
    try:
        print(f"QEMU {vms[0].argv()[0]}, no-disk VMs under TCG; {calls} calls, {events} events")
        raw, ours = await round_trips(vms[0], calls)
        print("query-status round trip")
        row("raw socket", raw)
        row("qmp.QmpSession (trio -> asyncio)", ours, raw)
        base = raw_event_latency(vms[1], events)
        print("command -> event seen")
        row("raw socket on the supervision monitor", base)
        got = await log_event_latency(vms[2], directory / "log", events, 1.0)
        row("supervisor -> event log -> follower (inotify)", got, base)
    finally:
        for vm in vms:
            vm.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    trio.run(main, args.calls, args.events)
