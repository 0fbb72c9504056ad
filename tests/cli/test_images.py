"""pull, image ls / rm / prune through the real CLI, against a real HTTP server and qemu-img."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from orchestrator.guest.disks import create_overlay
from orchestrator.guest.images import backing_file, cache_name, record_use
from tests.support.cli import EXE
from tests.support.http import Files


def cli(*args: str, cwd: Path, data: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_COMPOSE")}
    env["XDG_DATA_HOME"] = str(data)
    return subprocess.run(
        [EXE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def images(cwd: Path, data: Path) -> dict[str, dict[str, Any]]:
    result = cli("image", "ls", "--format", "json", cwd=cwd, data=data)
    assert result.returncode == 0, result.stderr
    return {row["source"]: row for row in json.loads(result.stdout)}


def test_pull_ls_rm(server: tuple[str, type[Files]], tmp_path: Path) -> None:
    base, files = server
    files.content = b"QFI\xfb" + os.urandom(2 << 20)  # looks like qcow2 to `image ls`
    data = tmp_path / "data"
    one, two = f"{base}/a/one.qcow2", f"{base}/b/two.img"
    result = cli("pull", one, two, "--progress", "plain", cwd=tmp_path, data=data)
    assert result.returncode == 0, result.stderr
    assert f"pull {one}: done" in result.stderr
    cache = data / "qemu-compose" / "images"
    assert (cache / cache_name(one)).read_bytes() == files.content
    rows = images(tmp_path, data)
    assert sorted(rows) == [one, two]
    assert rows[one]["format"] == "qcow2"
    assert rows[one]["size"] >= len(files.content)
    assert rows[one]["in_use_by"] == []
    requests = len(files.ranges)
    again = cli("pull", one, "--progress", "plain", cwd=tmp_path, data=data)
    assert f"pull {one}: cached" in again.stderr
    assert len(files.ranges) == requests  # nothing downloaded
    forced = cli("pull", one, "--force", "--progress", "plain", cwd=tmp_path, data=data)
    assert forced.returncode == 0, forced.stderr
    assert len(files.ranges) == requests + 1
    removed = cli("image", "rm", cache_name(two), cwd=tmp_path, data=data)
    assert removed.returncode == 0, removed.stderr
    assert sorted(images(tmp_path, data)) == [one]
    assert not (cache / (cache_name(two) + ".json")).exists()
    missing = cli("image", "rm", "nope.img", cwd=tmp_path, data=data)
    assert missing.returncode == 1
    assert "no cached image 'nope.img'" in missing.stderr


def test_pull_of_the_compose_files_images_and_a_failure(
    server: tuple[str, type[Files]], tmp_path: Path
) -> None:
    base, _ = server
    data = tmp_path / "data"
    (tmp_path / "qemu-compose.yaml").write_text(
        f"vms:\n  a: {{image: {base}/x.img}}\n  b: {{image: 'http://127.0.0.1:1/gone.img'}}\n"
    )
    result = cli("pull", "--progress", "plain", cwd=tmp_path, data=data)
    assert result.returncode == 1
    assert "1 of 2 images could not be pulled" in result.stderr
    assert "gone.img" in result.stderr
    assert sorted(images(tmp_path, data)) == [f"{base}/x.img"]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_prune_keeps_what_vm_disks_are_built_on(
    server: tuple[str, type[Files]], tmp_path: Path
) -> None:
    base, files = server
    files.content = b"\0" * (1 << 20)  # a raw disk
    data = tmp_path / "data"
    used, unused = f"{base}/used.img", f"{base}/unused.img"
    assert cli("pull", used, unused, "--progress", "quiet", cwd=tmp_path, data=data).returncode == 0
    cache = data / "qemu-compose" / "images"
    state = tmp_path / "project" / ".qemu-compose"
    disk = state / "web" / "disk.qcow2"
    disk.parent.mkdir(parents=True)
    trio.run(create_overlay, cache / cache_name(used), disk, None)
    assert backing_file(disk) == str(cache / cache_name(used))
    record_use(cache / cache_name(used), used, state_dir=state)  # what up does
    rows = images(tmp_path, data)
    assert rows[used]["in_use_by"] == [str(disk)]
    assert rows[used]["last_used"] is not None
    refused = cli("image", "rm", used, cwd=tmp_path, data=data)
    assert refused.returncode == 1
    assert "destroy those VMs first" in refused.stderr
    dry = cli("image", "prune", "--dry-run", cwd=tmp_path, data=data)
    assert dry.stdout.strip() == f"would remove {cache_name(unused)}"
    pruned = cli("image", "prune", cwd=tmp_path, data=data)
    assert pruned.returncode == 0, pruned.stderr
    assert sorted(images(tmp_path, data)) == [used]
    shutil.rmtree(disk.parent)  # the VM is destroyed: now nothing holds the image
    cli("image", "prune", cwd=tmp_path, data=data)
    assert images(tmp_path, data) == {}
