"""What a changed definition does to a created VM: restart on its disk, grow it, or say that
it needs --force-recreate; never a disk replaced unasked. Pure: shapes and plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import load_project
from orchestrator.config.project import Project
from orchestrator.config.topology import instances
from orchestrator.runtime.changes import Effect, changes, digest, shape, verdict
from orchestrator.runtime.plan import (
    ActionKind,
    Observed,
    Resources,
    UpPlan,
    plan,
    plan_up,
    render_up_plan,
)
from systemd_dbus import ActiveState

TEXT = """
name: demo
networks: {lan: {}}
volumes: {data: {size: 2G}}
vms:
  db:
    image: /srv/images/debian-12.qcow2
    memory: 512
    disk: 4G
    volumes: [data:/data]
    networks: [lan]
    provision: [{script: ./setup.sh}]
  web:
    image: /srv/images/debian-12.qcow2
    replicas: 2
    depends_on: [db]
"""


def load(tmp_path: Path, text: str, script: str = "echo hi\n") -> Project:
    (tmp_path / "setup.sh").write_text(script)
    (tmp_path / "qemu-compose.yaml").write_text(text)
    return load_project(tmp_path / "qemu-compose.yaml", environ={})


def shapes(project: Project) -> dict[str, dict[str, str]]:
    return {i.name: shape(project.model, i, project.files) for i in instances(project.model)}


def running(recorded: dict[str, dict[str, str]], *, stopped: str = "") -> dict[str, Observed]:
    return {
        n: Observed(
            ActiveState.INACTIVE if n == stopped else ActiveState.ACTIVE, True, digest(s), None, s
        )
        for n, s in recorded.items()
    }


def lines(project: Project, observed: dict[str, Observed]) -> list[str]:
    actions = plan(project.model, observed, files=project.files)
    return render_up_plan(UpPlan(tuple(actions))).splitlines()


def test_an_unchanged_project_keeps_everything_running(tmp_path: Path) -> None:
    project = load(tmp_path, TEXT)
    actions = plan(project.model, running(shapes(project)), files=project.files)
    assert [(a.kind, a.cause, a.record) for a in actions] == [
        (ActionKind.KEEP, "running", None)
    ] * 3


def test_more_memory_restarts_the_vm_on_its_disk(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    after = load(tmp_path, TEXT.replace("memory: 512", "memory: 1024\n    cpu: 4"))
    assert lines(after, running(before)) == [
        "db     restart   cpu 2 -> 4, memory 512 -> 1024",
        "web-1  keep      running",
        "web-2  keep      running",
    ]
    db = plan(after.model, running(before), files=after.files)[0]
    assert db.record == shapes(after)["db"]  # all of it applies: recorded as the file says


def test_a_new_image_is_said_and_the_disk_kept(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    after = load(
        tmp_path, TEXT.replace("debian-12.qcow2\n    memory", "debian-13.qcow2\n    memory")
    )
    assert lines(after, running(before))[0] == (
        "db     keep      running; needs --force-recreate (its disk will be replaced): image "
        "/srv/images/debian-12.qcow2 -> /srv/images/debian-13.qcow2"
    )
    forced = plan(after.model, running(before), force_recreate=True)
    assert forced[0].kind is ActionKind.RECREATE


def test_a_restart_applies_what_it_can_and_keeps_saying_what_is_pending(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    text = TEXT.replace("memory: 512", "memory: 1024\n    user: admin")
    after = load(tmp_path, text)
    db = plan(after.model, running(before), files=after.files)[0]
    assert db.kind is ActionKind.RESTART
    assert db.cause == (
        "memory 512 -> 1024; needs --force-recreate (its disk will be replaced): user none -> admin"
    )
    assert db.record is not None
    assert (db.record["memory"], db.record["user"]) == ("1024", "none")  # as it now runs
    again = running({**before, "db": dict(db.record)})
    assert lines(after, again)[0] == (
        "db     keep      running; needs --force-recreate (its disk will be replaced): "
        "user none -> admin"
    )


def test_a_larger_disk_grows_in_place_and_a_smaller_one_needs_a_new_disk(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    grown = load(tmp_path, TEXT.replace("disk: 4G", "disk: 8G"))
    db = plan(grown.model, running(before), files=grown.files)[0]
    assert (db.kind, db.cause, db.grow_disk) == (
        ActionKind.RESTART,
        "disk 4G -> 8G (grown in place)",
        True,
    )
    shrunk = load(tmp_path, TEXT.replace("disk: 4G", "disk: 2G"))
    db = plan(shrunk.model, running(before), files=shrunk.files)[0]
    assert (db.kind, db.grow_disk) == (ActionKind.KEEP, False)
    assert db.cause.endswith("needs --force-recreate (its disk will be replaced): disk 4G -> 2G")
    unsized = load(tmp_path, TEXT.replace("    disk: 4G\n", ""))
    db = plan(unsized.model, running(before), files=unsized.files)[0]
    assert (db.kind, db.cause) == (ActionKind.KEEP, "running; disk 4G -> none (nothing to restart)")


def test_a_provision_script_that_changed_needs_a_new_disk(tmp_path: Path) -> None:
    """The script's text is what counts, not only its path."""
    before = shapes(load(tmp_path, TEXT))
    after = load(tmp_path, TEXT, script="echo bye\n")
    assert lines(after, running(before))[0] == (
        "db     keep      running; needs --force-recreate (its disk will be replaced): "
        'provision ["echo hi\\n"] -> ["echo bye\\n"]'
    )


