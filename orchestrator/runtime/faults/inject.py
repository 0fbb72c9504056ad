"""Faults kept until undone: a link cut (QMP set_link), a disk throttled (QMP
block_set_io_throttle), a partition between groups of VMs (drops in the project's nftables
table, bridge family); a kernel panic on demand (QMP inject-nmi); `fault ls`, `fault clear`.

What is in force is kept in faults.json (state.faults): `ps`, `inspect` and `fault ls` show
it; `fault clear`, `stop` and `destroy` undo what they concern; the supervisor undoes a VM's
faults when its restart policy restarts it. Each fault and each undoing is a step of the
command, so the event log (`watch`) has them: FAULT and HEAL, with what was done. Each
takes ``lenient`` (for an undoing): a VM named that no longer runs is passed over.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

import netcfg
import qmp
import systemd_dbus
from netcfg.shaper import PipeSpec, ShaperSpec
from netcfg.shaping import Shape
from orchestrator.config.model import Vm
from orchestrator.config.project import Project
from orchestrator.config.quantities import parse_size
from orchestrator.config.topology import instances
from orchestrator.errors import UsageError
from orchestrator.guest.mounts import volume_node
from orchestrator.progress import Reporter, Stage, Status
from orchestrator.state.faults import (
    DiskErrorFault,
    DiskFault,
    Fault,
    KeptFaults,
    LinkFault,
    NetFault,
    PartitionFault,
    already_undone,
    changing_faults,
    forget_ended,
    in_force,
    qemu_pid,
    read_faults,
    set_link_args,
    throttle_args,
    undo_commands,
    without_vms,
)
from orchestrator.state.identity import Owner, project_dir
from orchestrator.state.paths import shaper_unit

from ..options import QMP_ANSWER, Connection
from ..session import Session, open_session
from .freeze import FaultError, _each, _Failed, _freeze, _running

PANIC_WAIT = 30.0  # seconds for the guest to say it panicked after the NMI (TCG is slow)
USER_NIC = "user"  # what `fault link` and `fault net` call a VM's user-mode NIC ("" inside)


class FaultRow(msgspec.Struct, frozen=True):
    """A fault in force, as `fault ls` shows it."""

    kind: str  # link, disk, partition, paused
    vms: list[str]
    detail: str  # "link lan down", "disk root iops=10", "partition a,b | c", "paused"
    since: float | None


def pids(session: Session) -> Callable[[str], int | None]:
    """The PID of each VM's QEMU now (None: none runs)."""
    return lambda vm: qemu_pid(session.paths.vm(vm).pidfile)


def _models(session: Session) -> dict[str, Vm]:
    return {i.name: i.vm for i in instances(session.project.model)}


def _nic(vm: Vm, network: str) -> str:
    """QEMU's netdev id of a NIC: nic0 the user-mode one, then one a network in name order
    (as launch.vm_launch numbers them)."""
    return "nic0" if network == "" else f"nic{sorted(vm.networks).index(network) + 1}"


async def _qmp(session: Session, vm: str, command: str, args: dict[str, Any]) -> Any:
    """One command on the VM's control monitor; _Failed, saying why, when it fails."""
    socket = str(session.paths.vm(vm).qmp_control_socket)
    try:
        async with qmp.open_session(socket, timeout=QMP_ANSWER, name=vm) as control:
            return await control.execute(command, args)
    except (qmp.QmpConnectError, qmp.QmpTimeoutError):
        raise _Failed(f"QEMU did not answer QMP within {QMP_ANSWER:g} s") from None
    except qmp.QmpError as err:
        raise _Failed(str(err)) from err


def _model_of(session: Session, vm: str) -> Vm:
    found = _models(session).get(vm)
    if found is None:  # an orphan: in the state, no longer in the file
        raise UsageError(f"{vm} is not in {session.project.compose_file.name}: stop it first")
    return found


# -- link ---------------------------------------------------------------------------------------


