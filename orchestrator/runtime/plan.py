"""Decide first, then act: what `up` will do, from the desired and the observed state. Pure.

The desired state is the compose model with replicas expanded into VM instances; the
observed state is what systemd and the state directory say of each instance, and which
images, volumes, networks and supervisor are there. The plan (UpPlan) is the VMs' actions,
each with its cause, and the steps for what they need: `up --dry-run` prints it and the
runtime executes it. A VM whose definition changed is restarted on its disk, its disk grown
or left as it is with what needs a new one said (changes.py): a disk is replaced only when
there is none or `--force-recreate` asks; an unchanged running VM is left alone.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from orchestrator.config.files import NamedFiles
from orchestrator.config.model import ComposeFile, Vm
from orchestrator.config.topology import Instance, instances
from orchestrator.guest.images import is_remote
from systemd_dbus import ActiveState

from .changes import Shape, shape, verdict


def legacy_config_hash(compose: ComposeFile, instance: Instance) -> str:
    """The configuration hash of versions that recorded no shape: a VM they started whose
    file has not changed since is unchanged, not restarted for an upgrade."""
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


PortClaim = tuple[str, Vm, int | None]  # VM, its definition, the SSH port it had last time


@dataclass(frozen=True, slots=True)
class Observed:
    unit: ActiveState | None = None  # its unit's state; None: systemd has no such unit
    created: bool = False  # its disk (or state entry) exists
    config_hash: str | None = None
    ssh_port: int | None = None  # the host port its SSH had last time
    shape: Shape | None = None  # what it was started with; None: recorded by an earlier version

    @property
    def running(self) -> bool:
        return self.unit is not None and self.unit.running


class ActionKind(enum.Enum):
    CREATE = "create"
    RECREATE = "recreate"
    RESTART = "restart"  # on its disk, to apply what changed
    START = "start"
    KEEP = "keep"
    REMOVE = "remove"  # an orphan, with --remove-orphans
    ORPHAN = "orphan"  # an orphan left alone


@dataclass(frozen=True, slots=True)
class Action:
    vm: str
    kind: ActionKind
    cause: str
    record: Shape | None = None  # the shape to record once done; None: what is recorded stays
    grow_disk: bool = False  # its disk:, larger than it was, grows first
    pending: frozenset[str] = frozenset()  # fields that wait for --force-recreate (its disk kept)

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
    remove: Collection[str] = (),
    files: NamedFiles | None = None,
    named: Collection[str] | None = None,
) -> list[Action]:
    """The actions of `up`, in the compose file's order, orphans last. ``--force-recreate``
    replaces the disks of the VMs ``named`` (all when None), never of what they depend on."""
    targets = list(selected) if selected is not None else instances(compose)
    actions = [
        _action(
            compose,
            inst,
            observed.get(inst.name, Observed()),
            files,
            no_recreate,
            force_recreate and (named is None or inst.name in named),
        )
        for inst in targets
    ]
    desired = {i.name for i in instances(compose)}
    for name in sorted(set(observed) - desired):
        if name in remove:
            actions.append(Action(name, ActionKind.REMOVE, "scaled down (--scale)"))
        elif remove_orphans:
            actions.append(Action(name, ActionKind.REMOVE, "not in the compose file"))
        else:
            actions.append(
                Action(
                    name, ActionKind.ORPHAN, "not in the compose file; --remove-orphans removes it"
                )
            )
    return actions


def _action(
    compose: ComposeFile,
    inst: Instance,
    seen: Observed,
    files: NamedFiles | None,
    no_recreate: bool,
    force_recreate: bool,
) -> Action:
    """One VM's action: its disk is replaced only when it has none or when asked."""
    wanted = shape(compose, inst, files)
    if not seen.created and not seen.running:
        return Action(inst.name, ActionKind.CREATE, "not created yet", wanted)
    if force_recreate:
        return Action(inst.name, ActionKind.RECREATE, "--force-recreate", wanted)
    state = "running" if seen.running else "stopped"
    if seen.unit is not None and not seen.running:
        state = f"stopped ({seen.unit})"
    kind = ActionKind.KEEP if seen.running else ActionKind.START
    if seen.config_hash is None:  # its record is lost: never a reason to lose its disk
        cause = f"{state}; its configuration is not known (kept as it is)"
        return Action(inst.name, kind, cause, wanted)
    if seen.shape is None:  # started by an earlier version, which kept only a hash
        if seen.config_hash == legacy_config_hash(compose, inst):
            return Action(inst.name, kind, state, wanted)
        cause = (
            f"{state}; changed since an earlier version started it, what changed is not "
            "known: --force-recreate replaces its disk"
        )
        return Action(inst.name, kind, cause)  # its record is kept: said again next time
    found = verdict(seen.shape, wanted)
    if not (found.restart or found.replace or found.apply):
        return Action(inst.name, kind, state)
    if seen.running and no_recreate and (found.restart or found.replace):
        return Action(inst.name, kind, f"{state}; changed, kept as it is (--no-recreate)")
    pending = frozenset(c.field for c in found.replace)
    if found.restart and seen.running:
        cause = found.cause()
        return Action(
            inst.name, ActionKind.RESTART, cause, found.applied, found.grows_disk, pending
        )
    said = [found.cause()] if found.restart or found.replace else []
    if found.apply:
        said.append(", ".join(str(c) for c in found.apply) + " (nothing to restart)")
    cause = "; ".join([state, *said])
    return Action(inst.name, kind, cause, found.applied, found.grows_disk, pending)


