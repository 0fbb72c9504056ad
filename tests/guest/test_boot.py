"""Real boots under TCG: the pieces of the guest side, assembled by hand, against real guests.

The Debian test guest (real cloud-init) gets its seed, a named volume and a 9p share; over
SSH with the project key we check the user, the key, both mounts, the environment and the
provision output, then log in on the serial console with the console password, then power
it down through QMP. The tiny guest checks the orchestration test guest itself.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import trio
import trio_asyncio

from netcfg import Forward, choose_port
from orchestrator.guest.accel import choose_accel, read_host_facts
from orchestrator.guest.cloudinit import (
    GuestConfig,
    Nic,
    instance_id,
    seed_files,
    share_mount,
    volume_mount,
    write_seed_iso,
)
from orchestrator.guest.disks import create_overlay, create_volume
from orchestrator.guest.qemu_argv import DirectBoot, Drive, Share, UserNic, VmLaunch, qemu_argv
from orchestrator.guest.secrets import ensure_console_password, ensure_project_key
from qmp import PowerdownOutcome, open_session
from tests.guest_images.build import build
from tests.support.qemu import short_tempdir
from tests.support.volumes import ext4_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None or shutil.which("mmdebstrap") is None,
        reason="needs qemu-system-x86 and mmdebstrap",
    ),
]


@pytest.fixture
def rundir() -> Iterator[Path]:
    path = short_tempdir("qc-boot-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def ssh_run(
    port: int,
    user: str,
    key: Path,
    command: str,
    *,
    deadline: float,
    qemu: subprocess.Popen[bytes] | None = None,
) -> str:
    """Run ``command`` over SSH, retrying the connection until the guest answers."""
    with trio.fail_after(deadline):
        while True:
            if qemu is not None and qemu.poll() is not None:
                raise RuntimeError(f"QEMU exited with {qemu.returncode}")
            try:
                conn = await trio_asyncio.aio_as_trio(asyncssh.connect)(
                    "127.0.0.1", port, username=user, client_keys=[str(key)],
                    known_hosts=None, connect_timeout=5,
                    # as OpenSSH does: dropbear offers RSA without having an RSA key
                    server_host_key_algs=["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-256"],
                )  # fmt: skip
            except (OSError, asyncssh.Error, TimeoutError):
                await trio.sleep(1)
                continue
            try:
                result = await trio_asyncio.aio_as_trio(conn.run)(command, check=True, timeout=120)
                return str(result.stdout)
            finally:
                conn.close()


async def console_login(path: str, user: str, password: str) -> str:
    """Log in on the serial console and run one command; return what the console printed."""
    sock = trio.socket.socket(socket.AF_UNIX)
    await sock.connect(path)
    seen = b""

    async def until(marker: bytes, deadline: float) -> None:
        nonlocal seen
        with trio.fail_after(deadline):
            while marker not in seen:
                chunk = await sock.recv(4096)
                if not chunk:
                    raise EOFError("the console closed")
                seen += chunk

    try:
        for _ in range(30):  # getty may still be starting: press enter until it asks
            await sock.send(b"\r")
            try:
                await until(b"login:", 4)
                break
            except trio.TooSlowError:
                continue
        await sock.send(user.encode() + b"\r")
        await until(b"Password:", 30)
        await sock.send(password.encode() + b"\r")
        await until(b"$ ", 60)
        await sock.send(b"echo CONSOLE-$((6*7))\r")
        await until(b"CONSOLE-42", 30)
        return seen.decode(errors="replace")
    finally:
        sock.close()


@pytest.mark.built_guest
async def test_debian_guest_with_seed_volume_share_and_console(rundir: Path) -> None:
    guest = await trio.to_thread.run_sync(build, "debian")
    project = "boot"
    key = ensure_project_key(rundir / "ssh", project)
    password = ensure_console_password(rundir / "console-password")
    share = rundir / "share"
    share.mkdir()
    (share / "hello.txt").write_text("hello from the host\n")
    volume = rundir / "volumes" / "data.qcow2"
    await create_volume(volume, 64 << 20, "data")
    disk = rundir / "web" / "disk.qcow2"
    disk.parent.mkdir()
    await create_overlay(guest / "root.qcow2", disk, 4 << 30)
    config = GuestConfig(
        hostname="web",
        domain=project,
        user="debian",
        ssh_public_key=key.public_line,
        password_hash=password.crypt_hash,
        instance_id=instance_id(project, "web"),
        mounts=(
            share_mount("mount0", "/srv/share", read_only=False),
            volume_mount("data", "/data", read_only=False),
        ),
        environment={"APP_MODE": "testing", "DB_HOST": "db.boot"},
        provision=(
            "echo provisioned-one > /var/tmp/step1",
            '#!/bin/sh\nset -e\necho "step two sees $(cat /var/tmp/step1)" > /var/tmp/step2\n',
        ),
        nics=(Nic("52:54:00:12:34:01", "user"),),
    )
    seed = rundir / "web" / "seed.iso"
    write_seed_iso(seed, seed_files(config))
    port = choose_port("web", None, start=22000)
    launch = VmLaunch(
        name="web",
        accel=choose_accel("auto", read_host_facts()),
        cpus=2,
        memory_mib=384,
        machine="q35",
        console_socket=str(rundir / "web" / "console.sock"),
        console_log=str(rundir / "web" / "console.log"),
        qmp_supervision=str(rundir / "web" / "qmp.sock"),
        qmp_control=str(rundir / "web" / "qmp-ctl.sock"),
        pidfile=str(rundir / "web" / "qemu.pid"),
        drives=(
            Drive("root", str(disk), "qcow2", "root", bootindex=0),
            Drive("seed", str(seed), "raw", "cidata", read_only=True),
            Drive("vol-data", str(volume), "qcow2", "data"),
        ),
        shares=(Share("mount0", str(share)),),
        nics=(UserNic("nic0", "52:54:00:12:34:01", (Forward(port, 22),)),),
        boot=DirectBoot(
            str(guest / "vmlinuz"),
            str(guest / "initrd.img"),
            "root=LABEL=rootfs rw console=ttyS0 quiet mitigations=off tsc=reliable no_timer_check",
        ),
    )
    process = subprocess.Popen(qemu_argv(launch), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async with trio_asyncio.open_loop():
            run: Any = lambda command, deadline=120: ssh_run(  # noqa: E731
                port, "debian", key.private_key, command, deadline=deadline, qemu=process
            )
            assert (await run("id -un", deadline=300)).strip() == "debian"
            await run("cloud-init status --wait >/dev/null || true", deadline=300)
            assert key.public_line in await run("cat ~/.ssh/authorized_keys")
            assert (await run("hostname -f")).strip() == "web.boot"
            mounts = await run(
                "findmnt -n -o TARGET,FSTYPE /srv/share; findmnt -n -o TARGET,FSTYPE /data"
            )
            assert mounts.split() == ["/srv/share", "9p", "/data", "ext4"]
            assert await run("cat /srv/share/hello.txt") == "hello from the host\n"
            await run("echo from-the-guest | sudo tee /srv/share/back.txt >/dev/null")
            assert (share / "back.txt").read_text() == "from-the-guest\n"
            await run("echo kept | sudo tee /data/kept.txt >/dev/null && sync")
            environment = await run("cat /etc/environment")
            assert "APP_MODE=testing\n" in environment
            assert "DB_HOST=db.boot\n" in environment
            assert await run("cat /var/tmp/step2") == "step two sees provisioned-one\n"
            assert "passwordauthentication no" in await run(
                "sudo sshd -T | grep -i passwordauthentication"
            )
            assert (await run("sudo -n id -u")).strip() == "0"
        console = await console_login(launch.console_socket, "debian", password.password)
        assert "CONSOLE-42" in console
        log = Path(launch.console_log).read_text(errors="replace")
        assert "qemu-compose: provision step 1" in log
        assert "qemu-compose: provision step 2" in log
        async with open_session(launch.qmp_supervision) as session:
            outcome = await session.powerdown(grace=120)
        assert outcome is PowerdownOutcome.GUEST_SHUTDOWN
        assert process.wait(timeout=30) == 0
        # the volume kept what the guest wrote: read it back from the host
        assert ext4_file(volume, "/kept.txt", rundir / "data.raw") == "kept\n"
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate()[0]
        if process.returncode not in (0, None, -9):
            print(output.decode(errors="replace"))


async def test_tiny_guest_answers_ssh_and_the_power_button(rundir: Path) -> None:
    guest = await trio.to_thread.run_sync(build, "tiny")
    key = ensure_project_key(rundir / "ssh", "tiny")
    config = GuestConfig(
        hostname="tiny1", domain="tiny", user="dev", ssh_public_key=key.public_line,
        password_hash="!", instance_id=instance_id("tiny", "tiny1"),
    )  # fmt: skip
    seed = rundir / "seed.iso"
    write_seed_iso(seed, seed_files(config))
    port = choose_port("tiny1", None, start=22100)
    launch = VmLaunch(
        name="tiny1", accel=choose_accel("auto", read_host_facts()), cpus=1, memory_mib=128,
        machine="q35", console_socket=str(rundir / "console.sock"),
        console_log=str(rundir / "console.log"), qmp_supervision=str(rundir / "qmp.sock"),
        qmp_control=str(rundir / "qmp-ctl.sock"), pidfile=str(rundir / "qemu.pid"),
        drives=(Drive("seed", str(seed), "raw", "cidata", read_only=True),),
        nics=(UserNic("nic0", "52:54:00:12:34:02", (Forward(port, 22),)),),
        boot=DirectBoot(str(guest / "vmlinuz"), str(guest / "initrd.img"), "console=ttyS0 quiet"),
    )  # fmt: skip
    process = subprocess.Popen(qemu_argv(launch), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        started = trio.current_time()
        async with trio_asyncio.open_loop():
            out = await ssh_run(
                port, "dev", key.private_key, "id -un; hostname", deadline=120, qemu=process
            )
        assert out.split() == ["dev", "tiny1"]
        print(f"tiny guest: SSH after {trio.current_time() - started:.1f} s")
        async with open_session(launch.qmp_supervision) as session:
            assert await session.powerdown(grace=30) is PowerdownOutcome.GUEST_SHUTDOWN
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
