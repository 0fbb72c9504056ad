"""The live system is the truth, not state.json (#13, items 1 and 3), with the real CLI, a
real user manager, real QEMUs (no-disk VMs, and one whose disk is a small blank image) and,
as root, a bridge network with its dnsmasq.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import compose, ps_rows
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]
BRIDGES = os.geteuid() == 0  # root: the bridge network and its dnsmasq are part of it
PATTERN = "0xab"


def qemu_io(disk: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(disk)],
                          capture_output=True, text=True, check=False)  # fmt: skip


def units(manager: ManagerHandle, pattern: str) -> list[str]:
    out = manager.systemctl("list-units", "--all", "--plain", "--no-legend", pattern).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def links_of(project: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return [line for line in out.splitlines() if f"alias qemu-compose {project}/" in line]


def write_project(directory: Path, name: str) -> None:
    base = directory / "blank.raw"
    base.write_bytes(b"\0" * (1 << 20))
    network = "\nnetworks: {lan: {}}" if BRIDGES else ""
    on_lan = ", networks: [lan]" if BRIDGES else ""
    (directory / "qemu-compose.yaml").write_text(
        f"name: {name}{network}\nvms:\n"
        f"  a: {{image: {base}, memory: 64, cpu: 1, healthcheck: {{disable: true}},"
        " stop_grace_period: 1s}\n"  # firmware that never powers off: do not wait long
        f"  b: {{memory: 64, cpu: 1, healthcheck: {{disable: true}}{on_lan}}}\n"
    )


def dry_run(project: Path, manager: ManagerHandle) -> dict[str, list[str]]:
    out = compose("up", "--dry-run", cwd=project, manager=manager)
    assert out.returncode == 0, out.stderr
    return {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()}


@pytest.fixture
def project(tmp_path: Path, user_manager: ManagerHandle) -> Any:
    yield tmp_path
    compose("destroy", "--progress", "quiet", cwd=tmp_path, manager=user_manager, timeout=300)


@pytest.mark.parametrize("loss", ["emptied", "corrupted", "deleted"])
def test_a_lost_state_file_loses_no_disk_and_leaks_nothing(
    project: Path, user_manager: ManagerHandle, loss: str
) -> None:
    write_project(project, f"lost-{loss}")
    up = compose("up", "-d", "--progress", "quiet", cwd=project, manager=user_manager)
    assert up.returncode == 0, up.stderr
    disk = project / ".qemu-compose" / "a" / "disk.qcow2"
    assert (
        compose("stop", "a", "--progress", "quiet", cwd=project, manager=user_manager).returncode
        == 0
    )
    assert qemu_io(disk, f"write -P {PATTERN} 0 64k").returncode == 0  # what a user installed
    again = compose("up", "-d", "a", "--progress", "quiet", cwd=project, manager=user_manager)
    assert again.returncode == 0, again.stderr

    state = project / ".qemu-compose" / "state.json"
    if loss == "deleted":
        state.unlink()
    else:
        state.write_text("{}" if loss == "emptied" else "{not json")
    rows = ps_rows(project, user_manager)  # read-only, and it rebuilds what it shows
    assert {rows["a"]["state"], rows["b"]["state"]} == {"running"}
    assert rows["a"]["ssh_port"] is not None
    plan = dry_run(project, user_manager)
    assert plan["a"][0] == plan["b"][0] == "keep", plan  # adopted, never recreated
    kept = compose("up", "-d", "--progress", "json", cwd=project, manager=user_manager)
    assert kept.returncode == 0, kept.stderr
    assert '"recreat' not in kept.stdout
    assert compose("stop", "--progress", "quiet", cwd=project, manager=user_manager).returncode == 0
    assert qemu_io(disk, f"read -P {PATTERN} 0 64k").returncode == 0  # the disk is the same

    state.unlink()  # lost while stopped: the instance directories still say what they are
    plan = dry_run(project, user_manager)
    assert plan["a"][0] == "start", plan
    gone = compose("destroy", "--progress", "quiet", cwd=project, manager=user_manager)
    assert gone.returncode == 0, gone.stderr
    assert units(user_manager, f"qemu-compose-*lost*{loss}*") == []
    if BRIDGES:  # found by their recorded owner, not by a state file that lost them
        assert links_of(f"lost-{loss}") == []
    assert not disk.exists()


def one_vm(directory: Path, name: str, vm: str) -> Path:
    directory.mkdir()
    (directory / "qemu-compose.yaml").write_text(
        f"name: {name}\nvms:\n  {vm}: {{memory: 64, cpu: 1, healthcheck: {{disable: true}}}}\n"
    )
    return directory


@pytest.fixture
def two(tmp_path: Path, user_manager: ManagerHandle) -> Iterator[tuple[Path, Path]]:
    """Two project directories, both destroyed after the test."""
    first, second = tmp_path / "first", tmp_path / "second"
    yield first, second
    for directory in (first, second):
        if directory.exists():
            compose("destroy", "--progress", "quiet", cwd=directory, manager=user_manager)


def test_two_projects_of_one_name_do_not_take_each_other_over(
    two: tuple[Path, Path], user_manager: ManagerHandle
) -> None:
    first, second = one_vm(two[0], "same", "web"), one_vm(two[1], "same", "web")
    up = compose("up", "-d", "--progress", "quiet", cwd=first, manager=user_manager)
    assert up.returncode == 0, up.stderr
    refused = compose("up", "-d", "--progress", "quiet", cwd=second, manager=user_manager)
    assert refused.returncode == 1
    assert f"project 'same' already runs from {first} (its VMs: web)" in refused.stderr
    assert "-p" in refused.stderr
    assert ps_rows(second, user_manager)["web"]["state"] == "not-created"
    for command in ("stop", "destroy"):  # nothing of the first is touched
        refused = compose(command, "--progress", "json", cwd=second, manager=user_manager)
        assert refused.returncode == 1, (command, refused.stderr)
        assert f"project 'same' already runs from {first}" in refused.stderr
    assert ps_rows(first, user_manager)["web"]["state"] == "running"
    assert units(user_manager, "qemu-compose-same-supervisor.service") == [
        "qemu-compose-same-supervisor.service"
    ]
    claims = json.loads((first / ".xdg-state/qemu-compose/claims.json").read_text())
    assert "same/web" in claims["ports"]
    info = json.loads(
        compose("inspect", "web", "--format", "json", cwd=first, manager=user_manager).stdout
    )
    assert info["unit"]["active_state"] == "active"


def test_unit_names_as_the_spec_has_them_and_a_colliding_one_is_refused(
    two: tuple[Path, Path], user_manager: ManagerHandle
) -> None:
    """a-b/c and a/b-c are both qemu-compose-a-b-c.service: the second is refused, with
    whose the unit is; neither takes the other's VM."""
    first, second = one_vm(two[0], "a-b", "c"), one_vm(two[1], "a", "b-c")
    up = compose("up", "-d", "--progress", "quiet", cwd=first, manager=user_manager)
    assert up.returncode == 0, up.stderr
    assert ps_rows(first, user_manager)["c"]["unit"] == "qemu-compose-a-b-c.service"
    refused = compose("up", "-d", "--progress", "plain", cwd=second, manager=user_manager)
    assert refused.returncode == 1
    assert "qemu-compose-a-b-c.service is taken by vm c of project a-b" in refused.stderr
    assert ps_rows(first, user_manager)["c"]["state"] == "running"


