"""What saving and restoring decide without I/O: the hardware a state needs, QEMU's version
as the binary and QMP tell it, VMs that start from a state waiting for each other."""

from __future__ import annotations

import trio
import trio.testing

from orchestrator.runtime.snapshots.common import _version_text, hardware_changes, version_of
from orchestrator.runtime.start import Rendezvous

SAVED = {"cpu": "1", "memory": "128", "machine": "q35", "networks": "{}", "ports": "[]",
         "environment": "{}", "healthcheck": "none"}  # fmt: skip


def test_only_hardware_changes_refuse_a_restore() -> None:
    assert hardware_changes(SAVED, SAVED) == []
    softer = {**SAVED, "ports": '["8080:80"]', "environment": '{"A":"1"}', "healthcheck": "x"}
    assert hardware_changes(SAVED, softer) == []
    harder = {**SAVED, "memory": "256", "cpu": "2"}
    assert [str(c) for c in hardware_changes(SAVED, harder)] == ["cpu 1 -> 2", "memory 128 -> 256"]


def test_a_field_the_snapshot_did_not_record_is_no_reason_to_refuse() -> None:
    older = {k: v for k, v in SAVED.items() if k != "machine"}
    assert hardware_changes(older, SAVED) == []


def test_the_binary_and_qmp_tell_the_same_version() -> None:
    line = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    answer = {
        "qemu": {"major": 7, "minor": 2, "micro": 22},
        "package": "Debian 1:7.2+dfsg-7+deb12u18+b3",
    }
    assert _version_text(line) == version_of(answer) == "7.2.22 Debian 1:7.2+dfsg-7+deb12u18+b3"
    assert _version_text("QEMU emulator version 8.0.0") == version_of(
        {"qemu": {"major": 8, "minor": 0, "micro": 0}, "package": ""}
    )


async def test_vms_loaded_from_a_state_resume_together_and_a_failure_holds_nobody_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    together = Rendezvous({"a", "b", "c"})
    resumed: list[tuple[str, float]] = []

    async def vm(name: str, loads_in: float, fails: bool = False) -> None:
        await trio.sleep(loads_in)
        if fails:
            together.leave(name)
            return
        await together.arrive(name)
        resumed.append((name, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(vm, "a", 1.0)
        nursery.start_soon(vm, "b", 3.0)
        nursery.start_soon(vm, "c", 2.0, True)
    assert sorted(n for n, _ in resumed) == ["a", "b"]
    assert {t for _, t in resumed} == {3.0}  # a waited for b; c's failure did not hold it


async def test_nobody_to_wait_for() -> None:
    with trio.fail_after(1):
        await Rendezvous(set()).arrive("x")