async def link(
    project: Project,
    vms: Sequence[str],
    network: str | None,
    connection: Connection,
    report: Reporter,
    *,
    up: bool,
    lenient: bool = False,
) -> list[str]:
    """Set the links of running VMs' NICs down (or up again): on ``network`` ("user": the
    user-mode NIC), or every NIC of theirs. Returns the VMs changed."""
    verb = "restore the link of" if up else "cut the link of"
    stage = Stage.HEAL if up else Stage.FAULT
    async with open_session(project, connection, report) as session:
        names = _running(session, vms, verb, lenient=lenient)
        nets = {vm: _links_of(vm, _model_of(session, vm), network) for vm in names}
        pid_of = pids(session)
        done: list[str] = []

        async def step(vm: str) -> None:
            model = _model_of(session, vm)
            changed: list[str] = []
            for net in nets[vm]:
                try:
                    await _qmp(session, vm, "set_link", set_link_args(_nic(model, net), up=up))
                except BaseException as err:  # (Cancelled too) the others back: all or none
                    with trio.CancelScope(shield=True), trio.move_on_after(QMP_ANSWER * 2):
                        for back in changed:
                            with contextlib.suppress(_Failed):
                                await _qmp(session, vm, "set_link",
                                           set_link_args(_nic(model, back), up=not up))  # fmt: skip
                    if isinstance(err, _Failed):
                        session.report(vm, stage, Status.FAILED, str(err))
                    raise
                changed.append(net)
            async with changing_faults(session.paths.state_dir) as kept:
                kept.faults = [f for f in kept.faults if not _link_of(f, vm, nets[vm])]
                if not up:
                    pid, now = pid_of(vm) or 0, time.time()
                    kept.faults += [LinkFault(vm, n, _nic(model, n), pid, now) for n in nets[vm]]
            session.report(
                vm, stage, Status.DONE, f"link {_said(nets[vm])} {'up' if up else 'down'}"
            )
            done.append(vm)

        await _each(names, verb, step)
        return [n for n in names if n in done]


def _said(networks: Sequence[str]) -> str:
    return ",".join(n or USER_NIC for n in networks)


def _link_of(fault: Fault, vm: str, networks: Sequence[str]) -> bool:
    return isinstance(fault, LinkFault) and fault.vm == vm and fault.network in networks


def _links_of(name: str, vm: Vm, network: str | None) -> list[str]:
    networks = sorted(vm.networks)
    if network is None:
        return ["", *networks]
    if network in networks:  # (a bridge network may be called "user" too: it comes first)
        return [network]
    if network == USER_NIC:
        return [""]
    nics = ", ".join([f"{USER_NIC} (its user-mode NIC)", *networks])
    raise UsageError(f"{name} is not on network {network!r} (its NICs: {nics})")


# -- disk ---------------------------------------------------------------------------------------


async def disk(
    project: Project,
    vms: Sequence[str],
    drive: str,
    connection: Connection,
    report: Reporter,
    *,
    iops: int = 0,
    bps: int | str = 0,
    lenient: bool = False,
) -> list[str]:
    """Throttle a disk of running VMs ("root", or a named volume they mount) to ``iops``
    operations and ``bps`` bytes a second (a size: "1M"; 0: no limit; both 0: the throttle
    taken off). Returns the VMs changed."""
    try:
        bps = parse_size(bps) if bps not in (0, "0") else 0
    except ValueError as err:
        raise UsageError(f"--bps: {err}") from None
    if iops < 0 or bps < 0:
        raise UsageError("--iops and --bps are at least 1 (0: no limit)")
    clearing = not iops and not bps
    stage = Stage.HEAL if clearing else Stage.FAULT
    async with open_session(project, connection, report) as session:
        names = _running(session, vms, "throttle the disk of", lenient=lenient)
        devices = {vm: _device(vm, _model_of(session, vm), drive) for vm in names}
        pid_of = pids(session)
        done: list[str] = []

        async def step(vm: str) -> None:
            device = devices[vm]
            try:
                await _qmp(
                    session, vm, "block_set_io_throttle", throttle_args(device, iops=iops, bps=bps)
                )
            except _Failed as err:
                session.report(vm, stage, Status.FAILED, str(err))
                raise
            fault = DiskFault(vm, device, drive, iops, bps, pid_of(vm) or 0, time.time())
            async with changing_faults(session.paths.state_dir) as kept:
                kept.faults = [
                    f for f in kept.faults
                    if not (isinstance(f, DiskFault) and f.vm == vm and f.drive == device)
                ]  # fmt: skip
                if not clearing:
                    kept.faults.append(fault)
            session.report(
                vm,
                stage,
                Status.DONE,
                f"disk {drive} unthrottled" if clearing else fault.describe(),
            )
            done.append(vm)

        await _each(names, "throttle the disk of", step)
        return [n for n in names if n in done]


ERROR_KINDS = {"read": ["read"], "write": ["write"], "all": ["read", "write"]}
# blkdebug sits under qcow2, so it sees qcow2's own metadata I/O too, which must not fail
# (or the disk could not be flushed, nor the node taken out again). qcow2 announces each
# guest data request (read_aio, write_aio) and each metadata one (the others): an error rule
# is armed by the former, and an errno-0 rule (no error) disarms it at each of the latter:
# blkdebug keeps only the rules the last announcing event armed.
_DATA_EVENTS = {"read": "read_aio", "write": "write_aio"}
_METADATA_EVENTS = (
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
    "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
    "read_backing_aio", "cow_read", "cow_write", "reftable_load", "reftable_grow",
    "reftable_update", "refblock_load", "refblock_update", "refblock_update_part",
    "refblock_alloc", "refblock_alloc_hookup", "refblock_alloc_write",
    "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table",
    "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "cluster_alloc_space",
    "l1_shrink_write_table", "l1_shrink_free_l2_clusters", "empty_image_prepare",
    "vmstate_load", "vmstate_save",
)  # fmt: skip


