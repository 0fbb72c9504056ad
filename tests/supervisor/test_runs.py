"""What the supervisor keeps of each run (run.json), fed unit states and QMP events."""

from __future__ import annotations

from pathlib import Path

from orchestrator.state.paths import ProjectPaths
from orchestrator.supervisor.runs import RunKeeper, RunRecord, read_run
from qmp.events import Resume, SessionClosed, SessionOpened, Shutdown, Stop
from systemd_dbus import ActiveState, UnitStatus

T = 1_700_000_000_000_000  # µs


def active(since: int) -> UnitStatus:
    return UnitStatus("u.service", "loaded", ActiveState.ACTIVE, "running", active_enter_usec=since)


def test_a_run_is_kept_from_its_start_to_its_end(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path, "p")
    paths.vm("web").directory.mkdir(parents=True)
    keeper = RunKeeper(paths)
    keeper.guest("web", SessionOpened(status="running"))  # QMP before the unit's first word
    keeper.unit("web", active(T))
    assert read_run(paths.vm("web")) == RunRecord(since=T, guest="running")
    keeper.guest("web", Stop(timestamp=1.0))
    assert read_run(paths.vm("web")).guest == "paused"  # type: ignore[union-attr]
    keeper.guest("web", Resume(timestamp=2.0))
    keeper.restarted("web")
    keeper.restarted("web")
    keeper.guest("web", Shutdown(timestamp=3.0, guest=True, reason="guest-shutdown"))
    keeper.guest("web", Stop(timestamp=3.1))  # follows a shutdown: not a pause
    record = read_run(paths.vm("web"))
    assert record is not None
    assert (record.guest, record.restarts) == ("shutdown", 2)
    keeper.guest("web", SessionClosed("QEMU ended"))
    ended = UnitStatus(
        "u.service", "loaded", ActiveState.FAILED, "failed", result="signal",
        exec_main_code=2, exec_main_status=9, active_enter_usec=T, inactive_enter_usec=T + 5_000_000,
    )  # fmt: skip
    keeper.unit("web", ended)
    record = read_run(paths.vm("web"))
    assert record is not None
    assert (record.ended_at, record.result, record.exit_code) == (T / 1e6 + 5, "signal", 137)
    assert record.restarts == 2  # of that run


def test_a_new_supervisor_goes_on_with_the_record_of_the_same_run(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path, "p")
    paths.vm("db").directory.mkdir(parents=True)
    first = RunKeeper(paths)
    first.unit("db", active(T))
    first.restarted("db")
    again = RunKeeper(paths)
    again.unit("db", active(T))
    again.restarted("db")
    assert read_run(paths.vm("db")).restarts == 2  # type: ignore[union-attr]
    again.unit("db", active(T + 1))  # a new QEMU: counts afresh
    assert read_run(paths.vm("db")) == RunRecord(since=T + 1)