# -- the whole of `up`: the VMs and what they need -------------------------------------------------


class StepKind(enum.StrEnum):
    FETCH = "fetch"  # an image not in the cache yet
    USE = "use"  # an image in the cache (verified), or a local file
    CREATE = "create"
    KEEP = "keep"
    START = "start"


@dataclass(frozen=True, slots=True)
class Resources:
    """What is there of what the VMs need (observed)."""

    cached_images: frozenset[str] = frozenset()  # sources whose file is here
    volumes: frozenset[str] = frozenset()  # named volumes that exist
    subnets: Mapping[str, str] = field(default_factory=dict)  # networks created: subnet
    supervisor_running: bool = False


@dataclass(frozen=True, slots=True)
class ImageStep:
    source: str
    checksum: str | None
    kind: StepKind  # FETCH or USE
    found: bool  # its file is here (in the cache, or where a local image's path says)


@dataclass(frozen=True, slots=True)
class VolumeStep:
    name: str
    size: str
    kind: StepKind  # CREATE or KEEP


@dataclass(frozen=True, slots=True)
class NetworkStep:
    name: str
    subnet: str  # the one it has, or what the file asks for ("auto")
    kind: StepKind  # CREATE or KEEP (made again if its bridge or dnsmasq went away)


@dataclass(frozen=True, slots=True)
class UpPlan:
    actions: tuple[Action, ...]
    images: tuple[ImageStep, ...] = ()
    volumes: tuple[VolumeStep, ...] = ()
    networks: tuple[NetworkStep, ...] = ()
    supervisor: StepKind | None = None  # START, KEEP (it runs), None: no VM to watch
    ports: tuple[PortClaim, ...] = ()  # VMs that claim host ports as they start


def plan_up(
    compose: ComposeFile,
    observed: Mapping[str, Observed],
    resources: Resources,
    *,
    selected: Iterable[Instance] | None = None,
    no_recreate: bool = False,
    force_recreate: bool = False,
    remove_orphans: bool = False,
    remove: Collection[str] = (),
    files: NamedFiles | None = None,
    named: Collection[str] | None = None,
) -> UpPlan:
    """The VMs' actions (`plan`) and the steps for the images, volumes and networks of those
    it keeps or starts, the supervisor, and the port claims of those it starts."""
    actions = plan(
        compose,
        observed,
        selected=selected,
        no_recreate=no_recreate,
        force_recreate=force_recreate,
        remove_orphans=remove_orphans,
        remove=remove,
        files=files,
        named=named,
    )
    by_name = {i.name: i for i in instances(compose)}
    pairs = [(a, by_name[a.vm]) for a in actions if a.vm in by_name]
    chosen = [i for _, i in pairs]
    sources = {  # not the new image of a VM whose disk is kept: not needed before --force-recreate
        i.vm.image.source: i.vm.image.checksum
        for a, i in pairs
        if i.vm.image is not None and "image" not in a.pending
    }
    volumes = sorted({m.source for i in chosen for m in i.vm.volumes if m.type == "volume"})
    networks = sorted({n for i in chosen for n in i.vm.networks})
    return UpPlan(
        actions=tuple(actions),
        images=tuple(
            ImageStep(s, c, StepKind.FETCH if is_remote(s) and not here else StepKind.USE, here)
            for s, c in sources.items()
            for here in [s in resources.cached_images]
        ),
        volumes=tuple(
            VolumeStep(
                n,
                compose.volumes[n].size,
                StepKind.KEEP if n in resources.volumes else StepKind.CREATE,
            )
            for n in volumes
        ),
        networks=tuple(
            NetworkStep(n, resources.subnets[n], StepKind.KEEP)
            if n in resources.subnets
            else NetworkStep(n, compose.networks[n].subnet, StepKind.CREATE)
            for n in networks
        ),
        supervisor=(
            None
            if not chosen
            else StepKind.KEEP
            if resources.supervisor_running
            else StepKind.START
        ),
        ports=tuple(
            (a.vm, by_name[a.vm].vm, observed[a.vm].ssh_port if a.vm in observed else None)
            for a in actions
            if a.vm in by_name and a.kind in (ActionKind.CREATE, ActionKind.START)
        ),  # a recreated or restarted VM holds its ports until it stops: it claims them then
    )


def render_up_plan(up_plan: UpPlan) -> str:
    """`up --dry-run`: what the VMs need, then the VMs, a line each with its cause."""
    rows = [
        (f"image:{_file_name(s.source)}", s.kind.value, _image_cause(s)) for s in up_plan.images
    ]
    rows += [(f"volume:{v.name}", v.kind.value, v.size) for v in up_plan.volumes]
    rows += [(f"network:{n.name}", n.kind.value, n.subnet) for n in up_plan.networks]
    if up_plan.supervisor is not None:
        running = up_plan.supervisor is StepKind.KEEP
        rows.append(
            ("(supervisor)", up_plan.supervisor.value, "running" if running else "not running")
        )
    rows += [(a.vm, a.kind.value, a.cause) for a in up_plan.actions]
    if not rows:
        return "nothing to do\n"
    width = max(len(name) for name, _, _ in rows)
    return "".join(f"{name:<{width}}  {kind:<8}  {cause}\n" for name, kind, cause in rows)


def _file_name(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1] or source


def _image_cause(step: ImageStep) -> str:
    if not is_remote(step.source):
        return f"{step.source} ({'a local file' if step.found else 'missing: no such file'})"
    return f"{step.source} ({'in' if step.found else 'not in'} the cache)"
