"""The project supervisor: its decisions (pure), then against real QEMUs run as real units."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import qmp
import systemd_dbus
from orchestrator.config.model import RestartKind, RestartPolicy
from orchestrator.supervisor.service import (
    GIVE_UP_SIGNAL,
    Act,
    Ending,
    ProjectSupervisor,
    Watched,
    backoff,
    decide,
    read_supervised,
    write_supervised,
)
from qmp.eventlog import EventLog, EventRecord
from systemd_dbus import ExtraProperty
from tests.support.qemu import PANIC_CODE, POWEROFF_CODE, Vm, short_tempdir
from tests.support.systemd_user import ManagerHandle

# -- decisions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "ending", "restarts", "act"),
    [
        ("no", Ending.POWEROFF, 0, Act.QUIT),
        ("no", Ending.PANIC, 0, Act.KILL),
        ("always", Ending.POWEROFF, 5, Act.RESTART),
        ("unless-stopped", Ending.POWEROFF, 0, Act.RESTART),
        ("always", Ending.PANIC, 100, Act.RESTART),
        ("on-failure", Ending.POWEROFF, 0, Act.QUIT),  # a clean poweroff is no failure
        ("on-failure", Ending.PANIC, 100, Act.RESTART),
        ("on-failure:3", Ending.PANIC, 2, Act.RESTART),
        ("on-failure:3", Ending.PANIC, 3, Act.KILL),
        ("always", Ending.REQUESTED, 0, Act.QUIT),  # stop means stop
        ("on-failure", Ending.REQUESTED, 0, Act.QUIT),
    ],
)
def test_decide(policy: str, ending: Ending, restarts: int, act: Act) -> None:
    assert decide(RestartPolicy.parse(policy), ending, restarts, restarts).act is act


def test_backoff_doubles_up_to_a_ceiling() -> None:
    assert [backoff(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    always = RestartPolicy.parse("always")
    assert decide(always, Ending.POWEROFF, 9, 2).delay == 2.0  # only recent ones count


@pytest.mark.parametrize(
    ("text", "kind", "limit", "supervised", "after_poweroff"),
    [
        ("no", RestartKind.NO, None, False, False),
        ("always", RestartKind.ALWAYS, None, True, True),
        ("unless-stopped", RestartKind.UNLESS_STOPPED, None, True, True),
        ("on-failure", RestartKind.ON_FAILURE, None, True, False),
        ("on-failure:3", RestartKind.ON_FAILURE, 3, True, False),
    ],
)
def test_restart_policies_parse_once_and_spell_back(
    text: str, kind: RestartKind, limit: int | None, supervised: bool, after_poweroff: bool
) -> None:
    policy = RestartPolicy.parse(text)
    assert (policy.kind, policy.max_restarts) == (kind, limit)
    assert (policy.supervised, policy.after_poweroff) == (supervised, after_poweroff)
    assert str(policy) == text


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:0", "on-failure:x", ""])
def test_what_is_not_a_restart_policy(text: str) -> None:
    with pytest.raises(ValueError, match="not a restart policy"):
        RestartPolicy.parse(text)


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
    # the first panic may come before the supervisor connects: it then finds the VM panicked
    first = next(r for r in seen if r.event == "QMP_CONNECTED")
    missed = first.data["status"] == "guest-panicked"
    panics = [i for i, n in enumerate(names) if n == "GUEST_PANICKED"]
    assert len(panics) + missed == 3, [(r.event, r.data) for r in seen if r.source != "unit"]
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
