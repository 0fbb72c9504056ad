"""The Python API drives a project as the CLI does, with typed data in and out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import trio

from orchestrator import api
from orchestrator.api import ActionKind, Event
from tests.support.systemd_user import ManagerHandle

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")


async def test_up_ps_stop_destroy_from_python(
    tmp_path: Path, user_manager: ManagerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / ".xdg-state"))
    if user_manager.private is not None:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(user_manager.private.runtime_dir))
    (tmp_path / "qemu-compose.yaml").write_text(
        "name: api\nvms:\n"
        "  a: {memory: 64, healthcheck: {disable: true}, ports: ['80', '443', '8080:8080']}\n"
        "  b: {memory: 64, healthcheck: {disable: true}, depends_on: [a]}\n"
    )
    project = api.load(tmp_path / "qemu-compose.yaml", environ={})
    bus = user_manager.bus_address
    planned = await api.plan(project, bus=bus)
    assert [a.kind for a in planned.actions] == [ActionKind.CREATE] * 2
    assert planned.supervisor == "start"
    assert [vm for vm, _, _ in planned.ports] == ["a", "b"]
    seen: list[Event] = []
    try:
        result = await api.up(project, bus=bus, on_event=seen.append)
        assert sorted(result.ready) == ["a", "b"]
        assert result.failed == {}
        assert {(e.vm, e.stage) for e in seen if e.status == "done"} >= {
            ("a", "unit"),
            ("b", "running"),
        }
        claims = json.loads((tmp_path / ".xdg-state/qemu-compose/claims.json").read_text())
        ports = claims["ports"]["api/a"]  # ssh, two chosen for 80 and 443, and 8080 as asked
        assert len(ports) == len(set(ports)) == 4
        assert ports[-1] == 8080
        rows = {row.name: row for row in await api.ps(project, bus=bus)}
        assert rows["a"].state == rows["b"].state == "running"
        assert rows["a"].unit == "qemu-compose-api-a.service"
        async with api.events(project, "a", since="all") as stream:
            with trio.fail_after(10):
                async for record in stream:
                    assert record.vm in ("a", "")  # b's are left out
                    if record.event == "READY":
                        assert record.source == "up"
                        break
        async with api.events(project, "b") as stream:  # from now on
            started = trio.current_time()
            assert await api.stop(project, "b", bus=bus) == ["b"]
            with trio.fail_after(10):  # the supervisor's own records of b may come first:
                async for record in stream:  # it connects to a new VM when it sees it
                    assert record.vm in ("b", "")
                    if record.event == "STOP":
                        break
        assert trio.current_time() - started < 15  # firmware only: no grace period to wait out
        assert (await api.ps(project, "b", bus=bus))[0].state == "exited"
    finally:
        await api.destroy(project, bus=bus)
    assert {row.state for row in await api.ps(project, bus=bus)} == {"not-created"}
    assert os.path.isdir(tmp_path / ".qemu-compose")
