"""GuestShell.converse against a real SSH server (asyncssh's, each command run by the host's
shell with its standard input and output streamed): the host answers a line while the command
still runs, its standard input ends once it has no more to say, a deadline bounds it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
import trio
import trio_asyncio

import qmp
from orchestrator.guest.probe import SSH_FAILED, TIMED_OUT, GuestShell, SshTarget

_SPAWNED: list[asyncio.subprocess.Process] = []


async def _serve(process: asyncssh.SSHServerProcess[bytes]) -> None:
    proc = await asyncio.create_subprocess_shell(
        process.command or "true",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    _SPAWNED.append(proc)
    assert proc.stdin is not None
    assert proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def feed() -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            while data := await process.stdin.read(4096):
                stdin.write(data)
                await stdin.drain()
        stdin.close()

    feeder = asyncio.ensure_future(feed())
    while data := await stdout.read(4096):
        process.stdout.write(data)
    code = await proc.wait()
    feeder.cancel()
    process.exit(code)


async def _reap() -> None:
    for proc in _SPAWNED:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    _SPAWNED.clear()


@pytest.fixture
async def shell(tmp_path: Path) -> AsyncIterator[GuestShell]:
    client = asyncssh.generate_private_key("ssh-ed25519")
    key = tmp_path / "id_ed25519"
    key.write_bytes(client.export_private_key())
    key.chmod(0o600)

    async def start() -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            asyncssh.SSHServer,
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
        shell = GuestShell(SshTarget("127.0.0.1", server.sockets[0].getsockname()[1], "u", key))
        try:
            said = await shell.probe("true", timeout=20, handshakes=trio.CapacityLimiter(1))
            assert said.exit_code == 0, said.output
            yield shell
        finally:
            await shell.aclose()
            server.close()
            await trio_asyncio.aio_as_trio(_reap)()


async def test_the_host_answers_a_line_while_the_command_runs(shell: GuestShell) -> None:
    lines: list[bytes] = []

    async def answer(line: bytes) -> bytes | None:
        lines.append(line)
        return b"hello there\n" if line == b"ready\n" else None

    said = await shell.converse(
        'echo ready; read -r x; echo "got $x"; exit 3', timeout=20, answer=answer
    )
    assert said.exit_code == 3
    assert said.output == b"ready\ngot hello there\n"
    assert lines == [b"ready\n"]  # answered: not asked again


async def test_one_answer_then_its_input_ends(shell: GuestShell) -> None:
    asked: list[bytes] = []

    async def once(line: bytes) -> bytes | None:
        asked.append(line)
        return b"one\n"

    said = await shell.converse(
        'echo a; read -r x; echo "got $x"; if read -r y; then echo more; else echo ended; fi',
        timeout=20,
        answer=once,
    )
    assert (said.exit_code, said.output) == (0, b"a\ngot one\nended\n")
    assert asked == [b"a\n"]


async def test_a_command_that_ends_before_the_answer_is_not_a_failure(shell: GuestShell) -> None:
    """The answer comes late (the host had work to do first); the command never read: its own
    exit status and all it said come back."""

    async def late(line: bytes) -> bytes | None:
        if line != b"mark\n":
            return None
        await trio.sleep(0.5)
        return b"too late\n"

    said = await shell.converse("echo mark; echo done; exit 4", timeout=20, answer=late)
    assert (said.exit_code, said.output) == (4, b"mark\ndone\n")


async def test_a_deadline_bounds_it_and_keeps_what_it_said(shell: GuestShell) -> None:
    async def never(line: bytes) -> bytes | None:
        return None

    began = trio.current_time()
    said = await shell.converse("echo first; sleep 30", timeout=1.5, answer=never)
    assert said.exit_code == TIMED_OUT
    assert said.output.startswith(b"first\n")
    assert trio.current_time() - began < 5


async def test_without_a_login_nothing_runs(tmp_path: Path) -> None:
    unopened = GuestShell(SshTarget("127.0.0.1", 1, "u", tmp_path / "key"))

    async def never(line: bytes) -> bytes | None:
        raise AssertionError("no line can come")

    said = await unopened.converse("echo hi", timeout=5, answer=never)
    assert said.exit_code == SSH_FAILED
