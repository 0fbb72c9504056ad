"""Address management: subnets for networks, addresses for VM NICs. Pure.

Every address is decided before a VM boots: ``subnet: auto`` takes a free /24 of
172.16.0.0/12 (reusing last run's when it is still free), each NIC gets an address that it
keeps across runs, and dnsmasq is told all of them as reservations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from .errors import AddressConflictError, AddressExhaustedError, SubnetConflictError

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address

AUTO_POOL = IPv4Network("172.16.0.0/12")
AUTO_PREFIX = 24
FIRST_HOST_OFFSET = 10  # VMs from .10 up where the subnet has room; .2-.9 stay free


class SubnetRequest(msgspec.Struct, frozen=True):
    network: str
    subnet: str  # "auto", or a CIDR


def _blocked_indices(avoid: Iterable[IPv4Network], pool: IPv4Network, prefixlen: int) -> set[int]:
    """Indices of the pool's /prefixlen blocks that overlap any of ``avoid``."""
    size = 1 << (32 - prefixlen)
    base = int(pool.network_address)
    count = pool.num_addresses // size
    blocked: set[int] = set()
    for net in avoid:
        if not net.overlaps(pool):
            continue
        first = max(int(net.network_address), base)
        last = min(int(net.broadcast_address), base + pool.num_addresses - 1)
        blocked.update(range((first - base) // size, min(count, (last - base) // size + 1)))
    return blocked


def allocate_subnets(
    requests: Sequence[SubnetRequest],
    *,
    previous: Mapping[str, IPv4Network] | None = None,
    avoid: Iterable[IPv4Network] = (),
    pool: IPv4Network = AUTO_POOL,
    prefixlen: int = AUTO_PREFIX,
) -> dict[str, IPv4Network]:
    """A subnet for every network: explicit ones checked, "auto" ones chosen.

    ``avoid``: subnets in use elsewhere (host interfaces, other projects). ``previous``: what
    each network had last time, kept when still free, so addresses survive restarts.
    """
    previous = previous or {}
    avoid = list(avoid)
    result: dict[str, IPv4Network] = {}
    for req in requests:
        if req.subnet == "auto":
            continue
        subnet = IPv4Network(req.subnet, strict=True)
        for other in avoid:
            if subnet.overlaps(other):
                raise SubnetConflictError(req.network, str(subnet), f"{other}, already in use")
        for name, taken in result.items():
            if subnet.overlaps(taken):
                raise SubnetConflictError(req.network, str(subnet), f"{taken} of network {name!r}")
        result[req.network] = subnet
    in_use = [*avoid, *result.values()]
    for req in requests:
        if req.subnet != "auto":
            continue
        kept = previous.get(req.network)
        if kept is not None and not any(kept.overlaps(n) for n in in_use):
            result[req.network] = kept
            in_use.append(kept)
    blocked = _blocked_indices(in_use, pool, prefixlen)
    size = 1 << (32 - prefixlen)
    count = pool.num_addresses // size
    base = int(pool.network_address)
    candidate = 0
    for req in requests:
        if req.network in result:
            continue
        while candidate < count and candidate in blocked:
            candidate += 1
        if candidate >= count:
            raise AddressExhaustedError(
                f"network {req.network!r}: no free /{prefixlen} left in {pool}; "
                "give it an explicit subnet, or remove unused networks"
            )
        result[req.network] = IPv4Network((base + candidate * size, prefixlen))
        blocked.add(candidate)
    return result


def gateway(subnet: IPv4Network) -> IPv4Address:
    """The bridge's own address: the first host of the subnet (.1)."""
    return subnet.network_address + 1


def reserved(subnet: IPv4Network) -> set[IPv4Address]:
    return {subnet.network_address, gateway(subnet), subnet.broadcast_address}


def assign_addresses(
    subnet: IPv4Network,
    nics: Sequence[tuple[str, str | None]],
    *,
    previous: Mapping[str, IPv4Address] | None = None,
) -> dict[str, IPv4Address]:
    """An address for each (vm, fixed address or None) in ``subnet``.

    Fixed addresses first; then every VM keeps last run's address if it still can; the rest
    take the lowest free ones (from .10 where the subnet has room).
    """
    previous = previous or {}
    taken = reserved(subnet)
    result: dict[str, IPv4Address] = {}
    for vm, fixed in nics:
        if fixed is None:
            continue
        address = IPv4Address(fixed)
        if address not in subnet or address in reserved(subnet):
            raise AddressConflictError(
                f"VM {vm!r}: {address} is not a free host address of {subnet}"
            )
        if address in taken:
            owner = next((v for v, a in result.items() if a == address), "another VM")
            raise AddressConflictError(f"VM {vm!r}: {address} is also asked for by {owner!r}")
        result[vm] = address
        taken.add(address)
    fixed_vms = set(result)
    for vm, _ in nics:
        kept = previous.get(vm)
        if vm not in fixed_vms and kept is not None and kept in subnet and kept not in taken:
            result[vm] = kept
            taken.add(kept)
    hosts = list(subnet.hosts())
    start = FIRST_HOST_OFFSET - 1 if len(hosts) > 2 * FIRST_HOST_OFFSET else 0
    free = (a for a in hosts[start:] + hosts[:start] if a not in taken)
    for vm, _ in nics:
        if vm in result:
            continue
        found = next(free, None)
        if found is None:
            raise AddressExhaustedError(f"no free address left in {subnet} for VM {vm!r}")
        address = found
        result[vm] = address
        taken.add(address)
    return result
