"""Instances, dependencies and the one way user-given names become instances. Pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import load_project
from orchestrator.config.model import ComposeFile
from orchestrator.config.topology import dependants, dependencies, instances, select, select_one
from orchestrator.errors import UsageError

TEXT = """
name: demo
vms:
  db: {}
  app: {depends_on: {db: {condition: service_healthy}}}
  worker: {replicas: 2, depends_on: [app]}
  web: {depends_on: [app]}
"""


@pytest.fixture
def compose(tmp_path: Path) -> ComposeFile:
    (tmp_path / "qemu-compose.yaml").write_text(TEXT)
    return load_project(tmp_path / "qemu-compose.yaml").model


def test_selection_takes_dependencies(compose: ComposeFile) -> None:
    assert [i.name for i in select(compose, ["web"], project="demo", with_dependencies=True)] == [
        "db",
        "app",
        "web",
    ]
    assert [
        i.name for i in select(compose, ["worker-2"], project="demo", with_dependencies=True)
    ] == ["db", "app", "worker-2"]
    assert [
        i.name for i in select(compose, ["worker"], project="demo", with_dependencies=True)
    ] == ["db", "app", "worker-1", "worker-2"]
    with pytest.raises(UsageError, match="no VM named 'nope' in demo"):
        select(compose, ["nope"], project="demo", with_dependencies=True)


def test_dependencies_of_replicas(compose: ComposeFile) -> None:
    web = next(i for i in instances(compose) if i.name == "web")
    assert list(dependencies(compose, web)) == ["app"]
    app = next(i for i in instances(compose) if i.name == "app")
    assert dependencies(compose, app)["db"].condition == "service_healthy"


def test_names_without_dependencies_in_the_files_order(compose: ComposeFile) -> None:
    chosen = select(compose, ["web", "worker", "db", "web"], project="demo")
    assert [i.name for i in chosen] == ["db", "worker-1", "worker-2", "web"]
    assert select(compose, [], project="demo") == []
    with pytest.raises(UsageError) as caught:
        select(compose, ["nope", "db", "zz"], project="demo")
    assert str(caught.value) == (
        "no VM named 'nope', 'zz' in demo (VMs: db, app, worker-1, worker-2, web)"
    )


def test_exactly_one_instance(compose: ComposeFile) -> None:
    assert select_one(compose, "worker-2", project="demo").definition == "worker"
    assert select_one(compose, "db", project="demo").name == "db"
    with pytest.raises(UsageError, match="worker has replicas: name one of worker-1, worker-2"):
        select_one(compose, "worker", project="demo")
    with pytest.raises(UsageError, match="no VM named 'x' in demo"):
        select_one(compose, "x", project="demo")


def test_what_depends_on_each_instance(compose: ComposeFile) -> None:
    assert dependants(compose) == {"db": {"app"}, "app": {"worker-1", "worker-2", "web"}}