def error_rules(kind: str) -> list[dict[str, Any]]:
    """blkdebug's inject-error rules: EIO on the guest's data requests of ``kind``, never on
    qcow2's metadata."""
    rules: list[dict[str, Any]] = [
        {"event": _DATA_EVENTS[io], "errno": 5, "iotype": io} for io in ERROR_KINDS[kind]
    ]
    return rules + [{"event": event, "errno": 0} for event in _METADATA_EVENTS]


async def disk_errors(
    project: Project,
    vms: Sequence[str],
    drive: str,
    connection: Connection,
    report: Reporter,
    *,
    kind: str | None,
    lenient: bool = False,
) -> list[str]:
    """Make a disk's reads, writes or both ("all") fail with EIO in running VMs (a blkdebug
    node put between the disk's format node and its file); ``kind`` None: no longer.
    Returns the VMs changed."""
    if kind is not None and kind not in ERROR_KINDS:
        raise UsageError(f"--error is read, write or all, not {kind!r}")
    stage = Stage.HEAL if kind is None else Stage.FAULT
    async with open_session(project, connection, report) as session:
        names = _running(session, vms, "make errors on the disk of", lenient=lenient)
        devices = {vm: _device(vm, _model_of(session, vm), drive) for vm in names}
        done: list[str] = []

        async def step(vm: str) -> None:
            try:
                changed = await _set_errors(session, vm, devices[vm], drive, kind)
            except _Failed as err:
                session.report(vm, stage, Status.FAILED, str(err))
                raise
            if changed:
                what = f"{kind} errors" if kind else "no errors"
                session.report(vm, stage, Status.DONE, f"disk {drive} {what}")
                done.append(vm)

        await _each(names, "make errors on the disk of", step)
        return [n for n in names if n in done]


async def _set_errors(session: Session, vm: str, device: str, label: str, kind: str | None) -> bool:
    paths = session.paths.vm(vm)
    pid = qemu_pid(paths.pidfile) or 0
    read_only = any(
        m.read_only for m in _model_of(session, vm).volumes if volume_node(m.source) == device
    )
    async with changing_faults(session.paths.state_dir) as kept:
        mine = [
            f for f in kept.faults
            if isinstance(f, DiskErrorFault) and f.vm == vm and f.drive == device
        ]  # fmt: skip
        before = next((f for f in mine if f.qemu_pid == pid), None)
        if before is not None and before.kind == kind:
            return False
        try:
            async with qmp.open_session(
                str(paths.qmp_control_socket), timeout=QMP_ANSWER, name=vm
            ) as control:
                if before is not None:  # the old rules out first
                    for command in undo_commands(before):
                        await control.execute(*command)
                made = None
                if kind is not None:
                    made = await _insert_errors(control, vm, device, label, kind, read_only)
                    made = msgspec.structs.replace(made, qemu_pid=pid)
        except (qmp.QmpConnectError, qmp.QmpTimeoutError):
            raise _Failed(f"QEMU did not answer QMP within {QMP_ANSWER:g} s") from None
        except qmp.QmpError as err:
            raise _Failed(str(err)) from err
        kept.faults = [f for f in kept.faults if f not in mine] + ([made] if made else [])
        return before is not None or made is not None


async def _insert_errors(
    control: qmp.QmpSession, vm: str, device: str, label: str, kind: str, read_only: bool
) -> DiskErrorFault:
    """blkdebug between the format node and its file; taken out again if the reopen fails."""
    graph = await control.execute("x-debug-query-block-graph")
    names = {n["id"]: n["name"] for n in graph["nodes"]}
    children = {
        e["name"]: names[e["child"]] for e in graph["edges"] if names.get(e["parent"]) == device
    }
    if "file" not in children:
        raise _Failed(f"QEMU has no disk node {device!r}")
    fault = DiskErrorFault(
        vm, device, label, kind, children["file"], children.get("backing"), read_only, 0,
        time.time(),
    )  # fmt: skip
    await control.execute(
        "blockdev-add",
        {"driver": "blkdebug", "node-name": fault.node, "image": fault.file,
         "inject-error": error_rules(kind)},
    )  # fmt: skip
    try:
        await control.execute("blockdev-reopen", fault.reopen(fault.node))
    except qmp.QmpError:
        with contextlib.suppress(qmp.QmpError):
            await control.execute("blockdev-del", {"node-name": fault.node})
        raise
    return fault


