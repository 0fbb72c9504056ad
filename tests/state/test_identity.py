"""Whose a unit is, as its Description records it, and the state its Environment carries."""

from __future__ import annotations

import pytest

from orchestrator.state.files import VmState
from orchestrator.state.identity import Owner, owner_of, state_of, state_variable, subnet_of


@pytest.mark.parametrize(
    "owner",
    [
        Owner("vm", "three-tier", "db", "/home/ann/lab"),
        Owner("vm", "p", "web-1", "/srv/with spaces/and ü"),
        Owner("dnsmasq", "p", "backend", "/x"),
        Owner("supervisor", "p", "", "/x"),
        Owner("vm", "p", "db", None),  # an older version's unit: no directory
    ],
)
def test_an_owner_round_trips_through_its_description(owner: Owner) -> None:
    assert owner_of(owner.describe()) == owner


def test_descriptions_of_older_versions_and_of_others() -> None:
    assert owner_of("qemu-compose VM lab/db") == Owner("vm", "lab", "db", None)
    assert owner_of("qemu-compose supervisor of lab") == Owner("supervisor", "lab", "", None)
    assert owner_of("Some other service") is None
    assert owner_of("qemu-compose VM lab/db of relative/path") is None


def test_whose_it_is() -> None:
    mine = Owner("vm", "lab", "db", "/a")
    assert mine.is_of("lab", "/a")
    assert not mine.is_of("lab", "/b")  # the same name from another directory
    assert not mine.is_of("lab2", "/a")
    assert Owner("vm", "lab", "db", None).is_of("lab", "/b")  # older units: by name


def test_the_state_a_unit_carries() -> None:
    state = VmState(unit="u.service", config_hash="abc", created_at=1.5, ssh_port=2222,
                    macs={"nic0": "52:54:00:00:00:01"}, ports=["127.0.0.1:8080->80/tcp"])  # fmt: skip
    environment = ["OTHER=1", state_variable(state)]
    assert state_of(environment) == state
    assert state_of(["QEMU_COMPOSE_VM_STATE={broken"]) is None
    assert state_of([]) is None
    assert subnet_of(["QEMU_COMPOSE_SUBNET=10.1.2.0/24"]) == "10.1.2.0/24"
    assert subnet_of([]) is None
