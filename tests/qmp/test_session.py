"""QMP sessions against real QEMU processes (no-disk VMs under TCG)."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from qmp import (
    CommandError,
    PowerdownOutcome,
    QmpConnectError,
    QmpSession,
    QmpTimeoutError,
    SessionState,
    SessionStateError,
    VmGoneError,
    asyncio_loop,
    open_session,
)
from qmp.events import Powerdown, Resume, Shutdown, Stop
from tests.support.qemu import POWEROFF_CODE, Vm

MakeVm = Callable[..., Vm]


async def test_status_queries(make_vm: MakeVm) -> None:
    vm = make_vm(name="web")
    async with open_session(vm.supervision_socket) as session:
        status = await session.query_status()
        assert (status.status, status.running) == ("prelaunch", False)
        assert await session.query_name() == "web"
        cpus = await session.query_cpus_fast()
        assert [c.cpu_index for c in cpus] == [0]
        assert cpus[0].thread_id > 0
        assert await session.query_block() == []
        await session.execute("cont")
        assert (await session.query_status()).running


async def test_stop_resume_powerdown_and_shutdown_events(make_vm: MakeVm) -> None:
    vm = make_vm()
    async with open_session(vm.supervision_socket) as session, session.events() as events:
        await session.execute("cont")
        await session.execute("stop")
        await session.execute("cont")
        await session.execute("system_powerdown")
        await session.execute("quit")
        seen = [event async for event in events]  # ends when QEMU closes the connection
    assert [type(e) for e in seen] == [Resume, Stop, Resume, Powerdown, Shutdown]
    assert seen[-1] == Shutdown(timestamp=seen[-1].timestamp, guest=False, reason="host-qmp-quit")
    stamps = [e.timestamp for e in seen]
    assert stamps == sorted(stamps)
    assert stamps[0] > 1.6e9
    assert session.ended
    vm.process.wait(timeout=10)  # type: ignore[union-attr]


async def test_the_first_stream_delivers_what_came_before_an_early_end(make_vm: MakeVm) -> None:
    vm = make_vm()
    async with asyncio_loop():
        session = QmpSession(vm.supervision_socket)
        await session.connect()
        try:
            async with open_session(vm.control_socket) as control:
                await control.execute("cont")
                await control.execute("quit")
            with trio.fail_after(10):
                await session.wait_closed()
            assert session.ended  # QEMU is gone before anyone asked for events
            async with session.events() as events:
                seen = [event async for event in events]
            assert [type(e) for e in seen] == [Resume, Shutdown]
            with pytest.raises(VmGoneError):  # a later stream: nothing more will come
                async with session.events():
                    pass
        finally:
            await session.disconnect()


async def test_a_failed_reconnect_leaves_nothing_of_the_last_connection(make_vm: MakeVm) -> None:
    vm = make_vm()
    async with asyncio_loop():
        session = QmpSession(vm.supervision_socket)
        await session.connect()
        vm.signal(signal.SIGKILL)
        with trio.fail_after(10):
            await session.wait_closed()
        with pytest.raises(VmGoneError):
            await session.query_status()  # the session is CLOSED now
        with pytest.raises(QmpConnectError):  # QEMU is gone: nothing greets
            await session.connect(timeout=0.3)
        with pytest.raises(SessionStateError):  # not a stream on the dead connection
            async with session.events():
                pass
        assert session.state is SessionState.DISCONNECTED


async def test_filtered_events(make_vm: MakeVm) -> None:
    vm = make_vm()
    async with open_session(vm.supervision_socket) as session:
        async with session.events(["STOP"]) as stops:
            for _ in range(3):
                await session.execute("cont")
                await session.execute("stop")
            with trio.fail_after(5):
                got = [await stops.__anext__() for _ in range(3)]
        assert all(isinstance(e, Stop) for e in got)


async def test_command_errors_are_typed(make_vm: MakeVm) -> None:
    vm = make_vm()
    async with open_session(vm.supervision_socket) as session:
        with pytest.raises(CommandError) as caught:
            await session.execute("no-such-command")
        assert caught.value.error_class == "CommandNotFound"
        with pytest.raises(CommandError) as caught:
            await session.execute("device_del", {"id": "nothing"})
        assert caught.value.error_class == "DeviceNotFound"
        assert (await session.query_status()).status == "prelaunch"  # still usable


async def test_twenty_sessions_at_once(make_vm: MakeVm) -> None:
    vms = [make_vm(name=f"vm{i}") for i in range(20)]
    names: dict[str, str | None] = {}
    async with asyncio_loop():

        async def check(vm: Vm) -> None:
            async with open_session(vm.supervision_socket) as session, session.events() as ev:
                await session.execute("cont")
                assert isinstance(await ev.__anext__(), Resume)
                names[vm.name] = await session.query_name()

        async with trio.open_nursery() as nursery:
            for vm in vms:
                nursery.start_soon(check, vm)
    assert names == {f"vm{i}": f"vm{i}" for i in range(20)}


async def test_connect_waits_for_the_socket_to_appear(sockdir: Path, make_vm: MakeVm) -> None:
    session_path = str(sockdir / "late.qmp")
    async with asyncio_loop():
        session = QmpSession(session_path)

        async def start_late() -> None:
            await trio.sleep(0.5)
            make_vm(name="late")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_late)
            await session.connect(timeout=20)
        assert session.state is SessionState.CONNECTED
        assert await session.query_name() == "late"
        await session.disconnect()


async def test_no_socket_gives_up_at_the_deadline(sockdir: Path) -> None:
    async with asyncio_loop():
        session = QmpSession(str(sockdir / "never.qmp"))
        started = trio.current_time()
        with pytest.raises(QmpConnectError, match="the socket does not exist"):
            await session.connect(timeout=0.3)
        assert trio.current_time() - started < 2
        assert session.state is SessionState.DISCONNECTED


async def test_a_socket_that_never_greets_times_out_and_the_session_stays_usable(
    sockdir: Path, make_vm: MakeVm
) -> None:
    path = sockdir / "silent.qmp"
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(path))
    silent.listen(4)
    async with asyncio_loop():
        session = QmpSession(str(path), name="silent")
        started = trio.current_time()
        with pytest.raises(QmpConnectError, match="QEMU did not greet"):
            await session.connect(timeout=0.5)
        assert trio.current_time() - started < 3
        assert session.state is SessionState.DISCONNECTED
        with pytest.raises(SessionStateError):
            await session.query_status()
        # the same session, once a real QEMU serves that path
        silent.close()
        path.unlink()
        vm = make_vm(name="silent")
        assert vm.supervision_socket == str(path)
        await session.connect(timeout=10)
        assert await session.query_name() == "silent"
        await session.disconnect()


async def test_a_hanging_qemu_times_out_and_a_killed_one_is_gone(make_vm: MakeVm) -> None:
    vm = make_vm()
    async with open_session(vm.supervision_socket) as session:
        vm.signal(signal.SIGSTOP)
        with pytest.raises(QmpTimeoutError, match="query-status"):
            await session.execute("query-status", timeout=0.5)

        async def kill_soon() -> None:
            await trio.sleep(0.3)
            vm.signal(signal.SIGKILL)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_soon)
            with pytest.raises(VmGoneError):
                await session.execute("query-status", timeout=30)  # mid-command: killed
        assert trio.current_time() - started < 5
        assert session.ended
        with pytest.raises(VmGoneError):
            await session.query_status()


async def test_a_control_session_does_not_disturb_supervision(make_vm: MakeVm) -> None:
    vm = make_vm()
    async with open_session(vm.supervision_socket) as supervision, supervision.events() as events:
        for _ in range(5):
            async with open_session(vm.control_socket, timeout=5) as control:
                await control.execute("cont")
                await control.execute("stop")
        with trio.fail_after(5):
            got = [await events.__anext__() for _ in range(10)]
        assert [type(e) for e in got] == [Resume, Stop] * 5
        assert supervision.state is SessionState.CONNECTED
        assert (await supervision.query_status()).status == "paused"


async def test_powerdown_of_a_guest_that_powers_off(make_vm: MakeVm) -> None:
    vm = make_vm(paused=False, boot_sector=True)
    async with open_session(vm.supervision_socket) as session:
        with trio.fail_after(30):  # SeaBIOS hands over to the boot sector
            while not vm.guest_ready():
                await trio.sleep(0.05)
        started = trio.current_time()
        outcome = await session.powerdown(grace=30)
        assert outcome is PowerdownOutcome.GUEST_SHUTDOWN
        assert trio.current_time() - started < 20
    assert vm.process is not None
    assert vm.process.wait(timeout=10) == 0


async def test_powerdown_of_a_paused_guest_resumes_it_to_press_the_button(
    make_vm: MakeVm,
) -> None:
    vm = make_vm(paused=False, boot_sector=True)
    async with open_session(vm.supervision_socket) as session:
        with trio.fail_after(30):
            while not vm.guest_ready():
                await trio.sleep(0.05)
        await session.execute("stop")  # paused: a frozen guest would never hear the button
        outcome = await session.powerdown(grace=30)
        assert outcome is PowerdownOutcome.GUEST_SHUTDOWN  # not QUIT after the grace
    assert vm.process is not None
    assert vm.process.wait(timeout=10) == 0


async def test_powerdown_of_a_guest_kept_by_no_shutdown(make_vm: MakeVm) -> None:
    """-no-shutdown keeps QEMU after the guest's poweroff: powerdown quits it at once."""
    vm = make_vm(paused=False, boot_sector=True, extra=["-no-shutdown"])
    async with open_session(vm.supervision_socket) as session:
        with trio.fail_after(30):
            while not vm.guest_ready():
                await trio.sleep(0.05)
        started = trio.current_time()
        outcome = await session.powerdown(grace=30, quit_timeout=20)
        assert outcome is PowerdownOutcome.GUEST_SHUTDOWN
        assert trio.current_time() - started < 10  # not the 20 s of quit_timeout
    assert vm.process is not None
    assert vm.process.wait(timeout=10) == 0