def _device(name: str, vm: Vm, drive: str) -> str:
    """The device id of a VM's disk: "root", or the block node of a named volume."""
    volumes = [m.source for m in vm.volumes if m.type == "volume"]
    have = ", ".join((["root"] if vm.image is not None else []) + volumes) or "none"
    if drive == "root" and vm.image is not None:
        return "root"
    if drive != "root" and drive in volumes:
        return volume_node(drive)
    raise UsageError(f"{name} has no disk {drive!r} (its disks: {have})")


# -- net --------------------------------------------------------------------------------------

DIRECTIONS = ("egress", "ingress")  # what the VM sends, what it receives
# QEMU's netfilter queues: rx holds what the netdev receives (from the guest's NIC), tx
# what it sends (to the guest)
_QUEUES = {"egress": "rx", "ingress": "tx"}
SHAPER_READY = 10.0  # seconds for the shaper to connect to QEMU's sockets
SHAPE_PREFIX = "qc-shape-"  # QEMU's ids of the filters and chardevs of `fault net`


async def net(
    project: Project,
    vms: Sequence[str],
    network: str | None,
    connection: Connection,
    report: Reporter,
    *,
    shape: Shape | None,
    directions: Sequence[str] = DIRECTIONS,
    lenient: bool = False,
) -> list[str]:
    """Shape the traffic of running VMs' NICs (on ``network``, "user" for the user-mode NIC;
    else on every bridge network of theirs) in ``directions``; ``shape`` None: unshaped.
    A new shape replaces the one a direction had. Returns the VMs changed."""
    verb = "shape the network of"
    stage = Stage.HEAL if shape is None else Stage.FAULT
    if shape is not None and shape.is_noop:
        raise UsageError("say how to shape it: --delay, --loss, --rate, ... (or --clear)")
    async with open_session(project, connection, report) as session:
        names = _running(session, vms, verb, lenient=lenient)
        nets = {vm: _shaped_networks(vm, _model_of(session, vm), network) for vm in names}
        done: list[str] = []

        async def step(vm: str) -> None:
            model = _model_of(session, vm)
            try:
                changed = await _reshape(session, vm, model, nets[vm], directions, shape)
            except _Failed as err:
                session.report(vm, stage, Status.FAILED, str(err))
                raise
            if changed:
                what = shape.describe() if shape is not None else "unshaped"
                where = f"{_said(nets[vm])} {'/'.join(directions)}"
                session.report(vm, stage, Status.DONE, f"net {where} {what}")
                done.append(vm)

        await _each(names, verb, step)
        return [n for n in names if n in done]


def shape_of(
    *,
    delay: str | None = None,
    jitter: str | None = None,
    loss: str | None = None,
    duplicate: str | None = None,
    corrupt: str | None = None,
    reorder: str | None = None,
    rate: str | None = None,
) -> Shape:
    """A Shape from options as tc writes them ("100ms", "5%", "1mbit"); a UsageError names
    the option that is wrong."""
    from netcfg import shaping

    given = {"delay": delay, "jitter": jitter, "loss": loss, "duplicate": duplicate,
             "corrupt": corrupt, "reorder": reorder, "rate": rate}  # fmt: skip
    parsers = {"delay": shaping.parse_duration, "jitter": shaping.parse_duration,
               "rate": shaping.parse_rate}  # fmt: skip
    values: dict[str, Any] = {}
    for name, text in given.items():
        if text is None:
            continue
        try:
            values[name] = parsers.get(name, shaping.parse_percent)(str(text))
        except ValueError as err:
            raise UsageError(f"--{name}: {err}") from None
    if values.get("jitter") and not values.get("delay"):
        raise UsageError("--jitter varies a --delay: give one")
    if values.get("reorder") and not values.get("delay"):
        raise UsageError("--reorder sends some frames ahead of delayed ones: give a --delay")
    return Shape(**values)


def _shaped_networks(name: str, vm: Vm, network: str | None) -> list[str]:
    if network is None:
        if not vm.networks:
            raise UsageError(
                f"{name} is on no bridge network: name `{USER_NIC}` to shape its user-mode NIC"
            )
        return sorted(vm.networks)
    return _links_of(name, vm, network)


