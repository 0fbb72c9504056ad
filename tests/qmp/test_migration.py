"""A VM's state to a file and back into a new QEMU (snapshots, suspend): the power-button
guest, saved while it waits for the button, loaded into another QEMU started ``-incoming
defer``, where it is still waiting: no boot (its debug console says nothing), and it powers
off when the button is pressed."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from qmp import Migration, MigrationError, QmpSession, load_state, open_session, save_state
from qmp.events import Shutdown
from tests.support.qemu import Vm

MakeVm = Callable[..., Vm]


async def _until_ready(vm: Vm) -> None:
    deadline = time.monotonic() + 30
    while not vm.guest_ready():
        assert time.monotonic() < deadline, "the guest did not start"
        await trio.sleep(0.05)


async def save_to(session: QmpSession, path: Path, *, shared_ram: bool = False) -> Migration:
    """The stopped VM's state to a new file ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return await save_state(session, fd, shared_ram=shared_ram)
    finally:
        os.close(fd)


async def ignoring(session: QmpSession) -> bool:
    """Whether QEMU's x-ignore-shared is on (a save with ``shared_ram`` turns it off again)."""
    found = await session.execute("query-migrate-capabilities")
    return bool(next(c["state"] for c in found if c["capability"] == "x-ignore-shared"))


async def test_a_saved_state_runs_on_in_a_new_qemu_without_a_boot(
    make_vm: MakeVm, sockdir: Path
) -> None:
    source = make_vm(name="a", boot_sector=True)
    state = sockdir / "a.state"
    async with open_session(source.control_socket) as session:
        await session.execute("cont")
        await _until_ready(source)
        await session.execute("stop")
        saved = await save_to(session, state)
        assert saved.status == "completed"
        assert saved.transferred > 0
        assert (await session.query_status()).status == "postmigrate"
        await session.execute("quit")
    assert state.stat().st_size > 100_000  # RAM (mostly zero pages, sent as markers) and devices
    assert b"SeaBIOS" in source.debugcon.read_bytes()  # what a boot says (see below)

    target = make_vm(name="b", boot_sector=True, paused=False, extra=["-incoming", "defer"])
    async with open_session(target.control_socket) as session:
        assert (await session.query_status()).status == "inmigrate"
        fd = os.open(state, os.O_RDONLY)
        try:
            loaded = await load_state(session, fd)
        finally:
            os.close(fd)
        assert loaded.status == "completed"
        assert (await session.query_status()).status == "paused"
        async with session.events(["SHUTDOWN"]) as events:
            await session.execute("cont")
            await trio.sleep(0.5)
            # it did not boot: SeaBIOS, which says so on the debug console, never ran (the
            # guest's own "R" may come again: a TCG block stopped mid-way runs from its start)
            assert b"SeaBIOS" not in target.debugcon.read_bytes()
            await session.execute("system_powerdown")
            with trio.fail_after(30):
                event = await events.__anext__()
    assert isinstance(event, Shutdown)
    assert event.guest


async def test_a_state_that_cannot_be_written_fails_and_the_vm_runs_on(
    make_vm: MakeVm, sockdir: Path
) -> None:
    vm = make_vm(name="a", boot_sector=True)
    target = sockdir / "readonly.state"
    target.write_bytes(b"")
    async with open_session(vm.control_socket) as session:
        await session.execute("cont")
        await _until_ready(vm)
        await session.execute("stop")
        fd = os.open(target, os.O_RDONLY)  # every write fails, as on a full disk
        try:
            with pytest.raises(MigrationError):
                await save_state(session, fd, shared_ram=True)
        finally:
            os.close(fd)
        assert not await ignoring(session)  # (a later save would leave shared RAM out)
        await session.execute("cont")
        assert (await session.query_status()).running
        async with session.events(["SHUTDOWN"]) as events:
            await session.execute("system_powerdown")
            with trio.fail_after(30):
                assert isinstance(await events.__anext__(), Shutdown)