async def test_powerdown_of_a_guest_already_off_under_no_shutdown(make_vm: MakeVm) -> None:
    vm = make_vm(paused=False, boot_code=POWEROFF_CODE, extra=["-no-shutdown"])
    async with open_session(vm.supervision_socket) as session:
        with trio.fail_after(30):
            while (await session.query_status()).status != "shutdown":
                await trio.sleep(0.05)
        started = trio.current_time()
        assert await session.powerdown(grace=30) is PowerdownOutcome.GUEST_SHUTDOWN
        assert trio.current_time() - started < 5  # no grace period waited for nothing
    assert vm.process is not None
    assert vm.process.wait(timeout=10) == 0


async def test_powerdown_of_a_guest_that_ignores_the_button(make_vm: MakeVm) -> None:
    vm = make_vm()  # paused at -S: nothing can answer the button
    async with open_session(vm.supervision_socket) as session:
        started = trio.current_time()
        outcome = await session.powerdown(grace=0.5)
        assert outcome is PowerdownOutcome.QUIT
        assert 0.5 <= trio.current_time() - started < 10
    assert vm.process is not None
    assert vm.process.wait(timeout=10) == 0


async def test_powerdown_of_a_vm_already_gone(make_vm: MakeVm) -> None:
    vm = make_vm()
    async with open_session(vm.supervision_socket) as session:
        vm.signal(signal.SIGKILL)
        with trio.fail_after(5):
            await session.wait_closed()
        assert await session.powerdown(grace=5) is PowerdownOutcome.ALREADY_GONE