async def _reshape(
    session: Session,
    vm: str,
    model: Vm,
    networks: Sequence[str],
    directions: Sequence[str],
    shape: Shape | None,
) -> bool:
    """Carry out one VM's change: chardevs, its shaper unit, the filters; False if nothing
    was to change. The record is held meanwhile: what QEMU has follows it. A change that
    fails (or is cancelled) halfway leaves the VM unshaped, QEMU and the record alike."""
    paths = session.paths.vm(vm)
    pid = qemu_pid(paths.pidfile) or 0
    shaper = session.units.shapers.get(vm)
    failure: BaseException | None = None
    async with changing_faults(session.paths.state_dir) as kept:
        before = {
            (f.nic, f.direction): f
            for f in kept.faults
            if isinstance(f, NetFault) and f.vm == vm and f.qemu_pid == pid
        }
        after = dict(before)
        for net in networks:
            for direction in directions:
                key = (_nic(model, net), direction)
                if shape is None:
                    after.pop(key, None)
                elif key not in before or before[key].shape != shape:
                    after[key] = NetFault(vm, net, key[0], direction, shape, pid, time.time())
        alive = shaper is not None and shaper.active_state.running
        if after == before and (alive or not after):
            return False  # (a shaper that died is made anew: its frames went nowhere)
        others = [f for f in kept.faults if not (isinstance(f, NetFault) and f.vm == vm)]
        try:
            await _shape_in_qemu(session, vm, list(after.values()))
            kept.faults = others + list(after.values())
        except BaseException as err:  # (Cancelled too) nothing half made stays
            failure = err
            cleaned = False
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(QMP_ANSWER * 3),
                contextlib.suppress(Exception),
            ):
                await _shape_in_qemu(session, vm, [])
                cleaned = True
            # unshaped, or (QEMU did not answer) kept as it was: the next change sweeps it
            kept.faults = others if cleaned else others + list(before.values())
    if isinstance(failure, _Failed | qmp.QmpError | systemd_dbus.SystemdError):
        raise _Failed(f"{failure} (the VM is left unshaped)") from failure
    if failure is not None:
        raise failure
    return True


async def _shape_in_qemu(session: Session, vm: str, faults: list[NetFault]) -> None:
    """QEMU's filters and chardevs and the shaper unit as ``faults`` need them, whatever
    QEMU had: all anew, also those that stay (a redirector stops reading its indev for good
    once its peer, the old shaper, has gone: QEMU 7.2's filter-mirror.c)."""
    paths = session.paths.vm(vm)
    socket = str(paths.qmp_control_socket)
    try:
        async with qmp.open_session(socket, timeout=QMP_ANSWER, name=vm) as control:
            objects = await control.execute("qom-list", {"path": "/objects"})
            for found in objects:
                if found["name"].startswith(SHAPE_PREFIX):
                    await control.execute("object-del", {"id": found["name"]})
            for chardev in await control.execute("query-chardev"):
                if chardev["label"].startswith(SHAPE_PREFIX):
                    await control.execute("chardev-remove", {"id": chardev["label"]})
            for fault in faults:
                for chardev, path in zip(fault.ids[1:], fault.sockets(paths.sockets), strict=True):
                    path.unlink(missing_ok=True)
                    await control.execute("chardev-add", _listening(chardev, path))
            await _run_shaper(session, vm, faults)
            if faults:
                await _connected(control, [i for f in faults for i in f.ids[1:]])
            for fault in faults:
                name, out, into = fault.ids
                await control.execute("object-add", {
                    "qom-type": "filter-redirector", "id": name, "netdev": fault.nic,
                    "queue": _QUEUES[fault.direction], "outdev": out, "indev": into,
                    "vnet_hdr_support": True,
                })  # fmt: skip
    except (qmp.QmpConnectError, qmp.QmpTimeoutError):
        raise _Failed(f"QEMU did not answer QMP within {QMP_ANSWER:g} s") from None


def _listening(chardev: str, path: Path) -> dict[str, Any]:
    """chardev-add's arguments: a unix socket QEMU listens on, not waiting for a peer."""
    address = {"type": "unix", "data": {"path": str(path)}}
    backend = {"type": "socket", "data": {"addr": address, "server": True, "wait": False}}
    return {"id": chardev, "backend": backend}


async def _run_shaper(session: Session, vm: str, faults: list[NetFault]) -> None:
    """The VM's shaper unit, (re)started with every pipe it must run; none: stopped."""
    unit = shaper_unit(session.project.name, vm)
    status = await session.manager.status(unit)
    other = session.taken(status, "shaper", vm)
    if other is not None:
        raise _Failed(f"{unit} is {other}")
    if status.exists:  # (also one still deactivating: its name must be free)
        await session.manager.stop(unit, timeout=10)
    if (await session.manager.status(unit)).is_failed:
        await session.manager.reset_failed(unit)
    if not faults:
        return
    sockets = session.paths.vm(vm).sockets
    spec = ShaperSpec([
        PipeSpec(str(f.sockets(sockets)[0]), str(f.sockets(sockets)[1]), f.shape)
        for f in faults
    ])  # fmt: skip
    await session.manager.start(
        systemd_dbus.TransientUnit(
            unit,
            [sys.executable, "-m", "netcfg.shaper", msgspec.json.encode(spec).decode()],
            description=Owner(
                "shaper", session.project.name, vm, project_dir(session.project)
            ).describe(),
            working_directory=str(session.project.state_dir),
        )
    )


