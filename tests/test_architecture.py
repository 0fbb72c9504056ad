"""The package boundaries of ARCHITECTURE.md, checked on the source.

qmp, systemd_dbus and netcfg are usable on their own: none imports orchestrator or another of
them. asyncio libraries are wrapped once, in the package that owns them: orchestrator sees
only trio-facing APIs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEAVES = ("qmp", "systemd_dbus", "netcfg")
ASYNCIO_LIBRARIES = ("asyncio", "trio_asyncio", "dbus_fast", "qemu", "asyncssh")
# the one orchestrator module allowed to bridge to asyncio: the SSH probe
ORCHESTRATOR_BRIDGES = {"orchestrator/guest/probe.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def top_level(module: str) -> str:
    return module.split(".", 1)[0]


@pytest.mark.parametrize("package", LEAVES)
def test_leaf_packages_import_no_other_project_package(package: str) -> None:
    forbidden = {"orchestrator", *LEAVES} - {package}
    for path in (REPO / package).rglob("*.py"):
        bad = {m for m in imported_modules(path) if top_level(m) in forbidden}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_orchestrator_sees_no_asyncio_library() -> None:
    for path in (REPO / "orchestrator").rglob("*.py"):
        if str(path.relative_to(REPO)) in ORCHESTRATOR_BRIDGES:
            continue
        bad = {m for m in imported_modules(path) if top_level(m) in ASYNCIO_LIBRARIES}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_the_checker_sees_imports() -> None:
    """The test above would pass on an empty walk: make sure it reads real imports."""
    found = imported_modules(REPO / "systemd_dbus" / "manager.py")
    assert {"trio_asyncio", "dbus_fast", "dbus_fast.aio"} <= found
