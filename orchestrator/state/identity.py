"""Whose a unit is, recorded on the unit itself, where systemd keeps it. Pure.

The live system is the truth: a unit's Description says which project (by name and
directory) and which VM or network it is, so that one ListUnits call tells every command
which units are its own, and another project of the same name is seen as such. A VM unit's
Environment also carries what the state file says of the VM (its configuration hash, host
ports, MACs, restart policy), so that a lost state file is rebuilt from
the running units, never a reason to recreate them.

Descriptions, in full (project and VM names have no spaces or slashes; the directory is the
rest, whatever it holds):

    qemu-compose VM <project>/<vm> of <project directory>
    qemu-compose DHCP and DNS of <project>/<network> of <project directory>
    qemu-compose supervisor of <project> of <project directory>

Units made by earlier versions say the same without `` of <directory>``: their owner's
directory is not known (None).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import msgspec

from .files import VmState

if TYPE_CHECKING:
    from orchestrator.config.project import Project

Kind = Literal["vm", "dnsmasq", "supervisor", "shaper"]
STATE_VARIABLE = "QEMU_COMPOSE_VM_STATE"  # a VM unit's VmState, as JSON
SUBNET_VARIABLE = "QEMU_COMPOSE_SUBNET"  # a dnsmasq unit's network's subnet

_FORMATS: dict[Kind, str] = {
    "vm": "qemu-compose VM {project}/{name}",
    "dnsmasq": "qemu-compose DHCP and DNS of {project}/{name}",
    "supervisor": "qemu-compose supervisor of {project}",
    "shaper": "qemu-compose network faults of {project}/{name}",
}
_PATTERNS: dict[Kind, re.Pattern[str]] = {
    "vm": re.compile(r"^qemu-compose VM ([^/ ]+)/([^/ ]+)(?: of (/.*))?$"),
    "dnsmasq": re.compile(r"^qemu-compose DHCP and DNS of ([^/ ]+)/([^/ ]+)(?: of (/.*))?$"),
    "supervisor": re.compile(r"^qemu-compose supervisor of ([^/ ]+)()(?: of (/.*))?$"),
    "shaper": re.compile(r"^qemu-compose network faults of ([^/ ]+)/([^/ ]+)(?: of (/.*))?$"),
}


class Owner(msgspec.Struct, frozen=True):
    kind: Kind
    project: str
    name: str  # the VM or the network; "" for the supervisor
    directory: str | None  # the project's directory; None: a unit of an older version

    def describe(self) -> str:
        text = _FORMATS[self.kind].format(project=self.project, name=self.name)
        return f"{text} of {self.directory}" if self.directory else text

    def is_of(self, project: str, directory: str) -> bool:
        """The unit belongs to this project; an older unit (no directory) is taken by name."""
        return self.project == project and self.directory in (None, directory)


def taken_by(
    description: str, kind: Kind, project: str, directory: str, name: str = ""
) -> str | None:
    """Who else has a unit that this project means to stop, reset or replace: None when it
    is this project's ``kind`` ``name``; else whose it is, said for an error."""
    owner = owner_of(description)
    if owner is None:
        return f"a unit qemu-compose did not make ({description!r})"
    if owner.kind == kind and owner.name == name and owner.is_of(project, directory):
        return None
    what = f"{owner.kind} {owner.name}" if owner.name else owner.kind
    return f"{what} of project {owner.project} ({owner.directory or 'an earlier version'})"


def owner_of(description: str) -> Owner | None:
    """Whose a unit is, from its Description; None for a unit qemu-compose did not make."""
    for kind, pattern in _PATTERNS.items():
        match = pattern.match(description)
        if match:
            return Owner(kind, match.group(1), match.group(2), match.group(3))
    return None


def state_variable(state: VmState) -> str:
    """``QEMU_COMPOSE_VM_STATE=<json>`` for a VM unit's Environment."""
    return f"{STATE_VARIABLE}={msgspec.json.encode(state).decode()}"


def state_of(environment: list[str] | tuple[str, ...]) -> VmState | None:
    """The VmState a unit's Environment carries, if it carries one that can be read."""
    prefix = f"{STATE_VARIABLE}="
    for entry in environment:
        if entry.startswith(prefix):
            try:
                return msgspec.json.decode(entry[len(prefix) :], type=VmState)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
    return None


def subnet_of(environment: list[str] | tuple[str, ...]) -> str | None:
    prefix = f"{SUBNET_VARIABLE}="
    return next((e[len(prefix) :] for e in environment if e.startswith(prefix)), None)


def project_dir(project: Project) -> str:
    """The project's directory as units record it: resolved, so that a path through a link
    names the same project."""
    return str(project.directory.resolve())