async def _connected(control: qmp.QmpSession, chardevs: list[str]) -> None:
    """Until the shaper is connected to each of QEMU's ``chardevs`` (query-chardev names the
    peer of a connected socket; "disconnected:" before)."""
    with trio.move_on_after(SHAPER_READY):
        while True:
            found = {c["label"]: c["filename"] for c in await control.execute("query-chardev")}
            if all(not found.get(c, "disconnected:").startswith("disconnected") for c in chardevs):
                return
            await trio.sleep(0.05)
    raise _Failed(f"the shaper did not connect to QEMU within {SHAPER_READY:g} s")


# -- partition ----------------------------------------------------------------------------------


async def partition(
    project: Project,
    groups: Sequence[Sequence[str]],
    network: str | None,
    connection: Connection,
    report: Reporter,
    *,
    one_way: bool = False,
) -> PartitionFault:
    """Drop the traffic between groups of running VMs on their bridge networks (``network``
    only, if given); ``one_way``: only what the first group sends to the others."""
    if len(groups) < 2:
        raise UsageError("a partition needs two groups of VMs at least (e.g. a,b c)")
    if network is not None and network not in project.model.networks:
        known = ", ".join(project.model.networks) or "none"
        raise UsageError(f"no network {network!r} in this project (its networks: {known})")
    async with open_session(project, connection, report) as session:
        sides = [_running(session, group, "partition") for group in groups]
        seen: dict[str, int] = {}
        for i, side in enumerate(sides):
            for vm in side:
                if seen.setdefault(vm, i) != i:
                    raise UsageError(f"{vm} is in two groups of the partition")
        models = _models(session)
        for vm in seen:
            if vm not in models:
                raise UsageError(f"{vm} is not in {project.compose_file.name}: stop it first")
            if network is not None and network not in models[vm].networks:
                raise UsageError(f"{vm} is not on network {network!r}")
        fault = _partition(session, sides, network, models, one_way)
        if not fault.drops:
            raise UsageError("these VMs share no bridge network: there is nothing to partition")
        async with changing_faults(session.paths.state_dir) as kept:
            kept.table = netcfg.partition_table(project.name)
            kept.faults.append(fault)
            await _apply_drops(session, kept)
        for vm in seen:
            session.report(vm, Stage.FAULT, Status.DONE, fault.describe())
        return fault


def _partition(
    session: Session,
    sides: list[list[str]],
    network: str | None,
    models: dict[str, Vm],
    one_way: bool,
) -> PartitionFault:
    project = session.project.name
    taps: dict[str, str] = {}
    drops: list[tuple[str, str]] = []
    nets = [network] if network is not None else sorted(session.project.model.networks)
    for net in nets:
        for i, side in enumerate(sides):
            for j, other in enumerate(sides):
                if i == j or (one_way and i != 0):
                    continue
                for a in side:
                    for b in other:
                        if net in models[a].networks and net in models[b].networks:
                            ta, tb = (
                                netcfg.tap_name(project, a, net),
                                netcfg.tap_name(project, b, net),
                            )
                            taps[ta], taps[tb] = a, b
                            drops.append((ta, tb))
    pid_of = pids(session)
    on = [net for net in nets if any(netcfg.tap_name(project, vm, net) in taps for vm in models)]
    return PartitionFault(
        id=secrets.token_hex(4),
        groups=tuple(tuple(side) for side in sides),
        one_way=one_way,
        networks=tuple(on),  # those it drops something on
        taps=taps,
        drops=tuple(drops),
        qemu_pids={vm: pid_of(vm) or 0 for side in sides for vm in side},
        since=time.time(),
    )


async def _apply_drops(session: Session, kept: KeptFaults) -> None:
    if kept.table:
        await netcfg.set_partition_drops(kept.table, kept.drops(), plumbing=await session.links())


async def forget_partitions(session: Session) -> None:
    """For `destroy` of the whole project: the partitions' table as the record has it (no
    table once no partition is left), also when a crash left drops the record never had."""
    state_dir = session.paths.state_dir
    if not session.project.model.networks and not session.state.subnets:
        return  # no bridge: nothing was ever partitioned
    async with changing_faults(state_dir) as kept:
        table = kept.table or netcfg.partition_table(session.project.name)
        with contextlib.suppress(netcfg.NetcfgError, OSError):  # no nft here: none made
            links = await session.links()
            await netcfg.set_partition_drops(table, kept.drops(), plumbing=links)


