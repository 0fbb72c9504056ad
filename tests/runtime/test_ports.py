"""Host ports claimed as VMs start: a published range gives each VM its first free port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import netcfg
from orchestrator.config.model import PortMapping, Vm
from orchestrator.runtime.ports import claim_ports


def _free_block(size: int) -> int:
    """The first port of ``size`` consecutive ports that are free now, from 41000."""
    for start in range(41000, 60000, size):
        if all(netcfg.port_is_free(p) for p in range(start, start + size)):
            return start
    raise AssertionError("no free block of ports")


@pytest.fixture(autouse=True)
def _own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))


def _published(forwards: list[netcfg.Forward] | netcfg.NetcfgError) -> list[int]:
    assert isinstance(forwards, list), forwards
    return [f.host_port for f in forwards if f.guest_port == 80]


def test_each_replica_takes_the_next_free_port_of_the_range() -> None:
    base = _free_block(5)
    ranged = Vm(ports=[PortMapping(target=80, published=f"{base}-{base + 4}")])
    fixed = Vm(ports=[PortMapping(target=80, published=base + 2)])
    with socket.socket() as busy:  # someone else listens on the range's first port
        busy.bind(("127.0.0.1", base))
        busy.listen()
        chosen = claim_ports(
            "p", [("w-1", ranged, None), ("w-2", ranged, None), ("f", fixed, None)]
        )
    # base is in use, base + 2 is another VM's fixed port: the range gives way to both
    assert _published(chosen["w-1"]) == [base + 1]
    assert _published(chosen["w-2"]) == [base + 3]
    assert _published(chosen["f"]) == [base + 2]


def test_a_range_with_no_free_port_fails_that_vm_only() -> None:
    base = _free_block(2)
    ranged = Vm(ports=[PortMapping(target=80, published=f"{base}-{base + 1}")])
    other = Vm(ports=[PortMapping(target=80)])
    chosen = claim_ports(
        "p", [("a", ranged, None), ("b", ranged, None), ("c", ranged, None), ("d", other, None)]
    )
    assert _published(chosen["a"]) == [base]
    assert _published(chosen["b"]) == [base + 1]
    failed = chosen["c"]
    assert isinstance(failed, netcfg.PortInUseError)
    assert f"every port up to {base + 1}" in str(failed)
    assert len(_published(chosen["d"])) == 1


def test_a_range_gives_way_to_the_files_fixed_ports_of_vms_not_starting_now(
    tmp_path: Path,
) -> None:
    from orchestrator import load_project
    from orchestrator.runtime.ports import fixed_ports

    base = _free_block(3)
    (tmp_path / "qemu-compose.yaml").write_text(
        f"vms:\n  r: {{ports: ['{base}-{base + 2}:80']}}\n"
        f"  f: {{ports: ['{base}:80'], ssh: {{port: {base + 1}}}}}\n"
    )
    model = load_project(tmp_path / "qemu-compose.yaml", environ={}).model
    fixed = fixed_ports(model.vms.values())
    assert fixed == {base, base + 1}
    chosen = claim_ports("p", [("r", model.vms["r"], None)], fixed)  # r alone
    assert _published(chosen["r"]) == [base + 2]
