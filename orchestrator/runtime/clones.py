"""Warm clones (``warm: true``): a replica set for the price of one boot.

`up` boots the first replica it creates, and once that one is ready (SSH, cloud-init done,
healthy) saves its state, the *template* (state.templates): its memory and devices and a copy
of its disk, taken while it stands still. The other replicas start from the template instead
of booting: each QEMU is made as for a cold start (its own disk, seed, MACs, ports and TAPs),
loads the template's state (``-incoming defer``) and is resumed with its bridge NICs cut off
(QMP ``set_link`` on their netdevs: the guest sees their links down, and nothing it sends
gets out); then, over SSH with the project key, the guest gets its own identity
(guest.clone), its NICs are joined again and it asks for its own addresses. Only then is it a
replica like the others, ready when the same probes pass. A template is kept for the next
`up` (or `up --scale`) while it fits the definition; a template that cannot be made (the
replica did not come up, QEMU refused to save it) makes the others boot as usual. A clone
cut short before it became itself is removed (its ``cloning`` marker), now or by the next
`up`.

Its RAM: the source replica of a q35 or pc VM runs with its RAM in a shared memfd; the
template takes the devices' state alone (``x-ignore-shared``) and a copy of that memfd, the
``ram`` file, and each clone's QEMU maps that file privately (guest.qemu_argv.RamFile). A
clone loads no RAM, and the clones share every page none of them has written, in the page
cache (measured in bench/clones.py). ``QEMU_COMPOSE_TEMPLATE_RAM=stream`` keeps the RAM in
the state instead: each clone reads its own copy (the comparison's baseline).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio

import qmp
from orchestrator.config.model import Vm
from orchestrator.config.project import Project
from orchestrator.config.topology import Instance, instances
from orchestrator.errors import QemuComposeError, UsageError
from orchestrator.guest.clock import UPTIME_COMMAND, boot_epoch
from orchestrator.guest.clone import JOIN_LINE, CloneIdentity, host_key, identity_command, steps
from orchestrator.guest.cloudinit import instance_id
from orchestrator.guest.disks import copy_file
from orchestrator.guest.knownhosts import forget_host, record_host
from orchestrator.guest.probe import READY_COMMAND, GuestShell
from orchestrator.guest.qemu_argv import RAM_ID, has_pc_ram
from orchestrator.progress import Reporter, Stage, Status
from orchestrator.state.faults import qemu_pid
from orchestrator.state.files import atomic_write
from orchestrator.state.templates import (
    ImageFile,
    TemplatePaths,
    TemplateRecord,
    Templates,
    misfits,
)
from orchestrator.supervisor.eventlog import EventLog

from .access import ssh_target
from .options import QMP_ANSWER, Connection
from .plan import Action, ActionKind
from .session import Session, open_session
from .snapshots.common import accel_of, current_shape, qemu_version, running_shape, version_of
from .snapshots.loading import write_state
from .teardown import remove_vm, stop_one

USER_NETDEV = "nic0"  # the user-mode NIC (launch): the others are on bridge networks
LOGIN_TIMEOUT = 120.0  # a resumed guest answers SSH within seconds; many at once take longer
COMMAND_TIMEOUT = 90.0
TEMPLATE_RAM_VARIABLE = "QEMU_COMPOSE_TEMPLATE_RAM"  # file (the default) or stream
MEMFD_TYPE = "child<memory-backend-memfd>"
MEMFD_LINK = "/memfd:memory-backend-memfd"  # QEMU's name for it (hostmem-memfd.c)


class CloneError(QemuComposeError):
    """A clone could not be given its own identity: it is removed, never left running as a
    copy of its template."""


@dataclass(eq=False)
class WarmStart:
    """One warm definition in one `up`: the replica whose state becomes the template (None:
    a kept template serves), and the replicas that start from it."""

    definition: str
    source: str | None
    clones: list[str]
    template: TemplateRecord | None = None
    why_not: str = ""  # why there is no template (the clones boot)
    done: trio.Event = field(default_factory=trio.Event)

    def give(self, template: TemplateRecord | None, why_not: str = "") -> None:
        if not self.done.is_set():
            self.template, self.why_not = template, why_not
            self.done.set()


def base_image(inst: Instance, images: Mapping[str, Path]) -> ImageFile | None:
    """The base image file a replica's disk is made from, as it is now."""
    if inst.vm.image is None or inst.vm.image.source not in images:
        return None
    return ImageFile.of(images[inst.vm.image.source])


