"""The kept faults (state.faults): what is in force, what a VM's leaving does to partitions,
the record written whole under its lock. No QEMU, no network."""

from __future__ import annotations

import stat
from pathlib import Path

import msgspec
import pytest
import trio

import netcfg
from netcfg.shaping import Shape
from orchestrator.runtime.faults.inject import _heal
from orchestrator.state.faults import (
    DiskFault,
    KeptFaults,
    LinkFault,
    NetFault,
    PartitionFault,
    changing_faults,
    forget_ended,
    in_force,
    qemu_of,
    read_faults,
    undo_commands,
    without_vms,
)


def partition(*groups: tuple[str, ...], one_way: bool = False) -> PartitionFault:
    taps = {f"t-{vm}": vm for group in groups for vm in group}
    drops = [
        (f"t-{a}", f"t-{b}")
        for i, g in enumerate(groups)
        for j, h in enumerate(groups)
        if i != j and (not one_way or i == 0)
        for a in g
        for b in h
    ]
    pids = {vm: 100 + n for n, vm in enumerate(taps.values())}
    return PartitionFault("p1", groups, one_way, ("lan",), taps, tuple(drops), pids, 1.0)


def test_a_vm_leaving_a_partition_takes_its_drops_with_it() -> None:
    cut = partition(("a", "b"), ("c",))
    assert cut.describe() == "partition a,b | c"
    shrunk = cut.without("a")
    assert shrunk is not None
    assert shrunk.groups == (("b",), ("c",))
    assert set(shrunk.drops) == {("t-b", "t-c"), ("t-c", "t-b")}
    assert "a" not in shrunk.qemu_pids
    assert shrunk.without("c") is None  # one group left: nothing divided


def test_a_one_way_partition_ends_without_its_source() -> None:
    cut = partition(("a",), ("b", "c"), one_way=True)
    assert cut.describe() == "partition a -> b,c"
    assert set(cut.drops) == {("t-a", "t-b"), ("t-a", "t-c")}
    assert cut.without("a") is None
    rest = cut.without("b")
    assert rest is not None
    assert rest.drops == (("t-a", "t-c"),)


def test_link_and_disk_faults_hold_while_their_qemu_runs() -> None:
    link = LinkFault("a", "lan", "nic1", 42, 1.0)
    disk = DiskFault("b", "vol-data", "data", 10, 0, 43, 1.0)
    cut = partition(("a",), ("b",))
    pids = {"a": 42, "b": 99}  # b's QEMU is a new one
    assert in_force(link, pids.get)
    assert not in_force(disk, pids.get)
    assert in_force(cut, pids.get)  # drops between TAPs outlive QEMU
    kept = KeptFaults(faults=[link, disk, cut])
    assert forget_ended(kept, pids.get) == [disk]
    assert kept.faults == [link, cut]
    assert (qemu_of(link, "a"), qemu_of(link, "b"), qemu_of(cut, "b")) == (42, None, 101)
    assert disk.describe() == "disk data iops=10"
    assert DiskFault("b", "root", "root", 0, 1024, 1, 1.0).describe() == "disk root bps=1024"


def test_undoing_a_fault_in_qemu() -> None:
    assert undo_commands(LinkFault("a", "lan", "nic1", 1, 1.0)) == [
        ("set_link", {"name": "nic1", "up": True})
    ]
    [(name, args)] = undo_commands(DiskFault("a", "vol-x", "x", 10, 0, 1, 1.0))
    assert name == "block_set_io_throttle"
    assert args["id"] == "vol-x/virtio-backend"  # the disk is inside the PCI device
    assert {k: v for k, v in args.items() if k != "id"} == dict.fromkeys(
        ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"), 0
    )
    assert undo_commands(partition(("a",), ("b",))) == []  # not in QEMU
    shaped = NetFault("a", "lan", "nic1", "egress", Shape(delay=0.1), 1, 1.0)
    assert [name for name, _ in undo_commands(shaped)] == [
        "object-del",  # the filter first: frames flow past it again at once
        "chardev-remove",
        "chardev-remove",
    ]
    assert shaped.describe() == "net lan egress delay=100ms"


def test_without_vms_ends_theirs_and_shrinks_the_rest() -> None:
    mine = LinkFault("a", "lan", "nic1", 1, 1.0)
    theirs = LinkFault("z", "lan", "nic1", 2, 1.0)
    cut = partition(("a", "b"), ("c",))
    kept = KeptFaults(faults=[mine, theirs, cut])
    assert without_vms(kept, ["a"]) == [mine, cut]
    assert kept.faults[0] == theirs
    assert isinstance(kept.faults[1], PartitionFault)
    assert kept.faults[1].groups == (("b",), ("c",))
    assert set(kept.drops()) == {("t-b", "t-c"), ("t-c", "t-b")}
    without_vms(kept, ["b", "z"])
    assert kept.faults == []
    assert kept.drops() == []


def test_the_drops_of_overlapping_partitions_are_each_once() -> None:
    kept = KeptFaults(faults=[partition(("a",), ("b",)), partition(("a",), ("b", "c"))])
    assert kept.drops() == [("t-a", "t-b"), ("t-b", "t-a"), ("t-a", "t-c"), ("t-c", "t-a")]


