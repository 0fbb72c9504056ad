"""The plan of `up`, as text (golden), without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import load_project
from orchestrator.config.model import ComposeFile
from orchestrator.config.topology import instances
from orchestrator.runtime.plan import Observed, config_hash, plan, render_plan
from systemd_dbus import ActiveState

TEXT = """
name: demo
networks: {lan: {}}
volumes: {data: {}}
vms:
  db:
    volumes: [data:/data]
    networks: [lan]
  app:
    depends_on: {db: {condition: service_healthy}}
  worker:
    replicas: 2
    depends_on: [app]
  web:
    depends_on: [app]
"""


@pytest.fixture
def compose(tmp_path: Path) -> ComposeFile:
    (tmp_path / "qemu-compose.yaml").write_text(TEXT)
    return load_project(tmp_path / "qemu-compose.yaml", environ={}).model


def hashes(compose: ComposeFile) -> dict[str, str]:
    return {i.name: config_hash(compose, i) for i in instances(compose)}


def test_a_new_project_creates_everything(compose: ComposeFile) -> None:
    assert render_plan(plan(compose, {})) == (
        "db        create    not created yet\n"
        "app       create    not created yet\n"
        "worker-1  create    not created yet\n"
        "worker-2  create    not created yet\n"
        "web       create    not created yet\n"
    )


def test_a_running_unchanged_project_plans_nothing(compose: ComposeFile) -> None:
    observed = {n: Observed(ActiveState.ACTIVE, True, h) for n, h in hashes(compose).items()}
    actions = plan(compose, observed)
    assert not any(a.changes_something for a in actions)
    assert {a.kind.value for a in actions} == {"keep"}


def test_changed_stopped_orphaned(compose: ComposeFile, tmp_path: Path) -> None:
    observed = {n: Observed(ActiveState.ACTIVE, True, h) for n, h in hashes(compose).items()}
    observed["db"] = Observed(ActiveState.INACTIVE, True, observed["db"].config_hash)
    observed["web"] = Observed(ActiveState.ACTIVE, True, "0ld")
    observed["old-vm"] = Observed(ActiveState.ACTIVE, True, "x")
    assert render_plan(plan(compose, observed)) == (
        "db        start     stopped (inactive)\n"
        "app       keep      running\n"
        "worker-1  keep      running\n"
        "worker-2  keep      running\n"
        "web       recreate  configuration changed\n"
        "old-vm    orphan    not in the compose file; --remove-orphans removes it\n"
    )
    assert plan(compose, observed, no_recreate=True)[4].kind.value == "keep"
    assert plan(compose, observed, remove_orphans=True)[-1].kind.value == "remove"
    assert {a.kind.value for a in plan(compose, observed, force_recreate=True)[:5]} == {"recreate"}


def test_the_hash_follows_what_shapes_a_vm(tmp_path: Path) -> None:
    def project(text: str) -> ComposeFile:
        (tmp_path / "qemu-compose.yaml").write_text(text)
        return load_project(tmp_path / "qemu-compose.yaml", environ={}).model

    base = project(TEXT)
    bigger = project(TEXT.replace("volumes: {data: {}}", "volumes: {data: {size: 20G}}"))
    before, after = hashes(base), hashes(bigger)
    assert before["db"] != after["db"]  # its volume changed
    assert before["app"] == after["app"]  # untouched
    assert before["worker-1"] != before["worker-2"]