async def plan_warm(
    session: Session, todo: Sequence[Action], images: Mapping[str, Path]
) -> dict[str, WarmStart]:
    """The warm starts of this `up`, by definition; templates that no longer fit (or whose
    definition is gone, or no longer warm) are removed first."""
    model = session.project.model
    templates = Templates(session.paths.state_dir)
    templates.clean_staging()
    by_name = {i.name: i for i in instances(model)}
    creating: dict[str, list[Instance]] = {}
    for action in todo:
        inst = by_name.get(action.vm)
        if inst is not None and inst.vm.warm and action.kind is ActionKind.CREATE:
            creating.setdefault(inst.definition, []).append(inst)
    qemu: str | None = None
    for definition in templates.names():
        vm = model.vms.get(definition)
        record = templates.read(definition)
        if vm is None or not vm.warm or record is None:
            templates.remove(definition)
            continue
        inst = next((i for i in by_name.values() if i.definition == definition), None)
        if inst is None:  # scaled to none: kept for when it grows again
            continue
        qemu = qemu or await qemu_version()
        known = inst.vm.image is None or inst.vm.image.source in images
        image = base_image(inst, images) if known else record.image  # (not needed: not read)
        problems = misfits(record, current_shape(session, inst), accel_of(inst), qemu, image)
        if problems:
            templates.remove(definition)
            who = creating[definition][0].name if definition in creating else inst.name
            why = f"the template of {definition} no longer fits ({', '.join(problems)}): removed"
            session.report(who, Stage.TEMPLATE, Status.SKIPPED, why)
    starts = {}
    for definition, insts in creating.items():
        record = templates.read(definition)
        if record is not None:
            start = WarmStart(definition, None, [i.name for i in insts])
            start.give(record)
        else:
            start = WarmStart(definition, insts[0].name, [i.name for i in insts[1:]])
        starts[definition] = start
    return starts


async def make_template(
    session: Session, inst: Instance, images: Mapping[str, Path]
) -> TemplateRecord:
    """Save the ready replica ``inst`` as its definition's template; it runs on after."""
    name, definition = inst.name, inst.definition
    session.report(name, Stage.TEMPLATE, Status.WORKING, "waiting for SSH and cloud-init")
    await _provisioned(session, inst)
    templates = Templates(session.paths.state_dir)
    staged = templates.staging(definition)
    session.report(name, Stage.TEMPLATE, Status.WORKING, f"saving it as {definition}'s template")
    try:
        version, state_bytes, ram_bytes, stood = await _save(session, inst, staged)
        saved = session.state.vms[name]
        record = TemplateRecord(
            definition=definition,
            source=name,
            saved_at=time.time(),
            shape=running_shape(session, inst),
            accel=accel_of(inst),
            qemu=version,
            image=base_image(inst, images),
            has_disk=inst.vm.image is not None,
            macs=dict(saved.macs),
            user=saved.user,
            state_bytes=state_bytes,
            ram_bytes=ram_bytes,
            disk_bytes=staged.disk.stat().st_size if inst.vm.image is not None else 0,
            save_seconds=stood,
        )
        templates.commit(definition, staged, record)
    except BaseException:
        templates.discard(staged)
        raise
    used = templates.usage(definition)  # (on disk: a sparse RAM file takes what the guest used)
    said = f"{used / (1 << 20):.0f} MiB on disk; it stood still {stood:.2f} s"
    session.report(name, Stage.TEMPLATE, Status.DONE, said)
    data = {"definition": definition, "bytes": used, "ram_file": record.ram_bytes > 0}
    _log(session, name, "TEMPLATE_SAVE", {**data, "seconds": stood})
    return record


