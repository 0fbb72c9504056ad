"""Snapshot records: names, the files of a save (begun, finished, removed), what they say."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.state.snapshots import (
    SnapshotDisk,
    SnapshotRecord,
    Snapshots,
    SnapshotVm,
    check_name,
    disk_tag,
)


@pytest.mark.parametrize("name", ["s1", "before-test", "v1.2_x", "A" * 63])
def test_good_names(name: str) -> None:
    assert check_name(name) == name
    assert disk_tag(name) == f"qemu-compose-{name}"


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "-x", "a b", "A" * 64, "é"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="bad snapshot name"):
        check_name(name)


def test_a_save_begun_is_incomplete_until_finished_and_removed_whole(tmp_path: Path) -> None:
    store = Snapshots(tmp_path)
    disk = SnapshotDisk("root", str(tmp_path / "a" / "disk.qcow2"))
    directory = store.begin("s1", {"a": [disk]})
    assert directory == tmp_path / "snapshots" / "s1"
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert store.record("s1") is None
    saving = store.saving("s1")
    assert saving is not None
    assert saving.vms == {"a": [disk]}
    assert store.names() == ["s1"]

    (directory / "a.state").write_bytes(b"x" * 1000)
    record = SnapshotRecord(
        name="s1",
        created_at=1.0,
        memory=True,
        qemu="7.2.22",
        vms={
            "a": SnapshotVm(shape={"cpu": "1"}, accel="tcg", disks=[disk], state="a.state",
                            state_bytes=1000),
            "b": SnapshotVm(shape={}, accel="tcg", state="b.state", state_bytes=24),
        },
    )  # fmt: skip
    store.finish(record)
    assert store.record("s1") == record
    assert store.saving("s1") is None
    assert record.size == 1024

    store.remove("s1")
    assert not directory.exists()
    assert store.names() == []
    assert store.record("s1") is None


def test_only_snapshot_names_are_listed(tmp_path: Path) -> None:
    store = Snapshots(tmp_path)
    store.make("b")
    store.make("a")
    (store.directory / ".tmp-x").mkdir()
    (store.directory / "stray-file").write_text("")
    assert store.names() == ["a", "b"]
