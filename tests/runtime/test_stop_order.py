"""Stop order, as docker compose's: dependants first, the independent at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from orchestrator import load_project
from orchestrator.config.model import ComposeFile
from orchestrator.errors import PeerError, SeveralErrors
from orchestrator.runtime.teardown import dependants_first

TEXT = """
vms:
  db: {}
  app: {depends_on: [db]}
  web: {replicas: 2, depends_on: [app]}
  lone: {}
"""


@pytest.fixture
def compose(tmp_path: Path) -> ComposeFile:
    (tmp_path / "qemu-compose.yaml").write_text(TEXT)
    return load_project(tmp_path / "qemu-compose.yaml", environ={}).model


def _run(compose: ComposeFile, names: list[str], took: dict[str, float]) -> list[tuple[str, str]]:
    """Each action takes ``took[name]`` seconds of a fake clock; the begin and end marks."""
    marks: list[tuple[str, str]] = []

    async def action(name: str) -> None:
        marks.append(("begin", name))
        await trio.sleep(took.get(name, 1))
        marks.append(("end", name))

    trio.run(
        dependants_first, compose, names, action, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    return marks


def test_dependants_stop_before_what_they_need(compose: ComposeFile) -> None:
    marks = _run(compose, ["db", "app", "web-1", "web-2", "lone"], {"web-2": 3})
    order = list(marks)
    begun = [name for kind, name in order if kind == "begin"]
    assert set(begun[:3]) == {"web-1", "web-2", "lone"}  # nothing depends on them: at once
    assert order.index(("end", "web-2")) < order.index(("begin", "app"))  # the slower one too
    assert order.index(("end", "app")) < order.index(("begin", "db"))


def test_only_the_named_are_waited_for(compose: ComposeFile) -> None:
    """`stop db` stops db alone: its dependants are not stopped, nor waited for; one that
    depends on it through a VM not named is waited for."""
    assert _run(compose, ["db"], {}) == [("begin", "db"), ("end", "db")]
    marks = _run(compose, ["db", "web-1", "lone"], {})
    assert set(marks[:4]) == {("begin", "web-1"), ("begin", "lone"), ("end", "web-1"),
                              ("end", "lone")}  # fmt: skip
    assert marks[4:] == [("begin", "db"), ("end", "db")]


def test_a_failure_does_not_stop_the_others(compose: ComposeFile) -> None:
    """app fails to stop: db, which it needs, is stopped all the same, and lone too; the
    error comes once all have ended."""
    ended: list[str] = []

    async def action(name: str) -> None:
        await trio.sleep(1)
        if name == "app":
            raise PeerError("app would not stop")
        ended.append(name)

    with pytest.raises(PeerError, match="app would not stop"):
        trio.run(dependants_first, compose, ["db", "app", "lone"], action)
    assert sorted(ended) == ["db", "lone"]
    with pytest.raises(SeveralErrors):
        trio.run(dependants_first, compose, ["db", "app", "web-1"], _failing)


async def _failing(name: str) -> None:
    raise PeerError(f"{name} would not stop")
