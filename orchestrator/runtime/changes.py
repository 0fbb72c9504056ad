"""What a change of a VM's definition does to it, field by field. Pure.

A VM records the *shape* it was started with: each field that shapes it, spelled short
(``memory: "1024"``; a long value as a digest), so that `up` can say what changed
(``memory 512 -> 1024``) and what that needs. Its disk holds what people installed in it:
`up` never replaces it unasked.

- **restart** (on its disk): what QEMU, its unit or the seed's every-boot part is made of:
  cpu, memory, machine, cpu_model, accel, hostname, boot, ports, networks, volumes,
  environment, restart, stop_grace_period, ssh.port, warm;
- **grow**: a larger ``disk:`` grows the disk in place (with a restart);
- **replace**: what is written into the disk on its first boot, or a smaller ``disk:``:
  image, user, cloud_init, provision. The VM stays as it is and `up` says
  ``needs --force-recreate``; ``up --force-recreate VM`` replaces its disk;
- **apply**: what only qemu-compose reads (depends_on, healthcheck, ssh.user): recorded,
  nothing restarted.

A VM keeps the shape it runs with: after a restart, the replace fields keep their old
values until ``--force-recreate``, so `up` goes on saying what is pending, never forgets it.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from orchestrator.config.files import NamedFiles
from orchestrator.config.model import ComposeFile
from orchestrator.config.quantities import parse_size
from orchestrator.config.topology import Instance

Shape = Mapping[str, str]
SHORT = 96  # a value longer than this is recorded as its digest


class Effect(enum.Enum):
    APPLY = "apply"
    RESTART = "restart"
    GROW = "grow"
    REPLACE = "replace"


EFFECTS: dict[str, Effect] = {
    "image": Effect.REPLACE,
    "user": Effect.REPLACE,
    "cloud_init": Effect.REPLACE,
    "provision": Effect.REPLACE,
    "disk": Effect.GROW,  # or REPLACE when smaller: see `effect`
    "hostname": Effect.RESTART,  # cloud-init sets it at every boot (update_hostname)
    "boot": Effect.RESTART,
    "cpu": Effect.RESTART,
    "memory": Effect.RESTART,
    "machine": Effect.RESTART,
    "firmware": Effect.RESTART,
    "cpu_model": Effect.RESTART,
    "accel": Effect.RESTART,
    "ports": Effect.RESTART,
    "ssh.port": Effect.RESTART,
    "networks": Effect.RESTART,
    "volumes": Effect.RESTART,
    "environment": Effect.RESTART,
    "restart": Effect.RESTART,
    "stop_grace_period": Effect.RESTART,
    "warm": Effect.RESTART,  # a warm VM's QEMU has a VM generation ID device
    "depends_on": Effect.APPLY,
    "healthcheck": Effect.APPLY,
    "ssh.user": Effect.APPLY,
}


def shape(
    compose: ComposeFile, instance: Instance, files: NamedFiles | None = None
) -> dict[str, str]:
    """The fields of ``EFFECTS`` for one VM, each spelled short. Networks include their
    definitions (a subnet); provision scripts and user-data files their text."""
    vm = instance.vm
    files = files or NamedFiles()
    user_data = vm.cloud_init.user_data
    values: dict[str, Any] = {
        "image": vm.image.source if vm.image and not vm.image.checksum else vm.image,
        "user": vm.user,
        "hostname": vm.hostname,
        "cloud_init": files.user_data.get(user_data, user_data)
        if isinstance(user_data, str)
        else user_data,
        "provision": [
            step.inline if step.inline is not None else files.scripts.get(step.script or "", step)
            for step in vm.provision
        ],
        "disk": vm.disk.size,
        "boot": vm.boot,
        "cpu": vm.cpu,
        "memory": vm.memory,
        "machine": vm.machine,
        "firmware": vm.firmware,
        "cpu_model": vm.cpu_model,
        "accel": vm.accel,
        "ports": vm.ports,
        "ssh.port": vm.ssh.port,
        "networks": {
            name: [attachment, compose.networks.get(name)]
            for name, attachment in sorted(vm.networks.items())
        },
        "volumes": vm.volumes,  # a named volume keeps the size it was made with
        "environment": vm.environment,
        "restart": vm.restart,
        "stop_grace_period": vm.stop_grace_period,
        "warm": vm.warm,
        "depends_on": vm.depends_on,
        "healthcheck": vm.healthcheck,
        "ssh.user": vm.ssh.user,
    }
    return {name: _spell(values[name]) for name in EFFECTS}


def _spell(value: Any) -> str:
    """A value as recorded: plain for a scalar, JSON for the rest, a digest when long."""
    if value is None:
        return "none"
    if isinstance(value, str | int) and not isinstance(value, bool):
        text = str(value)
    else:
        text = msgspec.json.encode(msgspec.to_builtins(value), order="sorted").decode()
    if len(text) <= SHORT:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def digest(recorded: Shape) -> str:
    """The configuration hash of a shape (what the state and the unit keep)."""
    encoded = msgspec.json.encode(dict(recorded), order="sorted")
    return hashlib.sha256(encoded).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Change:
    field: str
    old: str | None  # None: the field was not recorded (an earlier version)
    new: str
    effect: Effect

    def __str__(self) -> str:
        if self.old is None:
            return f"{self.field} {self.new}"
        if self.old.startswith("sha256:") or self.new.startswith("sha256:"):
            return f"{self.field} changed"
        return f"{self.field} {self.old} -> {self.new}"


def effect(field: str, old: str | None, new: str) -> Effect:
    """What changing ``field`` from ``old`` to ``new`` needs; a field the VM's record does not
    have (recorded by an earlier version) is recorded, never a reason to restart."""
    if old is None:
        return Effect.APPLY
    if field != "disk":
        return EFFECTS[field]
    if new == "none":  # the image's own size: what it has is kept
        return Effect.APPLY
    if old == "none":
        return Effect.GROW  # checked against the disk when it grows: never shrunk
    return Effect.GROW if parse_size(new) > parse_size(old) else Effect.REPLACE


# Fields added since shapes were first recorded: one a VM's record lacks was its default
UNRECORDED = {"firmware": _spell("bios")}


def changes(recorded: Shape, wanted: Shape) -> list[Change]:
    """The fields that differ, in the order of ``EFFECTS``."""
    found = []
    for name, new in wanted.items():
        old = recorded.get(name, UNRECORDED.get(name))
        if old != new:
            found.append(Change(name, old, new, effect(name, old, new)))
    return found


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `up` does with a created VM whose recorded shape is ``recorded``."""

    restart: tuple[Change, ...]  # RESTART and GROW: applied by a restart on its disk
    replace: tuple[Change, ...]  # pending until --force-recreate
    apply: tuple[Change, ...]  # recorded, nothing restarted
    applied: dict[str, str]  # the shape to record once it runs as the file says

    @property
    def grows_disk(self) -> bool:
        return any(c.effect is Effect.GROW for c in self.restart)

    def cause(self) -> str:
        """``memory 512 -> 1024, disk 10G -> 20G (grown in place)``, then what is pending."""
        parts = []
        if self.restart:
            parts.append(", ".join(_said(c) for c in self.restart))
        if self.replace:
            pending = ", ".join(str(c) for c in self.replace)
            parts.append(f"needs --force-recreate (its disk will be replaced): {pending}")
        return "; ".join(parts)


def _said(change: Change) -> str:
    return f"{change} (grown in place)" if change.effect is Effect.GROW else str(change)


def verdict(recorded: Shape, wanted: Shape) -> Verdict:
    """The changes sorted by what they need, and the shape the VM has once restarted: the
    wanted one, but for what needs a new disk, which stays as recorded."""
    found = changes(recorded, wanted)
    replace = tuple(c for c in found if c.effect is Effect.REPLACE)
    applied = dict(wanted)
    for change in replace:
        if change.old is not None:
            applied[change.field] = change.old
    return Verdict(
        restart=tuple(c for c in found if c.effect in (Effect.RESTART, Effect.GROW)),
        replace=replace,
        apply=tuple(c for c in found if c.effect is Effect.APPLY),
        applied=applied,
    )