def test_what_only_qemu_compose_reads_restarts_nothing(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    after = load(tmp_path, TEXT.replace("depends_on: [db]", "depends_on: {}"))
    web = plan(after.model, running(before), files=after.files)[1]
    assert (web.kind, web.record) == (ActionKind.KEEP, shapes(after)["web-1"])
    assert web.cause == (
        'running; depends_on {"db":{"condition":"service_started","required":true}} -> {}'
        " (nothing to restart)"
    )


def test_another_replica_creates_one_and_restarts_none(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    after = load(tmp_path, TEXT.replace("replicas: 2", "replicas: 3"))
    assert lines(after, running(before))[1:] == [
        "web-1  keep      running",
        "web-2  keep      running",
        "web-3  create    not created yet",
    ]


def test_a_stopped_vm_starts_with_what_changed(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    after = load(tmp_path, TEXT.replace("memory: 512", "memory: 768"))
    assert lines(after, running(before, stopped="db"))[0] == (
        "db     start     stopped (inactive); memory 512 -> 768"
    )


def test_no_recreate_keeps_a_changed_running_vm_as_it_is(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    after = load(tmp_path, TEXT.replace("memory: 512", "memory: 768"))
    db = plan(after.model, running(before), files=after.files, no_recreate=True)[0]
    assert (db.kind, db.cause, db.record) == (
        ActionKind.KEEP,
        "running; changed, kept as it is (--no-recreate)",
        None,
    )


def test_a_field_an_earlier_version_did_not_record_restarts_nothing(tmp_path: Path) -> None:
    recorded = shapes(load(tmp_path, TEXT))
    for fields in recorded.values():
        del fields["stop_grace_period"]
    found = verdict(recorded["db"], shapes(load(tmp_path, TEXT))["db"])
    assert (found.restart, found.replace) == ((), ())
    assert [c.effect for c in found.apply] == [Effect.APPLY]


@pytest.mark.parametrize(
    ("edit", "effect"),
    [
        (("memory: 512", "memory: 600"), Effect.RESTART),
        (("networks: [lan]", "networks: [lan]\n    ports: ['8080:80']"), Effect.RESTART),
        (("volumes: [data:/data]", "volumes: ['data:/data:ro']"), Effect.RESTART),
        (("memory: 512", "memory: 512\n    environment: {A: b}"), Effect.RESTART),
        (("memory: 512", "memory: 512\n    restart: always"), Effect.RESTART),
        (("memory: 512", "memory: 512\n    hostname: other"), Effect.RESTART),
        (("memory: 512", "memory: 512\n    user: admin"), Effect.REPLACE),
        (("memory: 512", "memory: 512\n    cloud_init: {user_data: {a: 1}}"), Effect.REPLACE),
        (("memory: 512", "memory: 512\n    healthcheck: {test: [CMD, 'true']}"), Effect.APPLY),
        (("memory: 512", "memory: 512\n    ssh: {user: root}"), Effect.APPLY),
    ],
)
def test_each_kind_of_change(tmp_path: Path, edit: tuple[str, str], effect: Effect) -> None:
    before = shapes(load(tmp_path, TEXT))["db"]
    after = shapes(load(tmp_path, TEXT.replace(*edit)))["db"]
    assert [c.effect for c in changes(before, after)] == [effect]


def test_a_long_value_is_recorded_as_a_digest_and_said_as_changed(tmp_path: Path) -> None:
    long_env = "memory: 512\n    environment: {" + ", ".join(f"V{i}: x" for i in range(30)) + "}"
    before = shapes(load(tmp_path, TEXT))["db"]
    after = shapes(load(tmp_path, TEXT.replace("memory: 512", long_env)))["db"]
    assert after["environment"].startswith("sha256:")
    assert [str(c) for c in changes(before, after)] == ["environment changed"]


def test_a_new_image_is_not_fetched_while_the_disk_is_kept(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    after = load(
        tmp_path, TEXT.replace("debian-12.qcow2\n    memory", "debian-13.qcow2\n    memory")
    )
    kept = plan_up(after.model, running(before), Resources(), files=after.files)
    assert [i.source for i in kept.images] == ["/srv/images/debian-12.qcow2"]  # web's
    forced = plan_up(after.model, running(before), Resources(), force_recreate=True)
    assert sorted(i.source for i in forced.images) == [
        "/srv/images/debian-12.qcow2",
        "/srv/images/debian-13.qcow2",
    ]


def test_force_recreate_replaces_the_named_vms_not_what_they_depend_on(tmp_path: Path) -> None:
    project = load(tmp_path, TEXT)
    actions = plan(project.model, running(shapes(project)), force_recreate=True, named=["web-1"])
    assert [(a.vm, a.kind) for a in actions] == [
        ("db", ActionKind.KEEP),
        ("web-1", ActionKind.RECREATE),
        ("web-2", ActionKind.KEEP),
    ]


def test_a_volume_keeps_the_size_it_was_made_with(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    after = shapes(load(tmp_path, TEXT.replace("{data: {size: 2G}}", "{data: {size: 3G}}")))
    assert changes(before["db"], after["db"]) == []


def test_a_record_from_before_firmware_existed_is_bios_and_uefi_restarts(tmp_path: Path) -> None:
    before = shapes(load(tmp_path, TEXT))
    for recorded in before.values():
        del recorded["firmware"]  # what an earlier version recorded
    assert lines(load(tmp_path, TEXT), running(before)) == [
        "db     keep      running",
        "web-1  keep      running",
        "web-2  keep      running",
    ]
    after = load(tmp_path, TEXT.replace("memory: 512", "memory: 512\n    firmware: uefi"))
    assert lines(after, running(before))[0] == "db     restart   firmware bios -> uefi"
