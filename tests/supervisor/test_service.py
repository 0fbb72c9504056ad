"""The project supervisor against real QEMUs run as real units (its decisions: test_lifecycle)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

import qmp
import systemd_dbus
from orchestrator.state.paths import ProjectPaths
from orchestrator.supervisor.eventlog import EventLog, EventRecord
from orchestrator.supervisor.lifecycle import GIVE_UP_SIGNAL
from orchestrator.supervisor.service import ProjectSupervisor
from orchestrator.supervisor.supervised import Watched, read_supervised, write_supervised
from systemd_dbus import ExtraProperty
from tests.support.qemu import PANIC_CODE, POWEROFF_CODE, Vm, short_tempdir
from tests.support.systemd_user import ManagerHandle


def test_supervised_vms_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "supervised-vms.json"
    assert read_supervised(path) == {}
    vms = {"b": Watched("/s/b.sock", "u-b.service", "always"), "a": Watched("/s/a", "u-a")}
    write_supervised(path, vms)
    assert read_supervised(path) == vms
    assert path.stat().st_mode & 0o777 == 0o600


# -- against real QEMUs under a real systemd manager ---------------------------------------------

pytestmark_real = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"
)


class Rig:
    def __init__(self, directory: Path, manager: systemd_dbus.SystemdManager) -> None:
        self.directory = directory
        self.manager = manager
        self.log = EventLog(directory / "events")
        self.vms_file = directory / "supervised-vms.json"
        self.units: list[str] = []

    async def start_vm(self, name: str, code: bytes, policy: str) -> tuple[Vm, str]:
        vm = Vm(self.directory, name=name, paused=False, boot_code=code)
        argv = [*vm.argv(), "-device", "pvpanic"]
        argv += ["-action", "panic=exit-failure"] if policy == "no" else []
        argv += ["-no-shutdown", "-action", "panic=pause"] if policy != "no" else []
        unit = f"qc-test-sup-{name}-{uuid.uuid4().hex[:8]}.service"
        self.units.append(unit)
        table = read_supervised(self.vms_file)
        table[name] = Watched(vm.supervision_socket, unit, policy)
        write_supervised(self.vms_file, table)
        extra = [ExtraProperty("RestartPreventExitStatus", "(aiai)", ([], [GIVE_UP_SIGNAL]))]
        await self.manager.start(
            systemd_dbus.TransientUnit(
                unit,
                argv,
                collect_mode="inactive",
                # as the runtime makes them: systemd restarts a crashed QEMU, not a given-up one
                restart="no" if policy == "no" else "on-failure",
                restart_sec=0.1,
                extra=extra if policy != "no" else [],
            )
        )
        return vm, unit

    def records(self, vm: str) -> list[EventRecord]:
        return [r for r in self.log.read() if r.vm == vm]

    async def wait_for(self, vm: str, event: str, count: int = 1, timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while sum(r.event == event for r in self.records(vm)) < count:
                await trio.sleep(0.1)


@pytest.fixture
async def rig(user_manager: ManagerHandle) -> AsyncIterator[Rig]:
    directory = short_tempdir("qc-sup-")
    async with (
        qmp.asyncio_loop(),
        systemd_dbus.connect(user_manager.bus_address) as manager,
        trio.open_nursery() as nursery,
    ):
        rig = Rig(directory, manager)
        supervisor = ProjectSupervisor(rig.log, rig.vms_file, manager, rescan_interval=0.1)
        await nursery.start(supervisor.run)
        try:
            yield rig
        finally:
            for unit in rig.units:
                if (await manager.status(unit)).load_state != "not-found":
                    await manager.kill(unit, 9)
                    await manager.stop(unit)
                if (await manager.status(unit)).active_state == "failed":
                    await manager.reset_failed(unit)
            nursery.cancel_scope.cancel()
    shutil.rmtree(directory, ignore_errors=True)


@pytestmark_real
async def test_a_panicking_guest_is_restarted_with_backoff_until_its_limit(rig: Rig) -> None:
    _, unit = await rig.start_vm("crashy", PANIC_CODE, "on-failure:2")
    await rig.wait_for("crashy", "RESTART_GIVEN_UP", timeout=90)
    with trio.fail_after(30):
        while (await rig.manager.status(unit)).active_state != "failed":
            await trio.sleep(0.1)
    await rig.wait_for("crashy", "UNIT_STATE")
    seen = rig.records("crashy")
    names = [r.event for r in seen if r.source != "unit"]
    # the first panic may come before the supervisor connects: it then finds the VM panicked,
    # and its event may still arrive after the session opened (decided once all the same)
    first = next(r for r in seen if r.event == "QMP_CONNECTED")
    missed = first.data["status"] == "guest-panicked"
    panics = [i for i, n in enumerate(names) if n == "GUEST_PANICKED"]
    resets = [
        i
        for i, r in enumerate(r for r in seen if r.source != "unit")
        if r.event == "RESET" and r.data.get("reason") == "host-qmp-system-reset"
    ]  # our restarts (the firmware resets too)
    assert len(resets) == 2, names
    before = [p for p in panics if p < resets[0]]
    assert len(before) <= 1, names
    assert missed or before, names  # the first panic, seen one way or both
    between = [p for p in panics if resets[0] < p < resets[1]]
    after = [p for p in panics if p > resets[1]]
    assert (len(between), len(after)) == (1, 1), names  # each restart panicked once more
    restarting = [r for r in seen if r.event == "RESTARTING"]
    assert [r.data["attempt"] for r in restarting] == [1, 2]
    assert [r.data["delay"] for r in restarting] == [0.5, 1.0]
    assert names.index("RESTART_GIVEN_UP") > panics[-1]
    restarted = [r for r in seen if r.event == "RESTARTED"]
    assert restarted[1].time - restarting[1].time >= 1.0  # the backoff was waited
    states = [r.data["active_state"] for r in seen if r.event == "UNIT_STATE"]
    assert states[-1] == "failed"
    await trio.sleep(1)  # RestartSec is 0.1 s: had systemd restarted it, it would be back
    status = await rig.manager.status(unit)
    assert (status.active_state, status.result) == ("failed", "signal")


@pytestmark_real
async def test_a_guest_that_powers_off_restarts_under_always_until_stopped(rig: Rig) -> None:
    vm, unit = await rig.start_vm("bouncy", POWEROFF_CODE, "always")
    await rig.wait_for("bouncy", "RESTARTED", count=2, timeout=90)
    async with qmp.open_session(vm.control_socket) as session:
        await session.execute("system_powerdown")  # the button only: the supervisor quits it
    with trio.fail_after(30):
        while (await rig.manager.status(unit)).load_state != "not-found":
            await trio.sleep(0.1)  # QEMU quit cleanly: the unit is gone, not failed
    count = len([r for r in rig.records("bouncy") if r.event == "RESTARTED"])
    await trio.sleep(2)
    assert len([r for r in rig.records("bouncy") if r.event == "RESTARTED"]) == count
    shutdowns = [r for r in rig.records("bouncy") if r.event == "SHUTDOWN"]
    assert shutdowns[0].data == {"guest": True, "reason": "guest-shutdown"}


@pytestmark_real
async def test_a_guest_without_a_policy_ends_and_a_panic_fails_its_unit(rig: Rig) -> None:
    _, quiet = await rig.start_vm("quiet", POWEROFF_CODE, "no")
    _, crashy = await rig.start_vm("panicky", PANIC_CODE, "no")
    with trio.fail_after(60):
        while True:
            states = [(await rig.manager.status(u)) for u in (quiet, crashy)]
            if states[0].load_state == "not-found" and states[1].active_state == "failed":
                break
            await trio.sleep(0.1)
    assert states[1].result == "exit-code"  # -action panic=exit-failure
    assert not [r for r in rig.log.read() if r.event.startswith("RESTART")]


def start_supervisor(state_dir: Path, bus: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "orchestrator.supervisor", "--state-dir", str(state_dir)]
    return subprocess.Popen(
        [*argv, "--bus", bus], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytestmark_real
async def test_a_restarted_supervisor_loses_no_event_sent_while_it_was_connected(
    user_manager: ManagerHandle,
) -> None:
    """The project supervisor as its unit runs it, killed and started again: every event QEMU
    sent while one of them was connected is in the log, numbered without a gap."""
    state_dir = short_tempdir("qc-sup-")
    paths = ProjectPaths(state_dir, "")
    vm = Vm(state_dir, name="vm").start()
    write_supervised(
        paths.supervised_vms, {"vm": Watched(vm.supervision_socket, "qc-none.service")}
    )
    log = EventLog(paths.events_dir)
    sent: list[float] = []  # QEMU timestamps of the events, as the control session saw them

    async def toggle(times: int) -> None:
        async with qmp.open_session(vm.control_socket) as control, control.events() as events:
            for _ in range(times):
                await control.execute("cont")
                await control.execute("stop")
            with trio.fail_after(10):
                sent.extend([(await events.__anext__()).timestamp for _ in range(2 * times)])

    async def wait_for(predicate: Callable[[list[EventRecord]], bool]) -> list[EventRecord]:
        with trio.fail_after(20):
            while not predicate(records := log.read()):
                await trio.sleep(0.05)
            return records

    def connects(records: list[EventRecord]) -> int:
        return sum(r.event == "QMP_CONNECTED" for r in records)

    try:
        async with qmp.asyncio_loop():
            first = start_supervisor(state_dir, user_manager.bus_address)
            try:
                await wait_for(lambda rs: connects(rs) == 1)
                await toggle(20)
                await wait_for(lambda rs: len([r for r in rs if r.source == "qmp"]) == 40)
            finally:
                first.kill()  # no chance to clean up
                first.wait()
            await toggle(5)  # nobody supervises: these may be lost, and are not counted
            unsupervised = set(sent[40:])
            second = start_supervisor(state_dir, user_manager.bus_address)
            try:
                await wait_for(lambda rs: connects(rs) == 2)
                await toggle(20)
                records = await wait_for(
                    lambda rs: len([r for r in rs if r.qemu_time in set(sent[50:])]) == 40
                )
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(timeout=10) == 0
    finally:
        vm.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    logged = [r.qemu_time for r in records if r.source == "qmp"]
    assert set(sent) - unsupervised <= set(logged)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
