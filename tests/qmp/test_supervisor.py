"""The supervisor against real QEMUs: every event logged, reconnects, restarts lose nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from qmp import open_session
from qmp.eventlog import EventLog, EventRecord
from qmp.supervisor import CONNECTED, DISCONNECTED, Supervisor
from tests.support.qemu import Vm

MakeVm = Callable[..., Vm]


async def wait_for(
    log: EventLog, predicate: Callable[[list[EventRecord]], bool]
) -> list[EventRecord]:
    with trio.fail_after(20):
        while True:
            records = log.read()
            if predicate(records):
                return records
            await trio.sleep(0.05)


def events_of(records: list[EventRecord], vm: str) -> list[str]:
    return [r.event for r in records if r.vm == vm]


async def test_events_of_every_vm_are_logged_and_restarts_reconnect(
    make_vm: MakeVm, tmp_path: Path
) -> None:
    a, b = make_vm(name="a"), make_vm(name="b")
    log = EventLog(tmp_path / "log")
    supervisor = Supervisor(
        log, vms={"a": a.supervision_socket, "b": b.supervision_socket}, retry_interval=0.05
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await wait_for(log, lambda rs: sum(r.event == CONNECTED for r in rs) == 2)
        async with open_session(a.control_socket) as control:
            await control.execute("cont")
            await control.execute("stop")
        records = await wait_for(log, lambda rs: "STOP" in events_of(rs, "a"))
        assert events_of(records, "a") == [CONNECTED, "RESUME", "STOP"]
        assert events_of(records, "b") == [CONNECTED]
        resume = next(r for r in records if r.event == "RESUME")
        assert resume.source == "qmp"
        assert resume.qemu_time is not None
        assert abs(resume.qemu_time - resume.time) < 5
        connected = next(r for r in records if r.vm == "b")
        assert (connected.source, connected.data) == ("supervisor", {"status": "prelaunch"})

        a.signal(signal.SIGKILL)  # the VM dies, then comes back on the same socket
        await wait_for(log, lambda rs: DISCONNECTED in events_of(rs, "a"))
        a.stop()
        a2 = make_vm(name="a")
        await wait_for(log, lambda rs: events_of(rs, "a").count(CONNECTED) == 2)
        async with open_session(a2.control_socket) as control:
            await control.execute("cont")
        records = await wait_for(log, lambda rs: events_of(rs, "a").count("RESUME") == 2)
        assert events_of(records, "a") == [
            CONNECTED, "RESUME", "STOP", DISCONNECTED, CONNECTED, "RESUME",
        ]  # fmt: skip
        nursery.cancel_scope.cancel()


async def test_vms_are_added_and_removed_through_the_vms_file(
    make_vm: MakeVm, tmp_path: Path
) -> None:
    a, b = make_vm(name="a"), make_vm(name="b")
    vms_file = tmp_path / "vms.json"
    vms_file.write_text(json.dumps({"a": a.supervision_socket}))
    log = EventLog(tmp_path / "log")
    supervisor = Supervisor(log, vms_file=vms_file, retry_interval=0.05, rescan_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await wait_for(log, lambda rs: CONNECTED in events_of(rs, "a"))
        vms_file.write_text(json.dumps({"b": b.supervision_socket}))
        os.utime(vms_file, (1, 1))  # a changed mtime, even within one clock tick
        await wait_for(log, lambda rs: CONNECTED in events_of(rs, "b"))
        async with open_session(a.control_socket) as control:
            await control.execute("cont")  # a is no longer supervised: not logged
        async with open_session(b.control_socket) as control:
            await control.execute("cont")
        records = await wait_for(log, lambda rs: "RESUME" in events_of(rs, "b"))
        await trio.sleep(0.3)
        assert "RESUME" not in events_of(log.read(), "a")
        assert events_of(records, "a") == [CONNECTED, DISCONNECTED]
        nursery.cancel_scope.cancel()


def start_supervisor(log_dir: Path, vms_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "qmp.supervisor", "--log-dir", str(log_dir), "--vms", str(vms_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_a_restarted_supervisor_loses_no_event_sent_while_it_was_connected(
    make_vm: MakeVm, tmp_path: Path
) -> None:
    vm = make_vm(name="vm")
    vms_file = tmp_path / "vms.json"
    vms_file.write_text(json.dumps({"vm": vm.supervision_socket}))
    log = EventLog(tmp_path / "log")
    sent: list[float] = []  # QEMU timestamps of the events, as the control session saw them

    async def toggle(times: int) -> None:
        async with open_session(vm.control_socket) as control, control.events() as events:
            for _ in range(times):
                await control.execute("cont")
                await control.execute("stop")
            with trio.fail_after(10):
                sent.extend([(await events.__anext__()).timestamp for _ in range(2 * times)])

    first = start_supervisor(log.directory, vms_file)
    try:
        await wait_for(log, lambda rs: CONNECTED in events_of(rs, "vm"))
        await toggle(20)
        await wait_for(log, lambda rs: len([r for r in rs if r.source == "qmp"]) == 40)
    finally:
        first.kill()  # no chance to clean up
        first.wait()
    await toggle(5)  # nobody supervises: these may be lost, and are not counted
    unsupervised = set(sent[40:])
    second = start_supervisor(log.directory, vms_file)
    try:
        await wait_for(log, lambda rs: events_of(rs, "vm").count(CONNECTED) == 2)
        await toggle(20)
        records = await wait_for(
            log, lambda rs: len([r for r in rs if r.qemu_time in set(sent[50:])]) == 40
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0
    logged = [r.qemu_time for r in records if r.source == "qmp"]
    assert set(sent) - unsupervised <= set(logged)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
