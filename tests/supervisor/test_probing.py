"""The supervisor's probes of a VM against a real SSH server (asyncssh's, running each command
with the host's shell), in real time: readiness, docker's rules, one connection reused,
paused guests not probed, a stuck guest bounded by its timeout without delaying another."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import trio
import trio_asyncio

import qmp
from orchestrator.guest.probe import SSH_FAILED, TIMED_OUT
from orchestrator.state.paths import VmPaths
from orchestrator.supervisor.health import HealthChange, HealthStatus, read_health
from orchestrator.supervisor.probing import VmProber
from orchestrator.supervisor.supervised import Probe


@dataclass
class Sshd:
    port: int
    key: Path
    connections: list[int] = field(default_factory=list)  # one entry a connection made


_SPAWNED: list[asyncio.subprocess.Process] = []


async def _serve(process: asyncssh.SSHServerProcess[bytes]) -> None:
    command = process.command or "true"
    proc = await asyncio.create_subprocess_shell(
        command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its group is killed at the end
    )
    _SPAWNED.append(proc)
    out, _ = await proc.communicate()
    process.stdout.write(out)
    process.exit(proc.returncode or 0)


async def _reap() -> None:
    for proc in _SPAWNED:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    _SPAWNED.clear()


@pytest.fixture
async def sshd(tmp_path: Path) -> AsyncIterator[Sshd]:
    client = asyncssh.generate_private_key("ssh-ed25519")
    key = tmp_path / "id_ed25519"
    key.write_bytes(client.export_private_key())
    key.chmod(0o600)
    made: list[int] = []

    class Counting(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            made.append(1)

    async def start() -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            Counting,
            "127.0.0.1",
            0,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            authorized_client_keys=asyncssh.import_authorized_keys(
                client.export_public_key().decode()
            ),
            process_factory=_serve,
            encoding=None,
        )

    async with qmp.asyncio_loop():
        server = await trio_asyncio.aio_as_trio(start)()
        try:
            yield Sshd(server.sockets[0].getsockname()[1], key, made)
        finally:
            server.close()
            await trio_asyncio.aio_as_trio(_reap)()


class Rig:
    def __init__(self, tmp_path: Path, nursery: trio.Nursery) -> None:
        self.tmp_path = tmp_path
        self.nursery = nursery
        self.handshakes = trio.CapacityLimiter(8)
        self.changes: list[tuple[str, HealthChange]] = []

    def prober(self, name: str, sshd: Sshd, command: str | None, **rules: Any) -> VmProber:
        paths = VmPaths(self.tmp_path / name, self.tmp_path / name)
        paths.directory.mkdir()
        spec = Probe(
            port=sshd.port, user="probe", key=str(sshd.key), command=command,
            **{"interval": 0.2, "timeout": 5.0, "retries": 2, "start_interval": 0.1, **rules},
        )  # fmt: skip
        prober = VmProber(
            name, spec, paths, self.handshakes, lambda vm, c: self.changes.append((vm, c))
        )
        self.nursery.start_soon(prober.run)
        return prober

    def seen(self, name: str) -> list[HealthStatus]:
        return [c.new for vm, c in self.changes if vm == name]


@pytest.fixture
async def rig(tmp_path: Path, sshd: Sshd) -> AsyncIterator[Rig]:
    async with trio.open_nursery() as nursery:
        yield Rig(tmp_path, nursery)
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], bool], timeout: float = 20) -> float:
    """Seconds until ``condition`` holds."""
    began = trio.current_time()
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)
    return trio.current_time() - began


def status(prober: VmProber) -> HealthStatus | None:
    record = read_health(prober.paths)
    return record.status if record is not None else None


async def test_ready_healthy_unhealthy_and_healthy_again_over_one_connection(
    rig: Rig, sshd: Sshd, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    prober = rig.prober("web", sshd, f"test -e {flag} && echo up || {{ echo down; exit 3; }}")
    assert status(prober) is None  # no QEMU runs: nothing kept, nothing probed
    prober.unit_active(1_000)
    assert status(prober) is HealthStatus.STARTING  # at once, for the QEMU that runs now
    prober.guest_runs(True)
    await until(lambda: status(prober) is HealthStatus.HEALTHY)
    flag.unlink()
    took = await until(lambda: status(prober) is HealthStatus.UNHEALTHY)
    assert took < 0.2 * 2 + 0.2 + 1.0  # interval x retries, plus one interval, plus slack
    record = read_health(prober.paths)
    assert record is not None
    assert record.failing_streak >= 2
    assert record.since == 1_000
    assert [r.exit_code for r in record.log[-2:]] == [3, 3]
    assert record.log[-1].output == "down\n"
    flag.touch()
    await until(lambda: status(prober) is HealthStatus.HEALTHY)
    assert rig.seen("web") == [HealthStatus.HEALTHY, HealthStatus.UNHEALTHY, HealthStatus.HEALTHY]
    unhealthy = rig.changes[1][1]
    assert (unhealthy.old, unhealthy.failing_streak, unhealthy.output) == (
        HealthStatus.HEALTHY, 2, "down\n"
    )  # fmt: skip
    assert prober.probes >= 5  # readiness, up, down, down, up
    assert len(sshd.connections) == 1  # every probe over the one connection


async def test_a_paused_guest_is_not_probed_and_a_probe_under_way_is_not_counted(
    rig: Rig, sshd: Sshd, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    prober = rig.prober("db", sshd, f"touch {started}; sleep 1.5", timeout=10)
    prober.unit_active(1)
    prober.guest_runs(True)
    await until(started.exists)  # ready, and its first check under way
    prober.guest_runs(False)  # QMP STOP: that check is dropped
    probes = prober.probes
    await trio.sleep(2.5)
    assert prober.probes == probes
    record = read_health(prober.paths)
    assert record is not None
    assert record.status is HealthStatus.STARTING
    assert [r.exit_code for r in record.log] == [0]  # readiness only: the check never counted
    prober.guest_runs(True)  # RESUME
    await until(lambda: status(prober) is HealthStatus.HEALTHY)


async def test_a_stuck_guest_times_out_and_never_delays_another(rig: Rig, sshd: Sshd) -> None:
    stuck = rig.prober("stuck", sshd, "sleep 60", timeout=0.5, retries=2)
    fine = rig.prober("fine", sshd, "true", interval=0.05)
    for prober in (stuck, fine):
        prober.unit_active(1)
        prober.guest_runs(True)
    await until(lambda: status(fine) is HealthStatus.HEALTHY)
    before = fine.probes
    await until(lambda: status(stuck) is HealthStatus.UNHEALTHY, timeout=10)
    assert fine.probes - before >= 10  # it went on probing all the while
    record = read_health(stuck.paths)
    assert record is not None
    assert record.log[-1].exit_code == TIMED_OUT
    assert record.log[-1].output == "timed out after 0.5 s"


async def test_a_new_qemu_or_a_reboot_starts_afresh_and_no_login_is_said(
    rig: Rig, sshd: Sshd, tmp_path: Path
) -> None:
    prober = rig.prober("app", sshd, None)  # no check of its own: SSH answering is its health
    prober.unit_active(5)
    prober.guest_runs(True)
    await until(lambda: status(prober) is HealthStatus.HEALTHY)
    prober.guest_reset()
    assert status(prober) is HealthStatus.STARTING
    await until(lambda: status(prober) is HealthStatus.HEALTHY)
    prober.unit_active(0)  # the unit stopped, then a new QEMU
    prober.unit_active(6)
    record = read_health(prober.paths)
    assert record is not None
    assert (record.since, record.status, record.log) == (6, HealthStatus.STARTING, [])
    await until(lambda: status(prober) is HealthStatus.HEALTHY)
    assert rig.seen("app") == [HealthStatus.HEALTHY, HealthStatus.STARTING, HealthStatus.HEALTHY,
                               HealthStatus.HEALTHY]  # fmt: skip
    closed = rig.prober("closed", Sshd(_free_port(), sshd.key), None, timeout=2)  # no server
    closed.unit_active(1)
    closed.guest_runs(True)
    await until(lambda: (r := read_health(closed.paths)) is not None and bool(r.log))
    await trio.sleep(2.5)  # more attempts, each the same failure
    record = read_health(closed.paths)
    assert record is not None
    assert record.status is HealthStatus.STARTING
    assert len(record.log) == 1  # said once
    assert record.log[0].exit_code == SSH_FAILED
    assert record.log[0].output.startswith("ssh: ")
    assert closed.probes >= 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_changed_check_starts_afresh_and_a_bad_key_fails_only_its_probes(
    rig: Rig, sshd: Sshd, tmp_path: Path
) -> None:
    first = rig.prober("api", sshd, "true")
    first.unit_active(9)
    first.guest_runs(True)
    await until(lambda: status(first) is HealthStatus.HEALTHY)
    first.retired = True  # as the supervisor replaces it: a new healthcheck in the file
    shutil.rmtree(tmp_path / "api2", ignore_errors=True)
    second = VmProber(
        "api", Probe(port=sshd.port, user="probe", key=str(sshd.key), command="false",
                     interval=0.2, retries=1),
        first.paths, rig.handshakes, lambda vm, c: rig.changes.append((vm, c)),
    )  # fmt: skip
    assert second.spec.check() != first.spec.check()
    second.unit_active(9)  # the same QEMU, judged by the new check: not the old record
    record = read_health(second.paths)
    assert record is not None
    assert (record.status, record.check) == (HealthStatus.STARTING, second.spec.check())
    assert rig.changes[-1][1].output == "its healthcheck changed"
    rig.nursery.start_soon(second.run)
    second.guest_runs(True)
    await until(lambda: status(second) is HealthStatus.UNHEALTHY)
    assert rig.seen("api") == [HealthStatus.HEALTHY, HealthStatus.STARTING, HealthStatus.UNHEALTHY]
    garbage = tmp_path / "not-a-key"
    garbage.write_text("this is no key\n")
    garbage.chmod(0o600)
    broken = rig.prober("broken", Sshd(sshd.port, garbage), None)
    broken.unit_active(1)
    broken.guest_runs(True)
    await until(lambda: (r := read_health(broken.paths)) is not None and bool(r.log))
    record = read_health(broken.paths)
    assert record is not None
    assert record.log[0].exit_code == SSH_FAILED  # said, and the prober (the supervisor) lives
    await until(lambda: broken.probes >= 2)