async def _save(
    session: Session, inst: Instance, staged: TemplatePaths
) -> tuple[str, int, int, float]:
    """The replica's state, a copy of its RAM (where it is shared and QEMU left it out of the
    state) and of its disk, taken while it stands still; the version of QEMU that saved it,
    the state's and the RAM file's sizes (0: none), how long the guest stood still."""
    paths = session.paths.vm(inst.name)
    socket = str(paths.qmp_control_socket)
    size = inst.vm.memory << 20
    async with (
        qmp.open_session(socket, timeout=QMP_ANSWER, name=inst.name) as control,
        _shared_ram(session, inst, control) as memfd,
    ):
        version = version_of(await control.execute("query-version"))
        status = (await control.query_status()).status
        if status != "running":
            raise CloneError(f"its guest is {status}: only a running guest is saved")
        began = time.monotonic()
        await control.execute("stop")
        try:
            shared = memfd is not None
            state_bytes, saved = await write_state(control, staged.state, shared_ram=shared)
            # A QEMU that leaves out only RAM in a named file (newer ones) keeps a memfd's
            # RAM in the state: the clones load it from there, and no RAM file is kept
            separate = shared and saved.ram_total < size
            async with trio.open_nursery() as nursery:  # (at the same instant, still)
                if memfd is not None and separate:
                    nursery.start_soon(copy_file, memfd, staged.ram)
                if inst.vm.image is not None:
                    nursery.start_soon(copy_file, paths.disk, staged.disk)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(qmp.QmpError):
                await control.execute("cont", timeout=QMP_ANSWER)
        stood = time.monotonic() - began
    ram_bytes = staged.ram.stat().st_size if separate else 0
    if separate and ram_bytes != size:
        raise CloneError(f"its RAM was copied short ({ram_bytes} bytes)")
    return version, state_bytes, ram_bytes, stood


def shares_ram(vm: Vm) -> bool:
    """Whether a warm VM's template keeps its RAM as a file its clones map (see above)."""
    wanted = os.environ.get(TEMPLATE_RAM_VARIABLE) or "file"
    if wanted not in ("file", "stream"):
        raise UsageError(f"{TEMPLATE_RAM_VARIABLE}={wanted}: file or stream")
    return wanted == "file" and has_pc_ram(vm.machine)


@contextlib.asynccontextmanager
async def _shared_ram(
    session: Session, inst: Instance, control: qmp.QmpSession
) -> AsyncIterator[Path | None]:
    """The memfd with the running source's RAM, held open by this process while the context
    lasts, as a path a copier can read (None: its RAM is QEMU's own). Asked of QEMU, found
    among the fds of the unit's main process (which must be the QEMU of the VM's pidfile),
    and checked: a memfd of the guest's RAM size."""
    found = await control.execute("qom-list", {"path": "/objects"})
    if not any(o.get("name") == RAM_ID and o.get("type") == MEMFD_TYPE for o in found):
        yield None
        return
    pid = (await session.manager.status(session.vm_unit(inst.name))).main_pid
    recorded = qemu_pid(session.paths.vm(inst.name).pidfile)
    if not pid or pid != recorded:
        raise CloneError(f"its QEMU is not known for sure (unit: PID {pid}, pidfile: {recorded})")
    try:
        fd = open_ram_memfd(pid, inst.vm.memory << 20)
    except OSError as e:
        raise CloneError(f"its RAM could not be read from its QEMU (PID {pid}): {e}") from e
    try:
        yield Path(f"/proc/{os.getpid()}/fd/{fd}")
    finally:
        os.close(fd)


def open_ram_memfd(pid: int, size: int) -> int:
    """An fd of the one memfd of ``size`` bytes among process ``pid``'s (QEMU's RAM)."""
    fds = Path(f"/proc/{pid}/fd")
    opened: list[int] = []
    inodes: set[tuple[int, int]] = set()
    try:
        for entry in os.listdir(fds):
            with contextlib.suppress(OSError):  # (an fd closed meanwhile)
                if not os.readlink(fds / entry).startswith(MEMFD_LINK):
                    continue
                fd = os.open(fds / entry, os.O_RDONLY | os.O_CLOEXEC)
                st = os.fstat(fd)
                seen = (st.st_dev, st.st_ino)  # (two fds of one memfd are one)
                if st.st_size == size and seen not in inodes:
                    inodes.add(seen)
                    opened.append(fd)
                else:
                    os.close(fd)
        if len(opened) != 1:
            raise CloneError(f"{len(opened)} memfds of {size} bytes in its QEMU (PID {pid})")
        return opened.pop()
    finally:
        for fd in opened:
            os.close(fd)


