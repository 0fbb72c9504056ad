"""Host ports of VMs (SSH first, then published ports), claimed in the cross-project registry."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import netcfg
from netcfg import Forward
from orchestrator.config.model import Vm

from .plan import PortClaim


def fixed_ports(vms: Iterable[Vm]) -> frozenset[int]:
    """The host ports these VMs name outright (published and SSH), which a range gives way
    to: those VMs have no choice."""
    fixed: set[int] = set()
    for vm in vms:
        fixed |= {p.published for p in vm.ports if isinstance(p.published, int)}
        if vm.ssh.port is not None:
            fixed.add(vm.ssh.port)
    return frozenset(fixed)


def claim_ports(
    project: str, wanted: Sequence[PortClaim], fixed: frozenset[int] = frozenset()
) -> dict[str, list[Forward] | netcfg.NetcfgError]:
    """The ports of every VM of ``wanted``, claimed in one transaction (the registry is locked
    and fsynced: once per VM, it made a queue at 100 VMs); a range avoids ``fixed`` (the
    file's: `fixed_ports`) and those ``wanted`` name. Blocking: call it in a thread.

    A VM whose port cannot be had gets its error, not the others'.
    """
    chosen: dict[str, list[Forward] | netcfg.NetcfgError] = {}
    fixed |= fixed_ports(vm for _, vm, _ in wanted)
    with netcfg.Registry().claims() as claims:
        for name, vm, previous_ssh in wanted:
            try:
                chosen[name] = _choose_ports(claims, project, name, vm, previous_ssh, fixed)
            except netcfg.NetcfgError as err:
                chosen[name] = err
    return chosen


def _choose_ports(
    claims: netcfg.Claims,
    project: str,
    name: str,
    vm: Vm,
    previous_ssh: int | None,
    fixed: frozenset[int],
) -> list[Forward]:
    taken = claims.ports_of_others(project, name)
    try:
        ssh_port = netcfg.choose_port(name, vm.ssh.port or previous_ssh, taken=taken)
    except netcfg.PortInUseError:
        if vm.ssh.port:
            raise
        ssh_port = netcfg.choose_port(name, None, taken=taken)  # last run's port is taken now
    forwards = [Forward(ssh_port, 22)]
    for port in vm.ports:
        mine = {f.host_port for f in forwards}
        offered = port.host_range
        if offered is not None:
            published = netcfg.choose_port_in(
                name, offered, taken=taken | mine | fixed, protocol=port.protocol
            )
        elif isinstance(port.published, int):  # honoured, or a clear error naming it
            published = netcfg.choose_port(
                name, port.published, taken=taken, protocol=port.protocol
            )
        else:
            published = netcfg.choose_port(
                name, None, taken=taken | mine, start=32768, protocol=port.protocol
            )
        forwards.append(Forward(published, port.target, port.host_ip, port.protocol))
    claims.ports[f"{project}/{name}"] = [f.host_port for f in forwards]
    return forwards


def release_ports(project: str, name: str) -> None:
    with netcfg.Registry().claims() as claims:
        claims.ports.pop(f"{project}/{name}", None)