async def test_a_save_cut_short_is_cancelled_in_qemu_too(make_vm: MakeVm) -> None:
    """Cancelled while QEMU writes (nobody reads the other end of its socket): QEMU's own
    migration is cancelled, not left to finish and leave the VM ``postmigrate``."""
    vm = make_vm(name="a", boot_sector=True)
    ours, theirs = socket.socketpair()
    async with open_session(vm.control_socket) as session:
        await session.execute("cont")
        await _until_ready(vm)
        await session.execute("stop")
        with trio.move_on_after(0.5):
            await save_state(session, theirs.fileno(), shared_ram=True)
        theirs.close()
        assert (await session.execute("query-migrate"))["status"] == "cancelled"
        assert not await ignoring(session)
        await session.execute("cont")
        await trio.sleep(0.5)
        assert (await session.query_status()).status == "running"
    ours.close()


async def test_ram_in_a_shared_file_stays_out_of_the_stream_and_is_mapped_by_the_loader(
    make_vm: MakeVm, sockdir: Path
) -> None:
    """``shared_ram``: the source's RAM is a shared file, the stream has its devices only;
    a QEMU mapping that file privately loads it and runs on, the file untouched; the
    capability is off again in both QEMUs (a later save would leave the memory out)."""
    ram = sockdir / "ram"

    def backend(share: str) -> list[str]:
        backend = f"memory-backend-file,id=pc.ram,size=64M,mem-path={ram},share={share}"
        return ["-object", backend, "-machine", "memory-backend=pc.ram"]

    full = sockdir / "full.state"
    small = sockdir / "small.state"
    source = make_vm(name="a", boot_sector=True, extra=backend("on"))
    async with open_session(source.control_socket) as session:
        await session.execute("cont")
        await _until_ready(source)
        await session.execute("stop")
        covered = {}  # shared_ram -> the RAM the stream covers, as QEMU says
        for path, shared in ((full, False), (small, True)):
            covered[shared] = (await save_to(session, path, shared_ram=shared)).ram_total
            assert not await ignoring(session)
            await session.execute("cont")  # (postmigrate: QEMU saves no second time)
            await session.execute("stop")
        await session.execute("quit")
    assert small.stat().st_size * 2 < full.stat().st_size  # no guest RAM in it
    assert covered[False] >= 64 << 20 > covered[True]  # (how clones.py tells it was left out)
    before = hashlib.sha256(ram.read_bytes()).hexdigest()

    target = make_vm(
        name="b", boot_sector=True, paused=False, extra=[*backend("off"), "-incoming", "defer"]
    )
    async with open_session(target.control_socket) as session:
        fd = os.open(small, os.O_RDONLY)
        try:
            await load_state(session, fd, shared_ram=True)
        finally:
            os.close(fd)
        assert not await ignoring(session)
        async with session.events(["SHUTDOWN"]) as events:
            await session.execute("cont")
            await trio.sleep(0.5)
            assert not target.guest_ready()  # the guest's memory came from the file: it waits
            await session.execute("system_powerdown")
            with trio.fail_after(30):
                assert isinstance(await events.__anext__(), Shutdown)
    assert hashlib.sha256(ram.read_bytes()).hexdigest() == before  # (its own copies of pages)


async def test_a_memfds_ram_is_left_out_as_the_templates_source_has_it(
    make_vm: MakeVm, sockdir: Path
) -> None:
    """The production backend of a warm template's source (guest.qemu_argv.SharedRam): QEMU
    says, in the RAM it counts, whether it left the memfd out (runtime.clones keeps a RAM
    file only then)."""
    backend = "memory-backend-memfd,id=pc.ram,size=64M,share=on"
    source = make_vm(
        name="a", boot_sector=True, extra=["-object", backend, "-machine", "memory-backend=pc.ram"]
    )
    covered = {}
    async with open_session(source.control_socket) as session:
        await session.execute("cont")
        await _until_ready(source)
        for shared in (True, False):
            await session.execute("stop")
            path = sockdir / f"{shared}.state"
            covered[shared] = (await save_to(session, path, shared_ram=shared)).ram_total
            await session.execute("cont")
        await session.execute("quit")
    assert covered[False] >= 64 << 20 > covered[True]
