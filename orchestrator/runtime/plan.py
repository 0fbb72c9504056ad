"""Decide first, then act: what `up` will do, from the desired and the observed state. Pure.

The desired state is the compose model with replicas expanded into VM instances; the
observed state is what systemd and the state directory say of each instance. The plan is a
list of actions, each with its cause, that `up --dry-run` prints and the runtime executes.
A VM whose configuration changed (a hash of everything that shapes it) is recreated, as
docker compose does; an unchanged running one is left alone.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from orchestrator.config.model import ComposeFile
from orchestrator.config.topology import Instance, instances
from systemd_dbus import ActiveState


def config_hash(compose: ComposeFile, instance: Instance) -> str:
    """Changes when anything that shapes the VM changes: its definition, networks, volumes."""
    vm = instance.vm
    related = {
        "vm": vm,
        "name": instance.name,
        "networks": {n: compose.networks[n] for n in sorted(vm.networks) if n in compose.networks},
        "volumes": {
            m.source: compose.volumes[m.source]
            for m in vm.volumes
            if m.type == "volume" and m.source in compose.volumes
        },
    }
    return hashlib.sha256(msgspec.json.encode(related, order="sorted")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Observed:
    unit: ActiveState | None = None  # its unit's state; None: systemd has no such unit
    created: bool = False  # its disk (or state entry) exists
    config_hash: str | None = None

    @property
    def running(self) -> bool:
        return self.unit is not None and self.unit.running


class ActionKind(enum.Enum):
    CREATE = "create"
    RECREATE = "recreate"
    START = "start"
    KEEP = "keep"
    REMOVE = "remove"  # an orphan, with --remove-orphans
    ORPHAN = "orphan"  # an orphan left alone


@dataclass(frozen=True, slots=True)
class Action:
    vm: str
    kind: ActionKind
    cause: str

    @property
    def changes_something(self) -> bool:
        return self.kind not in (ActionKind.KEEP, ActionKind.ORPHAN)


def plan(
    compose: ComposeFile,
    observed: Mapping[str, Observed],
    *,
    selected: Iterable[Instance] | None = None,
    no_recreate: bool = False,
    force_recreate: bool = False,
    remove_orphans: bool = False,
) -> list[Action]:
    """The actions of `up`, in the compose file's order, orphans last."""
    targets = list(selected) if selected is not None else instances(compose)
    actions = []
    for inst in targets:
        seen = observed.get(inst.name, Observed())
        wanted_hash = config_hash(compose, inst)
        if not seen.created and not seen.running:
            actions.append(Action(inst.name, ActionKind.CREATE, "not created yet"))
        elif force_recreate:
            actions.append(Action(inst.name, ActionKind.RECREATE, "--force-recreate"))
        elif seen.config_hash != wanted_hash and not no_recreate:
            actions.append(Action(inst.name, ActionKind.RECREATE, "configuration changed"))
        elif seen.running:
            actions.append(Action(inst.name, ActionKind.KEEP, "running"))
        else:
            why = "stopped" if seen.unit is None else f"stopped ({seen.unit})"
            actions.append(Action(inst.name, ActionKind.START, why))
    desired = {i.name for i in instances(compose)}
    for name in sorted(set(observed) - desired):
        if remove_orphans:
            actions.append(Action(name, ActionKind.REMOVE, "not in the compose file"))
        else:
            actions.append(
                Action(
                    name, ActionKind.ORPHAN, "not in the compose file; --remove-orphans removes it"
                )
            )
    return actions


def render_plan(actions: Sequence[Action]) -> str:
    if not actions:
        return "nothing to do\n"
    width = max(len(a.vm) for a in actions)
    return "".join(f"{a.vm:<{width}}  {a.kind.value:<8}  {a.cause}\n" for a in actions)