def test_a_unit_of_an_earlier_version_is_still_found_stopped_and_destroyed(
    project: Path, user_manager: ManagerHandle
) -> None:
    """Earlier versions escaped unit names (old\\x2dproj) and recorded no directory: such a
    VM is still the project's, by its Description."""
    (project / "qemu-compose.yaml").write_text(
        "name: old-proj\nvms:\n  web: {memory: 64, cpu: 1, healthcheck: {disable: true}}\n"
    )
    legacy = r"qemu-compose-old\x2dproj-web.service"
    for directory in (project / ".qemu-compose", project / ".qemu-compose" / "web"):
        directory.mkdir(mode=0o700)  # what the earlier version made: the VM is known here
    run = subprocess.run(
        ["systemd-run", "--user", f"--unit={legacy}", "--description=qemu-compose VM old-proj/web",
         "sleep", "600"],
        env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": user_manager.bus_address,
             **({"XDG_RUNTIME_DIR": str(user_manager.private.runtime_dir)}
                if user_manager.private else {})},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr  # what an earlier version left running
    try:
        elsewhere = project / "elsewhere"  # the same name, but it never knew that VM
        elsewhere.mkdir()
        (elsewhere / "qemu-compose.yaml").write_text((project / "qemu-compose.yaml").read_text())
        assert ps_rows(elsewhere, user_manager)["web"]["state"] == "not-created"
        refused = compose("stop", "--progress", "quiet", cwd=elsewhere, manager=user_manager)
        assert refused.returncode == 1
        assert "already runs from elsewhere (started by an earlier" in refused.stderr
        rows = ps_rows(project, user_manager)
        assert (rows["web"]["state"], rows["web"]["unit"]) == ("running", legacy)
        assert dry_run(project, user_manager)["web"][0] == "keep"
        stopped = compose("stop", "--progress", "quiet", cwd=project, manager=user_manager)
        assert stopped.returncode == 0, stopped.stderr
        assert units(user_manager, "qemu-compose-old*") == []
    finally:
        user_manager.systemctl("stop", legacy)