async def remove_unfinished(session: Session) -> bool:
    """Remove the clones an earlier `up` left before they became themselves (it was killed):
    copies of their template, never to be kept. True if there were any."""
    names = {i.name for i in instances(session.project.model)} | set(session.state.vms)
    found = sorted(n for n in names if session.paths.vm(n).cloning.exists())
    for name in found:
        why = "a clone cut short before it became itself: removed, made again"
        session.report(name, Stage.CLONE, Status.WORKING, why)
        await stop_one(session, name, 0.0)
        await remove_vm(session, name)
    return bool(found)


def identity_of(session: Session, inst: Instance, template: TemplateRecord) -> CloneIdentity:
    """Who the clone ``inst`` becomes: its own name, MACs (as its QEMU has them), machine-id
    and instance-id."""
    project = session.project.name
    macs = session.state.vms[inst.name].macs
    pairs = {n: (template.macs[n], mac) for n, mac in macs.items() if n in template.macs}
    return CloneIdentity(
        hostname=inst.vm.hostname or inst.name,
        domain=project,
        machine_id=secrets.token_hex(16),
        instance_id=instance_id(project, inst.name),
        user_macs=dict(v for n, v in pairs.items() if n == USER_NETDEV),
        bridge_macs=dict(v for n, v in pairs.items() if n != USER_NETDEV),
    )


async def become_itself(
    session: Session, inst: Instance, template: TemplateRecord, loaded_in: float
) -> None:
    """Resume the clone (loaded, paused) cut off from its bridge networks, give it its own
    identity, join it again. A failure removes it (a CloneError)."""
    name = inst.name
    identity = identity_of(session, inst, template)
    bridges = [n for n in session.state.vms[name].macs if n != USER_NETDEV]
    paths = session.paths.vm(name)
    socket = str(paths.qmp_control_socket)
    steps_took: dict[str, float] = {}  # what becoming itself took, step by step
    began = time.monotonic()
    atomic_write(paths.cloning, b"", durable=True)  # until it is itself (see remove_unfinished)
    try:
        async with qmp.open_session(socket, timeout=QMP_ANSWER, name=name) as control:
            for netdev in bridges:
                await control.execute("set_link", {"name": netdev, "up": False})
            await control.execute("cont")
            key = await _in_guest(session, inst, identity, control, bridges, steps_took)
        project = session.project.name
        if key is not None:
            record_host(session.paths, project, name, key)
        else:
            forget_host(session.paths, project, name)
    except (qmp.QmpError, OSError) as err:
        raise CloneError(f"{name}: {err}") from err
    paths.cloning.unlink()
    took = time.monotonic() - began
    session.report(
        name,
        Stage.CLONE,
        Status.DONE,
        f"from {template.source}'s template: its own hostname, MACs, host key and machine-id"
        f" ({loaded_in:.2f} s to load, {took:.1f} s to become itself)",
    )
    _log(
        session,
        name,
        "CLONE",
        {
            "template": template.definition,
            "source": template.source,
            "load_seconds": round(loaded_in, 3),
            "identity_seconds": round(took, 3),
            "hostname": identity.hostname,
            "machine_id": identity.machine_id,
            "instance_id": identity.instance_id,
            "macs": {**identity.user_macs, **identity.bridge_macs},
            "host_key": key,
            "steps": steps_took,
        },
    )


async def _in_guest(
    session: Session,
    inst: Instance,
    identity: CloneIdentity,
    control: qmp.QmpSession,
    bridges: list[str],
    took: dict[str, float],
) -> str | None:
    target = ssh_target(session.project, inst, session.state)
    if target is None:
        raise CloneError(f"{inst.name} has no SSH port recorded")
    shell = GuestShell(target)
    handshakes = trio.CapacityLimiter(1)
    try:
        began = trio.current_time()
        uptime = await _login(shell, handshakes)
        took["login"] = round(trio.current_time() - began, 3)
        boot = boot_epoch(uptime, time.time())
        if boot is None:
            raise CloneError(f"its uptime could not be read: {_said(uptime)}")
        began = trio.current_time()
        joined: float | None = None

        async def answer(line: bytes) -> bytes | None:
            """Its links joined again once it says its own identity is in place."""
            nonlocal joined
            if not line.rstrip().endswith(JOIN_LINE.encode()):  # (stderr may precede it)
                return None
            joined = trio.current_time()
            took["identity"] = round(joined - began, 3)
            for netdev in bridges:
                await control.execute("set_link", {"name": netdev, "up": True})
            return b"joined\n"

        command = identity_command(identity, boot)
        said = await shell.converse(command, timeout=COMMAND_TIMEOUT, answer=answer)
        if said.exit_code != 0:
            what = "identity" if joined is None else "addresses"
            raise CloneError(f"its {what} could not be set: {_said(said.output)}")
        if joined is None and bridges:
            raise CloneError(f"it never said its identity was set: {_said(said.output)}")
        if joined is None:  # no links to join: it said nothing, read nothing
            took["identity"] = round(trio.current_time() - began, 3)
        else:
            took["joined"] = round(trio.current_time() - joined, 3)  # host key and addresses
        took.update({f"guest:{k}": v for k, v in steps(said.output).items()})
        return host_key(said.output)
    finally:
        await shell.aclose()


