"""systemd_dbus against a real systemd user manager on a real bus (see tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import trio

from systemd_dbus import (
    ConnectionStateError,
    ExtraProperty,
    ManagerGoneError,
    ManagerUnavailableError,
    NoSuchUnitError,
    Runstate,
    TransientUnit,
    UnitExistsError,
    UnitStartError,
    connect,
)
from tests.support.systemd_user import ManagerHandle, UserManager

PY = sys.executable


def unit_name(tag: str = "t") -> str:
    return f"qc-test-{tag}-{uuid.uuid4().hex[:10]}.service"


def sleeper(name: str, seconds: int = 60, **kwargs: object) -> TransientUnit:
    return TransientUnit(name, ["/bin/sleep", str(seconds)], **kwargs)  # type: ignore[arg-type]


async def test_start_stop_round_trip(user_manager: ManagerHandle) -> None:
    name = unit_name("rt")
    async with connect(user_manager.bus_address) as manager:
        assert manager.state is Runstate.CONNECTED
        status = await manager.start(sleeper(name, description="round trip"))
        assert (status.active_state, status.sub_state) == ("active", "running")
        assert status.main_pid > 0
        assert status.active_enter_usec > 0
        assert await manager.started([name, unit_name("none")]) == {
            name: (status.active_enter_usec, 0)  # (NRestarts); a unit not loaded is left out
        }
        assert os.path.exists(f"/proc/{status.main_pid}")
        assert [u.name for u in await manager.list_units("qc-test-rt-")] == [name]
        assert user_manager.systemctl("show", "-p", "Description", name).stdout.strip() == (
            "Description=round trip"
        )
        stopped = await manager.stop(name)
        assert stopped.active_state == "inactive"
        assert (await manager.status(name)).load_state == "not-found"  # collected
        assert await manager.list_units("qc-test-rt-") == []
    assert manager.state is Runstate.CLOSED  # type: ignore[comparison-overlap]


async def test_started_of_many_units_in_one_batch(user_manager: ManagerHandle) -> None:
    """More Gets than may be in flight at once (MAX_CALLS_IN_FLIGHT) go in one batch."""
    names = [unit_name("many") for _ in range(3)]
    absent = [unit_name("absent") for _ in range(100)]
    async with connect(user_manager.bus_address) as manager:
        try:
            statuses = [await manager.start(sleeper(n)) for n in names]
            found = await manager.started([*absent[:50], *names, *absent[50:]])
            assert found == {s.name: (s.active_enter_usec, 0) for s in statuses}
        finally:
            for n in names:
                await manager.stop(n)


async def test_environment_working_directory_and_extra_properties(
    user_manager: ManagerHandle, tmp_path: Path
) -> None:
    name = unit_name("env")
    out = tmp_path / "out"
    unit = TransientUnit(
        name,
        ["/bin/sh", "-c", f'echo "$GREETING $(pwd)" > {out}; exec sleep 60'],
        environment={"GREETING": "hello world"},
        working_directory=str(tmp_path),
        extra=[ExtraProperty("RuntimeMaxUSec", "t", 300_000_000)],
    )
    async with connect(user_manager.bus_address) as manager:
        await manager.start(unit)
        with trio.fail_after(5):
            while not out.exists() or not out.read_text():
                await trio.sleep(0.02)
        assert out.read_text() == f"hello world {tmp_path}\n"
        shown = user_manager.systemctl("show", "-p", "RuntimeMaxUSec", name).stdout.strip()
        assert shown == "RuntimeMaxUSec=5min"
        status = await manager.status(name)  # what the unit records, read back
        assert status.environment == ("GREETING=hello world",)
        assert status.description == name  # none given: the name
        [row] = await manager.list_units(name)
        assert row.description == name
        await manager.stop(name)


async def test_fifty_concurrent_starts_are_all_active(user_manager: ManagerHandle) -> None:
    names = [unit_name("many") for _ in range(50)]
    statuses = {}
    async with connect(user_manager.bus_address) as manager:

        async def start(name: str) -> None:
            statuses[name] = await manager.start(sleeper(name))

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(start, name)
        assert all(s.active_state == "active" for s in statuses.values())
        assert len({s.main_pid for s in statuses.values()}) == 50
        listed = {u.name for u in await manager.list_units("qc-test-many-")}
        assert set(names) <= listed
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(manager.stop, name)
        assert not set(names) & {u.name for u in await manager.list_units("qc-test-many-")}


async def test_a_unit_that_exits_at_once_reports_status_and_journal(
    user_manager: ManagerHandle,
) -> None:
    name = unit_name("fail")
    unit = TransientUnit(name, ["/bin/sh", "-c", "echo 'cannot open disk.qcow2' >&2; exit 3"])
    async with connect(user_manager.bus_address, journal_dir=user_manager.journal_dir) as manager:
        with pytest.raises(UnitStartError) as caught:
            await manager.start(unit, settle=1.0)
        err = caught.value
        assert err.unit == name
        assert err.status.result == "exit-code"
        assert (err.status.exec_main_code, err.status.exec_main_status) == (1, 3)
        assert "cannot open disk.qcow2" in err.journal
        assert "exit status 3" in str(err)
        assert "cannot open disk.qcow2" in str(err)
        # inactive-or-failed: the failed unit does not block its name
        assert (await manager.status(name)).load_state == "not-found"


async def test_a_missing_binary_fails_the_start_job(user_manager: ManagerHandle) -> None:
    name = unit_name("nobin")
    async with connect(user_manager.bus_address) as manager:
        with pytest.raises(UnitStartError) as caught:
            await manager.start(TransientUnit(name, ["/nonexistent/qemu"]))
        assert caught.value.job_result == "failed"
        assert caught.value.status.result == "exit-code"
        assert caught.value.status.exec_main_status == 203  # systemd's EXIT_EXEC


async def test_a_name_in_use_is_a_typed_error(user_manager: ManagerHandle) -> None:
    name = unit_name("dup")
    async with connect(user_manager.bus_address) as manager:
        await manager.start(sleeper(name))
        with pytest.raises(UnitExistsError) as caught:
            await manager.start(sleeper(name))
        assert caught.value.unit == name
        await manager.stop(name)


async def test_a_unit_ignoring_sigterm_is_killed_at_timeout_stop(
    user_manager: ManagerHandle,
) -> None:
    name = unit_name("stubborn")
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)\n"
    unit = TransientUnit(name, [PY, "-c", script], timeout_stop=2, kill_mode="mixed")
    async with connect(user_manager.bus_address) as manager:
        await manager.start(unit)
        await trio.sleep(0.3)  # let Python install its handler
        started = trio.current_time()
        status = await manager.stop(name, timeout=30)
        elapsed = trio.current_time() - started
    assert 1.9 <= elapsed < 6
    assert status.result == "timeout"
    assert status.active_state in ("inactive", "failed")


async def test_watch_sees_active_deactivating_inactive(user_manager: ManagerHandle) -> None:
    name = unit_name("watch")
    # takes half a second to stop, so that "deactivating" is a state one can see
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), sys.exit(0)))\n"
        "time.sleep(300)\n"
    )
    async with connect(user_manager.bus_address) as manager:
        await manager.start(TransientUnit(name, [PY, "-c", script]))
        await trio.sleep(0.3)
        seen: list[str] = []
        async with manager.watch([name]) as changes, trio.open_nursery() as nursery:
            nursery.start_soon(manager.stop, name)
            with trio.fail_after(10):
                async for status in changes:
                    assert status.name == name
                    if not seen or seen[-1] != status.active_state:
                        seen.append(status.active_state)
                    if status.active_state == "inactive":
                        break
    assert seen == ["active", "deactivating", "inactive"]


async def test_watch_of_several_units_and_of_an_unknown_one(user_manager: ManagerHandle) -> None:
    a, b, ghost = unit_name("wa"), unit_name("wb"), unit_name("ghost")
    async with connect(user_manager.bus_address) as manager:
        await manager.start(sleeper(a))
        async with manager.watch([a, b, ghost]) as changes:
            initial = [await changes.__anext__() for _ in range(3)]
            assert [(s.name, s.active_state) for s in initial] == [
                (a, "active"),
                (b, "inactive"),
                (ghost, "inactive"),
            ]
            assert initial[2].load_state == "not-found"
            await manager.start(sleeper(b))
            with trio.fail_after(10):
                async for status in changes:
                    if status.name == b and status.active_state == "active":
                        break
        await manager.stop(a)
        await manager.stop(b)


async def test_a_watch_begun_while_its_unit_starts_never_misses_it_running(
    user_manager: ManagerHandle,
) -> None:
    """The watch's first reading races the start: a change that comes while it reads may be
    newer than what it read (the supervisor once saw "activating" for good)."""
    async with connect(user_manager.bus_address) as manager:
        for _ in range(3):
            names = [unit_name("race") for _ in range(20)]

            async def watch_until_active(name: str) -> None:
                async with manager.watch([name]) as changes:
                    with trio.fail_after(20):
                        async for status in changes:
                            if status.active_state == "active":
                                return

            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(manager.start, sleeper(name))
                    nursery.start_soon(watch_until_active, name)
            for name in names:
                await manager.stop(name)


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.005, 0.02, 0.3])
async def test_cancelling_a_pending_start_leaves_no_unit(
    user_manager: ManagerHandle, delay: float
) -> None:
    name = unit_name("cancel")
    async with connect(user_manager.bus_address) as manager:
        with trio.move_on_after(delay) as scope:
            await manager.start(sleeper(name), settle=5)
        assert scope.cancelled_caught
        with trio.fail_after(5):
            while (await manager.status(name)).load_state != "not-found":
                await trio.sleep(0.05)
        assert await manager.list_units(name) == []


async def test_kill_and_reset_failed(user_manager: ManagerHandle) -> None:
    name = unit_name("kill")
    async with connect(user_manager.bus_address) as manager:
        await manager.start(sleeper(name, collect_mode="inactive"))
        async with manager.watch([name]) as changes:
            await manager.kill(name, signal.SIGKILL)
            with trio.fail_after(10):
                async for status in changes:
                    if status.active_state == "failed":
                        break
        status = await manager.status(name)
        assert (status.result, status.exec_main_code, status.exec_main_status) == (
            "signal",
            2,
            signal.SIGKILL,
        )
        await manager.reset_failed(name)
        assert (await manager.status(name)).load_state == "not-found"


async def test_stopping_an_unknown_unit_is_not_an_error(user_manager: ManagerHandle) -> None:
    async with connect(user_manager.bus_address) as manager:
        status = await manager.stop(unit_name("nothing"))
        assert status.active_state == "inactive"
        with pytest.raises(NoSuchUnitError):
            await manager.kill(unit_name("nothing"))


async def test_calls_after_close_are_refused(user_manager: ManagerHandle) -> None:
    async with connect(user_manager.bus_address) as manager:
        pass
    with pytest.raises((ConnectionStateError, ManagerGoneError)):
        await manager.status("x.service")


async def test_no_bus_is_a_typed_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ManagerUnavailableError) as caught:
        async with connect(f"unix:path={tmp_path}/bus"):
            pass
    assert "no D-Bus socket" in str(caught.value)
    assert "loginctl enable-linger" in caught.value.hint


async def test_a_silent_socket_times_out(tmp_path: Path) -> None:
    """A socket that accepts and never speaks: connect gives up at its deadline."""
    path = tmp_path / "bus"
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(path))
    listener.listen()
    started = trio.current_time()
    with pytest.raises(ManagerUnavailableError, match=r"did not answer within 0\.5 s"):
        async with connect(f"unix:path={path}", timeout=0.5):
            pass
    assert trio.current_time() - started < 3
    listener.close()


@pytest.fixture
def doomed_manager() -> object:
    """A private user manager of its own, for a test that kills it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a private systemd user manager")
    state = Path(tempfile.mkdtemp(prefix="qc-doomed-"))
    manager = UserManager(state / "m", name=f"qc-doomed-{os.getpid()}", stop_grace=2)
    manager.start()
    yield manager
    manager.stop()
    shutil.rmtree(state, ignore_errors=True)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_the_manager_going_away_mid_call_is_a_typed_error(
    doomed_manager: UserManager, how: signal.Signals
) -> None:
    name = unit_name("gone")
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)\n"
    async with connect(doomed_manager.bus_address) as manager:
        await manager.start(TransientUnit(name, [PY, "-c", script], timeout_stop=60))
        await trio.sleep(0.3)
        assert doomed_manager.systemd_pid is not None
        pid = doomed_manager.systemd_pid

        async def kill_soon() -> None:
            await trio.sleep(0.5)
            os.kill(pid, how)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_soon)
            with pytest.raises(ManagerGoneError):
                await manager.stop(name, timeout=120)  # would wait 60 s for the kill
        assert trio.current_time() - started < 10
        assert manager.state is Runstate.CLOSED
        with pytest.raises(ManagerGoneError):
            await manager.status(name)
