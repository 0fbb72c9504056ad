"""The VMs a compose file stands for: instances (a definition, or each of its replicas), what
each waits for, and the one way user-given names become instances. Pure."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from orchestrator.errors import UsageError

from .model import ComposeFile, Dependency, Vm


class Instance(msgspec.Struct, frozen=True):
    """One VM to run: a definition, or one replica of it."""

    name: str
    definition: str
    vm: Vm


def replica_names(name: str, vm: Vm) -> list[str]:
    """The VM names a definition stands for: itself, or ``name-1`` .. ``name-N`` (always for
    a warm VM: its replica set may grow and shrink, `up --scale`)."""
    if vm.replicas == 1 and not vm.warm:
        return [name]
    return [f"{name}-{i}" for i in range(1, vm.replicas + 1)]


def instances(compose: ComposeFile) -> list[Instance]:
    """Every instance, in the file's order."""
    return [
        Instance(name, definition, vm)
        for definition, vm in compose.vms.items()
        for name in replica_names(definition, vm)
    ]


def dependencies(compose: ComposeFile, instance: Instance) -> dict[str, Dependency]:
    """What an instance waits for, by instance name (a replicated VM means all its replicas)."""
    needs: dict[str, Dependency] = {}
    for target, dependency in instance.vm.depends_on.items():
        for name in replica_names(target, compose.vms[target]):
            needs[name] = dependency
    return needs


def dependants(compose: ComposeFile) -> dict[str, set[str]]:
    """What depends on each instance, by instance name: the ones to stop before it."""
    found: dict[str, set[str]] = {}
    for inst in instances(compose):
        for needed in dependencies(compose, inst):
            found.setdefault(needed, set()).add(inst.name)
    return found


def select(
    compose: ComposeFile,
    names: Sequence[str],
    *,
    project: str,
    with_dependencies: bool = False,
) -> list[Instance]:
    """The instances ``names`` mean, in the file's order: a definition means all its replicas,
    a replica itself; with ``with_dependencies`` also everything they depend on, transitively.

    An unknown name is a UsageError naming every unknown one and the project's VMs.
    """
    everything = {i.name: i for i in instances(compose)}
    by_definition: dict[str, list[str]] = {}
    for inst in everything.values():
        by_definition.setdefault(inst.definition, []).append(inst.name)
    wanted: list[str] = []
    unknown = []
    for name in names:
        if name in by_definition:
            wanted += by_definition[name]
        elif name in everything:
            wanted.append(name)
        else:
            unknown.append(name)
    if unknown:
        known = ", ".join(everything) or "none"
        said = ", ".join(repr(n) for n in unknown)
        raise UsageError(f"no VM named {said} in {project} (VMs: {known})")
    chosen: set[str] = set()
    stack = list(wanted)
    while stack:
        name = stack.pop()
        if name in chosen:
            continue
        chosen.add(name)
        if with_dependencies:
            stack.extend(dependencies(compose, everything[name]))
    return [inst for inst in everything.values() if inst.name in chosen]


def select_one(compose: ComposeFile, name: str, *, project: str) -> Instance:
    """The one instance ``name`` means: not a definition with replicas, not an unknown name."""
    found = select(compose, [name], project=project)
    if [i.name for i in found] != [name]:
        raise UsageError(f"{name} has replicas: name one of {', '.join(i.name for i in found)}")
    return found[0]
