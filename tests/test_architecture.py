"""The package boundaries of ARCHITECTURE.md, checked on the source.

qmp, systemd_dbus and netcfg are usable on their own: none imports orchestrator or another of
them. asyncio libraries are wrapped once, in the package that owns them: orchestrator sees
only trio-facing APIs. Inside orchestrator the arrows follow the pipeline: config (pure) <-
state, guest <- runtime, supervisor <- api <- cli; nothing points back up.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEAVES = ("qmp", "systemd_dbus", "netcfg")
ASYNCIO_LIBRARIES = ("asyncio", "trio_asyncio", "dbus_fast", "qemu", "asyncssh")
# the one orchestrator module allowed to bridge to asyncio: the SSH probe
ORCHESTRATOR_BRIDGES = {"orchestrator/guest/probe.py"}
# what each orchestrator subpackage must not import (of orchestrator's own, or at all)
NOT_IMPORTED = {
    "config": {"trio", "orchestrator.state", "orchestrator.guest", "orchestrator.runtime",
               "orchestrator.supervisor", "orchestrator.cli", "orchestrator.api"},
    "state": {"orchestrator.guest", "orchestrator.runtime", "orchestrator.supervisor",
              "orchestrator.cli", "orchestrator.api"},
    "guest": {"orchestrator.runtime", "orchestrator.supervisor", "orchestrator.cli",
              "orchestrator.api"},
    "supervisor": {"orchestrator.runtime", "orchestrator.cli", "orchestrator.api"},
    "runtime": {"orchestrator.cli", "orchestrator.api"},
    "api": {"orchestrator.cli"},
}  # fmt: skip
# the CLI sits on the public API: orchestrator.api and the names orchestrator exports
CLI_MAY_IMPORT = {"orchestrator", "orchestrator.api", "orchestrator.cli"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative imports resolved (``from . import x`` counts as
    the package and as ``package.x``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    package = parts[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            if not node.module:
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def within(module: str, prefixes: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


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


@pytest.mark.parametrize("package", sorted(NOT_IMPORTED))
def test_orchestrator_packages_follow_the_pipeline(package: str) -> None:
    files = list((REPO / "orchestrator" / package).rglob("*.py"))
    assert files, package
    for path in files:
        bad = {m for m in imported_modules(path) if within(m, NOT_IMPORTED[package])}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_the_cli_uses_only_the_public_api() -> None:
    for path in (REPO / "orchestrator" / "cli").rglob("*.py"):
        ours = {m for m in imported_modules(path) if top_level(m) == "orchestrator"}
        bad = {m for m in ours if m not in CLI_MAY_IMPORT and not within(m, {"orchestrator.cli"})}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def loaded_after(imports: str) -> set[str]:
    """The modules a fresh interpreter has loaded once it ran ``import <imports>``."""
    code = f"import sys, {imports}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_the_api_leaves_the_runtime_and_the_peers_alone() -> None:
    """The CLI's fast commands (config, watch, logs) import the API: it must stay light."""
    peers = ("trio", "systemd_dbus", "qmp", "netcfg", "dbus_fast", "asyncssh", "httpx")
    loaded = loaded_after("orchestrator.api")
    assert "orchestrator.api" in loaded
    found = {
        m
        for m in loaded
        if m.split(".")[0] in peers
        or (m.startswith("orchestrator.runtime.") and m != "orchestrator.runtime.options")
    }
    assert not found


def test_the_commands_that_only_read_import_no_planner_and_no_launch() -> None:
    """ps, ssh and inspect (runtime.query, runtime.inspection) are asked often, by scripts:
    they import neither up's planner, QEMU's command line, cloud-init's seed nor qemu.qmp
    (until a command opens a QMP session)."""
    unwanted = {"orchestrator.runtime.plan", "orchestrator.runtime.launch",
                "orchestrator.runtime.changes", "orchestrator.runtime.teardown",
                "orchestrator.guest.qemu_argv", "orchestrator.guest.cloudinit",
                "orchestrator.supervisor.lifecycle", "qmp.session"}  # fmt: skip
    loaded = loaded_after("orchestrator.runtime.query, orchestrator.runtime.inspection")
    assert "orchestrator.runtime.query" in loaded
    found = {m for m in loaded if m in unwanted or m.split(".")[0] in ("pycdlib", "qemu")}
    assert not found


def test_no_struct_takes_a_dataclass_field_for_its_default() -> None:
    """msgspec does not read ``dataclasses.field(default_factory=...)``: the default would be
    the Field object itself (UpOptions().plan was one, after a dataclass became a Struct)."""
    import dataclasses
    import importlib

    import msgspec

    checked = 0
    for package in ("orchestrator", *LEAVES):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "__main__.py":
                continue
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(
                ".__init__"
            )
            for value in vars(importlib.import_module(module)).values():
                if isinstance(value, type) and issubclass(value, msgspec.Struct):
                    checked += 1
                    for f in msgspec.structs.fields(value):
                        assert not isinstance(f.default, dataclasses.Field), (value, f.name)
    assert checked > 50


def test_the_checker_sees_imports() -> None:
    """The test above would pass on an empty walk: make sure it reads real imports."""
    found = imported_modules(REPO / "systemd_dbus" / "manager.py")
    assert {"trio_asyncio", "dbus_fast", "dbus_fast.aio"} <= found
    relative = imported_modules(REPO / "orchestrator" / "runtime" / "start.py")
    assert {"orchestrator.runtime.launch", "orchestrator.config.topology", "trio"} <= relative