async def heal(
    project: Project,
    network: str | None,
    connection: Connection,
    report: Reporter,
    *,
    only: str | None = None,
) -> list[PartitionFault]:
    """End the partitions (on ``network`` only, if given; the one of id ``only``, if given);
    returns those ended or changed, as they were."""
    if network is not None and network not in project.model.networks:
        known = ", ".join(project.model.networks) or "none"
        raise UsageError(f"no network {network!r} in this project (its networks: {known})")
    async with open_session(project, connection, report) as session:
        if not project.model.networks and not session.state.subnets:
            return []  # no bridge network: no partition
        async with changing_faults(session.paths.state_dir) as kept:
            healed = _heal(kept, project.name, network, only)
            rootless = session.network_mode == "rootless"
            if kept.table or rootless or netcfg.has_net_admin():  # (a crash: drops unkept)
                table = kept.table or netcfg.partition_table(project.name)
                links = await session.links()
                await netcfg.set_partition_drops(table, kept.drops(), plumbing=links)
        for fault in healed:
            for vm in dict.fromkeys(fault.taps.values()):
                session.report(vm, Stage.HEAL, Status.DONE, fault.describe() + " healed")
        return healed


def _heal(
    kept: KeptFaults, project: str, network: str | None, only: str | None
) -> list[PartitionFault]:
    healed: list[PartitionFault] = []
    left: list[Fault] = []
    for fault in kept.faults:
        if (
            not isinstance(fault, PartitionFault)
            or (network is not None and network not in fault.networks)
            or (only is not None and fault.id != only)
        ):
            left.append(fault)
            continue
        healed.append(fault)
        if network is not None and len(fault.networks) > 1:  # it stays on its other networks
            on = {netcfg.tap_name(project, vm, network) for vm in fault.taps.values()}
            rest = tuple(d for d in fault.drops if not set(d) & on)
            nets = tuple(n for n in fault.networks if n != network)
            if rest:
                left.append(msgspec.structs.replace(fault, drops=rest, networks=nets))
    kept.faults = left
    return healed


# -- panic --------------------------------------------------------------------------------------


async def panic(
    project: Project, vms: Sequence[str], connection: Connection, report: Reporter
) -> list[str]:
    """A kernel panic in running VMs' guests: an NMI (QMP inject-nmi), on which the kernels
    of our guests panic (our cloud-init sets kernel.unknown_nmi_panic). Waits for the guest
    to say so (GUEST_PANICKED, through the pvpanic device), or for QEMU to end."""
    async with open_session(project, connection, report) as session:
        names = _running(session, vms, "panic")
        firmware = [vm for vm in names if not _model_of(session, vm).has_os]
        if firmware:
            raise UsageError(f"no kernel to panic in {', '.join(firmware)} (no image, no boot)")

        async def step(vm: str) -> None:
            why = await _panic(session, vm)
            if why:
                session.report(vm, Stage.FAULT, Status.FAILED, why)
                raise _Failed(why)
            session.report(vm, Stage.FAULT, Status.DONE, "kernel panic (NMI)")

        await _each(names, "panic", step)
        return names


async def _panic(session: Session, vm: str) -> str:
    """inject-nmi, then wait for the panic; "" when it came, else why not."""
    socket = str(session.paths.vm(vm).qmp_control_socket)
    try:
        async with (
            qmp.open_session(socket, timeout=QMP_ANSWER, name=vm) as control,
            control.events(["GUEST_PANICKED"]) as stream,
        ):
            await control.execute("inject-nmi")
            with trio.move_on_after(PANIC_WAIT):
                async for _ in stream:
                    return ""
                return ""  # QEMU ended: -action panic=exit-failure
    except (qmp.QmpConnectError, qmp.QmpTimeoutError):
        return f"QEMU did not answer QMP within {QMP_ANSWER:g} s"
    except qmp.VmGoneError:
        return ""  # it ended with the panic (no restart policy: panic=exit-failure)
    except qmp.QmpError as err:
        return str(err)
    return (
        f"no panic within {PANIC_WAIT:g} s of the NMI: the guest's kernel ignores NMIs "
        "(kernel.unknown_nmi_panic is 0: an image without cloud-init's bootcmd) or has no "
        "pvpanic driver to say so"
    )


# -- ls and clear -------------------------------------------------------------------------------


async def ls(project: Project, connection: Connection) -> list[FaultRow]:
    """The faults in force: those kept (but those whose QEMU has ended), and paused guests."""
    from ..query import vm_rows

    async with open_session(project, connection, Reporter(), lock=False) as session:
        kept = read_faults(session.paths.state_dir)
        pid_of = pids(session)
        rows = [_row(f) for f in kept.faults if in_force(f, pid_of)]
        paused = [r.name for r in await vm_rows(session, session.names(())) if r.state == "paused"]
        rows += [FaultRow("paused", [vm], "paused", None) for vm in paused]
        return rows


