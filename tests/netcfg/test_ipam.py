"""Subnet and address allocation (pure)."""

from __future__ import annotations

import ipaddress
import re

import pytest

from netcfg import (
    AUTO_POOL,
    AddressConflictError,
    AddressExhaustedError,
    SubnetConflictError,
    SubnetRequest,
    allocate_subnets,
    assign_addresses,
    gateway,
)

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


def test_auto_subnets_are_distinct_24s_from_the_pool() -> None:
    got = allocate_subnets([SubnetRequest("a", "auto"), SubnetRequest("b", "auto")])
    assert got == {"a": N("172.16.0.0/24"), "b": N("172.16.1.0/24")}
    assert gateway(got["a"]) == A("172.16.0.1")


def test_auto_avoids_host_subnets_and_explicit_ones() -> None:
    got = allocate_subnets(
        [
            SubnetRequest("a", "auto"),
            SubnetRequest("x", "172.16.2.0/24"),
            SubnetRequest("b", "auto"),
        ],
        avoid=[N("172.16.0.0/23"), N("172.16.3.128/25"), N("10.0.0.0/8")],
    )
    assert got == {"x": N("172.16.2.0/24"), "a": N("172.16.4.0/24"), "b": N("172.16.5.0/24")}


def test_a_host_address_inside_a_candidate_blocks_it() -> None:
    got = allocate_subnets([SubnetRequest("a", "auto")], avoid=[N("172.16.0.77/32")])
    assert got["a"] == N("172.16.1.0/24")


def test_previous_allocations_are_reused_when_still_free() -> None:
    previous = {"a": N("172.20.7.0/24"), "b": N("172.16.0.0/24")}
    got = allocate_subnets(
        [SubnetRequest("a", "auto"), SubnetRequest("b", "auto")],
        previous=previous,
        avoid=[N("172.16.0.0/16")],  # b's old subnet is taken by the host now
    )
    assert got["a"] == N("172.20.7.0/24")
    assert got["b"] == N("172.17.0.0/24")


def test_explicit_subnet_conflicts() -> None:
    with pytest.raises(
        SubnetConflictError, match=re.escape("overlaps 192.168.0.0/16, already in use")
    ):
        allocate_subnets([SubnetRequest("a", "192.168.10.0/24")], avoid=[N("192.168.0.0/16")])
    with pytest.raises(SubnetConflictError, match="of network 'a'"):
        allocate_subnets([SubnetRequest("a", "10.1.0.0/16"), SubnetRequest("b", "10.1.2.0/24")])


def test_4096_networks_fill_the_pool_and_the_next_is_refused() -> None:
    requests = [SubnetRequest(f"n{i}", "auto") for i in range(4096)]
    got = allocate_subnets(requests)
    assert len(set(got.values())) == 4096
    assert all(net.subnet_of(AUTO_POOL) and net.prefixlen == 24 for net in got.values())
    with pytest.raises(AddressExhaustedError, match=re.escape("no free /24 left in 172.16.0.0/12")):
        allocate_subnets([*requests, SubnetRequest("one-too-many", "auto")])


def test_exhaustion_counts_what_is_avoided() -> None:
    avoid = [N("172.16.0.0/13"), N("172.24.0.0/14"), N("172.28.0.0/15"), N("172.30.0.0/16")]
    got = allocate_subnets([SubnetRequest("a", "auto")], avoid=[*avoid, N("172.31.0.0/17")])
    assert got["a"] == N("172.31.128.0/24")
    with pytest.raises(AddressExhaustedError):
        allocate_subnets([SubnetRequest("a", "auto")], avoid=[N("172.16.0.0/12")])


def test_addresses_from_10_up_fixed_first_previous_kept() -> None:
    subnet = N("10.5.0.0/24")
    got = assign_addresses(
        subnet,
        [("db", None), ("web", "10.5.0.10"), ("app", None), ("cache", None)],
        previous={"cache": A("10.5.0.200"), "db": A("10.5.0.10")},  # db lost .10 to web
    )
    assert got == {
        "web": A("10.5.0.10"),
        "cache": A("10.5.0.200"),
        "db": A("10.5.0.11"),
        "app": A("10.5.0.12"),
    }


def test_replicas_get_distinct_addresses_in_a_small_subnet() -> None:
    got = assign_addresses(N("10.5.0.0/29"), [(f"w-{i}", None) for i in range(1, 6)])
    assert sorted(got.values()) == [A(f"10.5.0.{i}") for i in range(2, 7)]
    with pytest.raises(
        AddressExhaustedError, match=re.escape("no free address left in 10.5.0.0/29")
    ):
        assign_addresses(N("10.5.0.0/29"), [(f"w-{i}", None) for i in range(6)])


@pytest.mark.parametrize("fixed", ["10.5.0.0", "10.5.0.1", "10.5.0.255", "10.6.0.3"])
def test_fixed_addresses_must_be_free_hosts_of_the_subnet(fixed: str) -> None:
    with pytest.raises(AddressConflictError, match=f"VM 'x': {fixed} is not a free host"):
        assign_addresses(N("10.5.0.0/24"), [("x", fixed)])


def test_a_fixed_address_twice() -> None:
    with pytest.raises(AddressConflictError, match="also asked for by 'a'"):
        assign_addresses(N("10.5.0.0/24"), [("a", "10.5.0.9"), ("b", "10.5.0.9")])
