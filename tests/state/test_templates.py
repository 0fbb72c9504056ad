"""Warm templates on disk: whole or not at all, and whether one still fits its definition."""

from __future__ import annotations

from pathlib import Path

from orchestrator.state.templates import ImageFile, TemplateRecord, Templates, misfits

SHAPE = {"memory": "512", "image": "/i/debian.qcow2", "ports": "[]", "healthcheck": "none"}
IMAGE = ImageFile("/i/debian.qcow2", 100, 7)


def record(**changes: object) -> TemplateRecord:
    fields: dict[str, object] = {
        "definition": "web", "source": "web-1", "saved_at": 1.0, "shape": SHAPE,
        "accel": "tcg", "qemu": "7.2.13", "image": IMAGE, "state_bytes": 5, "disk_bytes": 4,
    }  # fmt: skip
    fields.update(changes)
    return TemplateRecord(**fields)  # type: ignore[arg-type]


def test_a_template_is_there_once_its_record_is(tmp_path: Path) -> None:
    templates = Templates(tmp_path)
    staged = templates.staging("web")
    staged.state.write_bytes(b"state")
    staged.disk.write_bytes(b"disk")
    assert templates.read("web") is None  # staged: not there yet
    assert templates.names() == []
    templates.commit("web", staged, record())
    assert templates.read("web") == record()
    assert templates.names() == ["web"]
    assert (templates.root / "web").stat().st_mode & 0o777 == 0o700

    again = templates.staging("web")  # a new one replaces it whole
    again.state.write_bytes(b"new state")
    again.disk.write_bytes(b"disk")
    templates.commit("web", again, record(source="web-3", state_bytes=9))
    found = templates.read("web")
    assert found is not None
    assert found.source == "web-3"
    assert templates.paths("web").state.read_bytes() == b"new state"
    assert [p.name for p in templates.root.iterdir()] == ["web"]  # nothing left beside it
    with templates.paths("web").disk.open("r+b") as disk:  # cut short (a power cut)
        disk.truncate(2)
    assert templates.read("web") is None


def test_a_template_without_its_files_or_record_is_nothing(tmp_path: Path) -> None:
    templates = Templates(tmp_path)
    staged = templates.staging("web")
    staged.state.write_bytes(b"state")
    templates.commit("web", staged, record())  # its disk is missing
    assert templates.read("web") is None
    staged = templates.staging("tiny")
    staged.state.write_bytes(b"state")
    templates.commit("tiny", staged, record(definition="tiny", has_disk=False))
    assert templates.read("tiny") is not None  # no image: no disk wanted
    assert templates.remove("tiny")
    assert not templates.remove("tiny")
    assert templates.read("tiny") is None


def test_a_template_with_its_ram_in_a_file_needs_that_file_whole(tmp_path: Path) -> None:
    templates = Templates(tmp_path)
    staged = templates.staging("web")
    staged.state.write_bytes(b"state")
    staged.disk.write_bytes(b"disk")
    templates.commit("web", staged, record(ram_bytes=3))  # no RAM file
    assert templates.read("web") is None
    templates.paths("web").ram.write_bytes(b"ra")  # cut short
    assert templates.read("web") is None
    templates.paths("web").ram.write_bytes(b"ram")
    assert templates.read("web") == record(ram_bytes=3)


def test_a_template_recorded_by_another_version_is_not_read(tmp_path: Path) -> None:
    templates = Templates(tmp_path)
    for version in (1, 3):  # an older qemu-compose's (its RAM file unchecked), a newer one's
        staged = templates.staging("web")
        staged.state.write_bytes(b"state")
        staged.disk.write_bytes(b"disk")
        templates.commit("web", staged, record(version=version))
        assert templates.read("web") is None
    assert templates.names() == ["web"]  # (there: `up` removes it and makes a new one)


def test_leftovers_of_an_interrupted_save_are_swept(tmp_path: Path) -> None:
    templates = Templates(tmp_path)
    templates.staging("web").state.write_bytes(b"half")
    templates.clean_staging()
    assert list(templates.root.iterdir()) == []


def test_what_makes_a_template_no_longer_fit() -> None:
    ok = record()
    assert misfits(ok, SHAPE, "tcg", "7.2.13", IMAGE) == []
    # what only qemu-compose reads, or each QEMU's command line, does not matter
    assert (
        misfits(ok, {**SHAPE, "ports": '["80"]', "healthcheck": "x"}, "tcg", "7.2.13", IMAGE) == []
    )
    assert misfits(ok, {**SHAPE, "memory": "1024"}, "tcg", "7.2.13", IMAGE) == ["memory changed"]
    assert misfits(ok, {**SHAPE, "provision": "x"}, "tcg", "7.2.13", IMAGE) == ["provision changed"]
    assert misfits(ok, SHAPE, "kvm", "7.2.13", IMAGE) == ["saved on tcg, would run on kvm"]
    assert misfits(ok, SHAPE, "tcg", "8.0.0", IMAGE) == ["saved by QEMU 7.2.13, this is 8.0.0"]
    pulled_again = ImageFile("/i/debian.qcow2", 100, 8)
    assert misfits(ok, SHAPE, "tcg", "7.2.13", pulled_again) == ["its base image file changed"]


def test_a_templates_size_is_what_its_files_take_on_disk(tmp_path: Path) -> None:
    templates = Templates(tmp_path)
    staged = templates.staging("web")
    staged.state.write_bytes(b"s" * 10_000)
    with staged.ram.open("wb") as ram:  # sparse: 64 MiB, one block written
        ram.truncate(64 << 20)
        ram.write(b"r" * 4096)
    templates.commit("web", staged, record(state_bytes=10_000, ram_bytes=64 << 20))
    paths = templates.paths("web")
    usage = templates.usage("web")
    assert usage == sum(p.stat().st_blocks * 512 for p in (paths.record, paths.state, paths.ram))
    assert 14_000 <= usage < 1 << 20
