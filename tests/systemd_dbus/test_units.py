"""Transient unit specs become the right D-Bus properties; statuses merge changes."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from systemd_dbus import ActiveState, ExtraProperty, TransientUnit, UnitStatus


def test_minimal_properties() -> None:
    unit = TransientUnit("demo.service", ["/bin/sleep", "5"])
    assert unit.properties() == [
        ("Description", Variant("s", "demo.service")),
        ("ExecStart", Variant("a(sasb)", [["/bin/sleep", ["/bin/sleep", "5"], False]])),
        ("Type", Variant("s", "exec")),
        ("CollectMode", Variant("s", "inactive-or-failed")),
    ]


def test_every_property() -> None:
    unit = TransientUnit(
        "vm.service",
        ["/usr/bin/qemu-system-x86_64", "-name", "web,debug-threads=on"],
        description="VM web",
        environment={"A": "1", "B": "two words"},
        working_directory="/srv",
        exec_stop=["/usr/bin/qemu-compose", "stop-vm", "web"],
        kill_mode="mixed",
        timeout_stop=90,
        collect_mode="inactive",
        restart="on-failure",
        restart_sec=2.5,
        type="simple",
        slice="qemu-compose.slice",
        extra=[ExtraProperty("MemoryMax", "t", 1 << 30)],
    )
    assert dict(unit.properties()) == {
        "Description": Variant("s", "VM web"),
        "ExecStart": Variant(
            "a(sasb)",
            [
                [
                    "/usr/bin/qemu-system-x86_64",
                    ["/usr/bin/qemu-system-x86_64", "-name", "web,debug-threads=on"],
                    False,
                ]
            ],
        ),
        "Type": Variant("s", "simple"),
        "CollectMode": Variant("s", "inactive"),
        "Environment": Variant("as", ["A=1", "B=two words"]),
        "WorkingDirectory": Variant("s", "/srv"),
        "ExecStop": Variant(
            "a(sasb)",
            [["/usr/bin/qemu-compose", ["/usr/bin/qemu-compose", "stop-vm", "web"], False]],
        ),
        "KillMode": Variant("s", "mixed"),
        "TimeoutStopUSec": Variant("t", 90_000_000),
        "Restart": Variant("s", "on-failure"),
        "RestartUSec": Variant("t", 2_500_000),
        "Slice": Variant("s", "qemu-compose.slice"),
        "MemoryMax": Variant("t", 1 << 30),
    }


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("bad name.service", ["/bin/true"], "unit name"),
        ("demo.socket", ["/bin/true"], "unit name"),
        ("demo.service", [], "argv"),
        ("demo.service", ["true"], "absolute path"),
    ],
)
def test_invalid_specs(name: str, argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TransientUnit(name, argv)


def test_environment_names_are_checked() -> None:
    with pytest.raises(ValueError, match="environment"):
        TransientUnit("d.service", ["/bin/true"], environment={"A=B": "x"})


def test_status_updates_and_exit_description() -> None:
    status = UnitStatus("x.service").updated({"ActiveState": "failed", "Result": "exit-code"})
    status = status.updated({"ExecMainCode": 1, "ExecMainStatus": 3, "Unrelated": 1})
    assert (status.active_state, status.has_stopped, status.is_active) == ("failed", True, False)
    assert status.active_state is ActiveState.FAILED
    assert status.is_failed
    assert status.describe_exit() == "result exit-code, exit status 3"
    assert (
        UnitStatus("y", exec_main_code=2, exec_main_status=9)
        .describe_exit()
        .endswith("killed by signal 9")
    )


def test_one_definition_of_running_and_stopped() -> None:
    running = {s for s in ActiveState if s.running}
    stopped = {s for s in ActiveState if s.stopped}
    assert running == {"active", "activating", "reloading", "refreshing"}
    assert stopped == {"inactive", "failed"}
    assert not running & stopped
    assert not ActiveState.DEACTIVATING.running
    assert not ActiveState.DEACTIVATING.stopped
    # a state a newer systemd may send is neither, not an error in a signal handler
    status = UnitStatus("z.service").updated({"ActiveState": "hibernating", "LoadState": "loaded"})
    assert status.active_state is ActiveState.UNKNOWN
    assert not status.active_state.running
    assert not status.has_stopped
    assert not UnitStatus("gone.service").exists


def test_journal_argv_matches_the_unit_and_its_process() -> None:
    from pathlib import Path

    from systemd_dbus import journal_argv

    assert journal_argv("vm.service", user=True, lines=5, pid=42) == [
        "journalctl", "--no-pager", "--quiet", "--output=cat", "--lines=5", "--user",
        "_SYSTEMD_USER_UNIT=vm.service", "+", "USER_UNIT=vm.service", "+", "_PID=42",
    ]  # fmt: skip
    assert journal_argv("vm.service", user=False, lines=5, directory=Path("/j"), follow=True) == [
        "journalctl", "--no-pager", "--quiet", "--output=cat", "--lines=5", "--directory=/j",
        "--follow", "_SYSTEMD_UNIT=vm.service", "+", "UNIT=vm.service",
    ]  # fmt: skip