def main_pid(manager: ManagerHandle, unit: str) -> int:
    return int(manager.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip())


def test_a_changed_vm_is_restarted_on_its_disk_and_its_disk_replaced_only_when_asked(
    project: Path, user_manager: ManagerHandle
) -> None:
    """#13, item 2: more memory and a larger disk restart the VM on its disk, grown in place;
    a new image is said, the VM left as it is, until --force-recreate."""
    for name in ("blank.raw", "other.raw"):
        (project / name).write_bytes(b"\0" * (1 << 20))
    vm = "{image: %s, memory: %d, cpu: 1, healthcheck: {disable: true}, stop_grace_period: 1s%s}"
    config = project / "qemu-compose.yaml"
    config.write_text(f"name: shaped\nvms:\n  a: {vm % (project / 'blank.raw', 64, '')}\n")
    quiet = ("--progress", "quiet")
    assert compose("up", "-d", *quiet, cwd=project, manager=user_manager).returncode == 0
    assert compose("stop", *quiet, cwd=project, manager=user_manager).returncode == 0
    disk = project / ".qemu-compose" / "a" / "disk.qcow2"
    assert qemu_io(disk, f"write -P {PATTERN} 0 64k").returncode == 0
    assert compose("up", "-d", *quiet, cwd=project, manager=user_manager).returncode == 0
    unit, inode = "qemu-compose-shaped-a.service", disk.stat().st_ino
    first = main_pid(user_manager, unit)

    config.write_text(
        f"name: shaped\nvms:\n  a: {vm % (project / 'blank.raw', 96, ', disk: 2M')}\n"
    )
    assert dry_run(project, user_manager)["a"] == [
        "restart", "disk", "none", "->", "2M", "(grown", "in", "place),", "memory", "64", "->", "96",
    ]  # fmt: skip
    up = compose("up", "-d", *quiet, cwd=project, manager=user_manager)
    assert up.returncode == 0, up.stderr
    restarted = main_pid(user_manager, unit)
    assert restarted not in (0, first)
    argv = Path(f"/proc/{restarted}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-m") + 1].startswith(b"96")
    assert disk.stat().st_ino == inode  # the same disk, grown
    assert dry_run(project, user_manager)["a"] == ["keep", "running"]

    config.write_text(
        f"name: shaped\nvms:\n  a: {vm % (project / 'other.raw', 96, ', disk: 2M')}\n"
    )
    said = " ".join(dry_run(project, user_manager)["a"])
    assert said.startswith("keep running; needs --force-recreate (its disk will be replaced):")
    kept = compose("up", "-d", "--progress", "json", cwd=project, manager=user_manager)
    assert kept.returncode == 0, kept.stderr
    assert main_pid(user_manager, unit) == restarted  # left as it is
    assert "needs --force-recreate" in " ".join(dry_run(project, user_manager)["a"])  # still said
    assert compose("stop", *quiet, cwd=project, manager=user_manager).returncode == 0
    assert qemu_io(disk, f"read -P {PATTERN} 0 64k").returncode == 0  # nothing lost
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert info["virtual-size"] == 2 << 20

    forced = compose("up", "-d", "--force-recreate", "a", *quiet, cwd=project, manager=user_manager)
    assert forced.returncode == 0, forced.stderr
    assert dry_run(project, user_manager)["a"] == ["keep", "running"]
    assert compose("stop", *quiet, cwd=project, manager=user_manager).returncode == 0
    assert qemu_io(disk, "read 0 64k").returncode == 0  # readable: the VM let go of it
    assert qemu_io(disk, f"read -P {PATTERN} 0 64k").returncode != 0  # replaced, as asked
