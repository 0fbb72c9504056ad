"""Stable names and hardware addresses for a project's links. Pure.

Linux interface names have at most 15 characters, so they are hashed from what they stand
for; the readable name goes into the link's alias (``ip link show`` prints it). MAC addresses
are derived the same way, in the locally administered range QEMU uses (52:54:...).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

IFNAMSIZ = 15


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def bridge_name(project: str, network: str) -> str:
    """``qcb-`` and 10 hex digits: unique per (project, network), the same on every run."""
    return f"qcb-{_digest('bridge', project, network)[:10]}"


def tap_name(project: str, vm: str, network: str) -> str:
    return f"qct-{_digest('tap', project, vm, network)[:10]}"


def partition_table(project: str) -> str:
    """The project's nftables table (bridge family) of `fault partition`."""
    return f"qemu-compose-faults-{_digest('faults', project)[:10]}"


def bridge_alias(project: str, network: str) -> str:
    return f"qemu-compose {project}/{network}"


def tap_alias(project: str, vm: str, network: str) -> str:
    return f"qemu-compose {project}/{vm}/{network}"


def mac_address(project: str, vm: str, network: str, salt: int = 0) -> str:
    """52:54 (locally administered, unicast) and 32 bits of a hash of the NIC's identity."""
    digest = _digest("mac", project, vm, network, str(salt))
    return "52:54:" + ":".join(digest[i : i + 2] for i in range(0, 8, 2))


def assign_macs(
    project: str,
    nics: Iterable[tuple[str, str]],
    derive: Callable[[str, str, str, int], str] = mac_address,
) -> dict[tuple[str, str], str]:
    """A distinct MAC for every (vm, network) NIC of a project; collisions get re-salted."""
    taken: set[str] = set()
    result: dict[tuple[str, str], str] = {}
    for vm, network in sorted(set(nics)):
        salt = 0
        mac = derive(project, vm, network, salt)
        while mac in taken:
            salt += 1
            mac = derive(project, vm, network, salt)
        taken.add(mac)
        result[(vm, network)] = mac
    return result