def _row(fault: Fault) -> FaultRow:
    kinds = {LinkFault: "link", DiskFault: "disk", DiskErrorFault: "disk", NetFault: "net",
             PartitionFault: "partition"}  # fmt: skip
    return FaultRow(kinds[type(fault)], _vms_of(fault), fault.describe(), fault.since)


async def clear(
    project: Project, vms: Sequence[str], connection: Connection, report: Reporter
) -> list[str]:
    """Undo every fault of the VMs named (none named: of all): links up, throttles off,
    out of partitions, guests unpaused. Returns the VMs that had some."""
    async with open_session(project, connection, report) as session:
        names = session.names(vms)
        running = _running(session, (), "clear")
        paused: list[str] = []

        async def unpause(vm: str) -> None:
            if await _freeze(session, vm, paused=False, named=False):
                paused.append(vm)

        await _each([n for n in running if n in names], "unpause", unpause)
        cleared = await clear_faults(session, names, strict=True)
        return [n for n in names if n in cleared or n in paused]


async def clear_faults(
    session: Session, names: Sequence[str], *, why: str = "", strict: bool = False
) -> set[str]:
    """Take ``names`` out of every kept fault, undoing in QEMU what is still there (a VM that
    no longer runs has nothing left to undo) and rewriting the partitions' drops. For
    `fault clear`, `stop` and `destroy`; reports HEAL for each VM (``why``: for what).
    ``strict`` (`fault clear`): a fault QEMU would not take back stays kept, and is a
    FaultError; otherwise (the VM stops next) it is forgotten. Returns the VMs cleared."""
    state_dir = session.paths.state_dir
    if not (state_dir / "faults.json").exists():
        return set()  # the common case: no fault was ever made here
    pid_of = pids(session)
    refused: list[tuple[Fault, str]] = []  # (fault, why QEMU would not take it back)
    async with changing_faults(state_dir) as kept:
        forget_ended(kept, pid_of)
        changed = without_vms(kept, names)
        for fault in changed:
            if isinstance(fault, PartitionFault):
                continue  # (its drops are rewritten below)
            why_not = await _undo(session, fault)
            if why_not:
                refused.append((fault, why_not))
                if strict:
                    kept.faults.append(fault)  # still in QEMU: still kept
        if any(isinstance(f, PartitionFault) for f in changed):
            await _apply_drops(session, kept)
    kept_back = {id(f) for f, _ in refused} if strict else set()
    touched: dict[str, list[str]] = {}
    for fault in changed:
        for vm in _vms_of(fault):
            if vm in names and id(fault) not in kept_back:
                touched.setdefault(vm, []).append(fault.describe())
    for vm, what in touched.items():
        detail = "cleared: " + "; ".join(what) + (f" ({why})" if why else "")
        session.report(vm, Stage.HEAL, Status.DONE, detail)
    status = Status.FAILED if strict else Status.SKIPPED
    for fault, why_not in refused:
        vm = _vms_of(fault)[0]
        session.report(vm, Stage.HEAL, status, f"QEMU kept {fault.describe()}: {why_not}")
    if strict and refused:
        listed = "; ".join(f"{_vms_of(f)[0]}: {f.describe()}: {w}" for f, w in refused)
        raise FaultError(f"cannot clear every fault ({listed})")
    return set(touched)


async def _undo(session: Session, fault: Fault) -> str:
    """Take ``fault`` out of its QEMU, command by command (what is gone already counts as
    undone); "" when it is, else why not. A QEMU that has ended took its faults with it."""
    if isinstance(fault, PartitionFault):
        return ""
    socket = str(session.paths.vm(fault.vm).qmp_control_socket)
    try:
        async with qmp.open_session(socket, timeout=QMP_ANSWER, name=fault.vm) as control:
            for command in undo_commands(fault):
                try:
                    await control.execute(*command)
                except qmp.CommandError as err:
                    if not already_undone(str(err)):
                        return str(err)
    except (qmp.QmpConnectError, qmp.QmpTimeoutError):
        if qemu_pid(session.paths.vm(fault.vm).pidfile) != fault.qemu_pid:
            return ""  # it ended meanwhile
        return f"QEMU did not answer QMP within {QMP_ANSWER:g} s"
    except qmp.QmpError as err:
        if qemu_pid(session.paths.vm(fault.vm).pidfile) != fault.qemu_pid:
            return ""
        return str(err)
    return ""


def _vms_of(fault: Fault) -> list[str]:
    if isinstance(fault, PartitionFault):
        return [vm for group in fault.groups for vm in group]
    return [fault.vm]