def test_healing_one_network_leaves_the_others() -> None:
    tap = netcfg.tap_name
    both = PartitionFault(
        "p2",
        (("a",), ("b",)),
        False,
        ("lan", "san"),
        {tap("demo", "a", n): "a" for n in ("lan", "san")}
        | {tap("demo", "b", n): "b" for n in ("lan", "san")},
        tuple(
            pair
            for n in ("lan", "san")
            for pair in [
                (tap("demo", "a", n), tap("demo", "b", n)),
                (tap("demo", "b", n), tap("demo", "a", n)),
            ]
        ),
        {"a": 1, "b": 2},
        1.0,
    )
    elsewhere = msgspec.structs.replace(partition(("x",), ("y",)), networks=("san",))
    kept = KeptFaults(faults=[both, elsewhere])
    assert _heal(kept, "demo", "lan", None) == [both]
    left = kept.faults[0]
    assert isinstance(left, PartitionFault)
    assert left.networks == ("san",)
    assert set(left.drops) == {
        (tap("demo", "a", "san"), tap("demo", "b", "san")),
        (tap("demo", "b", "san"), tap("demo", "a", "san")),
    }
    assert kept.faults[1] == elsewhere  # not on lan: left alone
    assert _heal(kept, "demo", None, "p1") == [elsewhere]  # by id: that one only
    assert kept.faults == [left]


async def test_the_record_is_written_whole_and_only_when_changed(tmp_path: Path) -> None:
    async with changing_faults(tmp_path) as kept:
        assert kept.faults == []
    assert not (tmp_path / "faults.json").exists()  # nothing changed: nothing written
    async with changing_faults(tmp_path) as kept:
        kept.table = "qemu-compose-faults-x"
        kept.faults.append(LinkFault("a", "lan", "nic1", 7, 1.0))
    assert read_faults(tmp_path).faults == [LinkFault("a", "lan", "nic1", 7, 1.0)]
    assert stat.S_IMODE((tmp_path / "faults.json").stat().st_mode) == 0o600

    async def failing() -> None:
        async with changing_faults(tmp_path) as kept:
            kept.faults.clear()
            raise RuntimeError("a failed nft, say")

    with pytest.raises(RuntimeError):
        await failing()
    assert len(read_faults(tmp_path).faults) == 1  # the failure changed nothing


async def test_two_tasks_changing_the_record_take_turns(tmp_path: Path) -> None:
    """Tasks of one process change the record in turn, across what they await: no change
    is lost (without the locks, each would write back what it read, over the others')."""

    async def add(vm: str) -> None:
        async with changing_faults(tmp_path) as kept:
            await trio.sleep(0.05)  # across an await, as the nft call is
            kept.faults.append(LinkFault(vm, "lan", "nic1", 1, 1.0))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for vm in "abc":
                nursery.start_soon(add, vm)
    assert sorted(f.vm for f in read_faults(tmp_path).faults if isinstance(f, LinkFault)) == [
        "a",
        "b",
        "c",
    ]


async def test_an_injection_undoes_what_a_failed_make_left_and_hides_no_error() -> None:
    from orchestrator.api.faults import Injection

    undone: list[object] = []

    async def failing_make() -> list[str]:
        raise RuntimeError("QEMU refused b")

    async def undo(made: list[str] | None) -> None:
        undone.append(made)

    async def enter_failing() -> None:
        async with Injection(failing_make, undo):
            pass

    with pytest.raises(RuntimeError, match="QEMU refused b"):
        await enter_failing()
    assert undone == [None]  # what was asked, undone as far as it goes

    async def make() -> list[str]:
        return ["a"]

    async def failing_undo(made: list[str] | None) -> None:
        raise ValueError("a stopped meanwhile")

    async def body_raises() -> None:
        async with Injection(make, failing_undo):
            raise KeyError("the test's own")

    with pytest.raises(KeyError) as caught:
        await body_raises()
    assert "undoing the fault failed too: a stopped meanwhile" in caught.value.__notes__[0]

    async def body_passes() -> None:
        async with Injection(make, failing_undo):
            pass

    with pytest.raises(ValueError, match="stopped meanwhile"):  # nothing else to hide it
        await body_passes()
    undone.clear()
    async with Injection(make, undo) as made:
        assert made == ["a"]
    assert undone == [["a"]]


def test_nics_are_named_as_launch_numbers_them_and_user_is_the_user_mode_one() -> None:
    from orchestrator.config.model import Vm
    from orchestrator.errors import UsageError
    from orchestrator.runtime.faults.inject import _links_of, _nic

    vm = msgspec.convert({"networks": {"san": {}, "lan": {}}}, Vm)
    assert [(n, _nic(vm, n)) for n in _links_of("a", vm, None)] == [
        ("", "nic0"),  # the user-mode NIC first, then the networks by name
        ("lan", "nic1"),
        ("san", "nic2"),
    ]
    assert _links_of("a", vm, "user") == [""]
    with pytest.raises(UsageError, match="not on network 'wan'"):
        _links_of("a", vm, "wan")
    odd = msgspec.convert({"networks": {"user": {}}}, Vm)  # a bridge network named "user"
    assert _links_of("a", odd, "user") == ["user"]
    assert _nic(odd, "user") == "nic1"
    assert LinkFault("a", "", "nic0", 1, 1.0).describe() == "link user down"