async def _provisioned(session: Session, inst: Instance) -> None:
    """Until the guest answers SSH with the project key and cloud-init is done: what its
    clones start from is a guest that has finished its first boot, whatever its healthcheck
    says (one disabled makes a VM ready once QEMU runs)."""
    target = ssh_target(session.project, inst, session.state)
    if target is None:
        raise CloneError(f"{inst.name} has no SSH port recorded")
    shell = GuestShell(target)
    try:
        await _login(shell, trio.CapacityLimiter(1), LOGIN_TIMEOUT * 5)
        said = await shell.probe(
            READY_COMMAND, timeout=LOGIN_TIMEOUT * 5, handshakes=trio.CapacityLimiter(1)
        )
        if said.exit_code != 0:
            raise CloneError(f"cloud-init did not finish: {_said(said.output)}")
    finally:
        await shell.aclose()


async def _login(
    shell: GuestShell, handshakes: trio.CapacityLimiter, timeout: float = LOGIN_TIMEOUT
) -> bytes:
    """Until the guest lets us in (a resumed one: its network is back within a second or
    two; a connection refused or reset meanwhile is tried again); what its uptime was then,
    as `clock.UPTIME_COMMAND` prints it."""
    deadline = trio.current_time() + timeout
    while True:
        left = deadline - trio.current_time()
        said = await shell.probe(
            UPTIME_COMMAND, timeout=max(1.0, min(30.0, left)), handshakes=handshakes
        )
        if said.exit_code == 0:
            return said.output
        if trio.current_time() + 0.5 >= deadline:
            raise CloneError(f"no SSH login after it resumed: {_said(said.output)}")
        await trio.sleep(0.5)


def _said(output: bytes) -> str:
    return output.decode(errors="replace").strip()[-300:] or "no output"


def _log(session: Session, vm: str, event: str, data: dict[str, object]) -> None:
    with contextlib.suppress(OSError):  # the log is for watchers: a full disk fails nothing
        EventLog(session.paths.events_dir).append(vm, event, data, source="clone")


class TemplateRow(msgspec.Struct, frozen=True):
    """One line of `template ls`."""

    vm: str  # the warm definition
    source: str  # the replica it was saved from
    saved_at: float
    size: int  # bytes on disk: its state, RAM file and disk's copy (holes not counted)
    qemu: str
    in_file: bool  # its definition is a warm VM of the file (else the next `up` removes it)


def template_rows(project: Project) -> list[TemplateRow]:
    """The project's templates, by VM."""
    templates = Templates(project.state_dir)
    found = []
    for name in templates.names():
        record = templates.read(name)
        if record is None:
            continue
        vm = project.model.vms.get(name)
        found.append(
            TemplateRow(
                name, record.source, record.saved_at, templates.usage(name), record.qemu,
                vm is not None and vm.warm,
            )
        )  # fmt: skip
    return found


async def remove_templates(
    project: Project, vms: Sequence[str], connection: Connection, report: Reporter
) -> list[str]:
    """Remove the templates of the VMs named (none: all); the next `up` that creates a
    replica of one boots it and saves a new template."""
    async with open_session(project, connection, report) as session:
        templates = Templates(session.paths.state_dir)
        there = templates.names()
        unknown = [v for v in vms if v not in there]
        if unknown:
            known = ", ".join(there) or "none"
            raise UsageError(f"no template of {', '.join(unknown)} (templates: {known})")
        removed = [v for v in (vms or there) if templates.remove(v)]
        for name in removed:
            report("", Stage.TEMPLATE, Status.DONE, f"{name}'s template removed")
        return removed
