"""SSH to a VM with the project key: the supervisor's readiness probes and healthchecks.

asyncssh is an asyncio library; this is the one orchestrator module that bridges to it (through
the trio-asyncio loop the supervisor opens), and nothing asyncio leaves it.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import trio
import trio_asyncio

# As OpenSSH orders them: some servers (dropbear) offer RSA without having an RSA key.
HOST_KEY_ALGS = ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256"]


class SshTarget(msgspec.Struct, frozen=True):
    host: str
    port: int
    user: str
    key: Path


TIMED_OUT = -1  # the exit code of a probe that ran out of time (docker's too)
SSH_FAILED = 255  # the exit code of a probe SSH could not run (ssh(1)'s own)


class Outcome(msgspec.Struct, frozen=True):
    """A command run in a guest as a probe: its exit code (or TIMED_OUT, SSH_FAILED) and
    its output, stdout and stderr together."""

    exit_code: int
    output: bytes


class GuestShell:
    """One SSH connection to a guest, opened at the first command, kept for the next ones,
    opened again after it broke: a probe every few seconds costs a channel, not a handshake.
    A handshake (the costly part, for host and guest) takes a token of the limiter the
    caller gives, waited for before the probe's own deadline starts.
    """

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.connections = 0  # handshakes made so far
        self.handshake_took: float | None = None  # seconds the last probe's login took
        self._conn: object | None = None  # an asyncssh.SSHClientConnection

    async def probe(
        self,
        command: str,
        *,
        timeout: float,
        handshakes: trio.CapacityLimiter,
        connect_timeout: float | None = None,
    ) -> Outcome:
        """Run ``command`` within ``timeout`` (a handshake bounded by ``connect_timeout``
        too; the wait for its token does not count); never raises but trio's cancellation.
        A kept connection that turns out broken (the guest paused a long while, say) is
        opened again once, within what is left of the same deadline; a timeout or a failure
        closes it: the next probe starts afresh. ``handshake_took`` says how long a login
        of this probe took (None: none was made)."""
        self.handshake_took = None
        left = timeout
        try:
            if self._conn is not None:
                began = trio.current_time()
                with trio.fail_after(timeout):
                    try:
                        outcome: Outcome = await trio_asyncio.aio_as_trio(self._run)(
                            self._conn, command, timeout
                        )
                    except _broken_connection() as err:  # the connection, not the command
                        if isinstance(err, TimeoutError):
                            raise
                        await self.aclose()
                    else:
                        return outcome
                left = max(0.0, timeout - (trio.current_time() - began))  # one deadline
            async with handshakes:  # waited for before the deadline runs; held for the login
                began = trio.current_time()
                with trio.fail_after(left):
                    await self._open(min(left, connect_timeout or left))
                self.handshake_took = trio.current_time() - began
            left = max(0.0, left - self.handshake_took)
            with trio.fail_after(left):
                return cast(
                    Outcome, await trio_asyncio.aio_as_trio(self._run)(self._conn, command, left)
                )
        except trio.TooSlowError:
            await self.aclose()
            return Outcome(TIMED_OUT, f"timed out after {timeout:g} s".encode())
        except (OSError, TimeoutError, ValueError, _ssh_error()) as err:  # ValueError: the key
            if self.handshake_took is None and self._conn is None:
                self.handshake_took = trio.current_time() - began
            await self.aclose()
            return Outcome(SSH_FAILED, f"ssh: {_describe(err)}".encode())

    async def converse(
        self, command: str, *, timeout: float, answer: Callable[[bytes], Awaitable[bytes | None]]
    ) -> Outcome:
        """Run ``command`` on the connection a `probe` opened, reading its output line by
        line: ``answer`` gets each line until it returns something, which is written to the
        command's standard input, then closed (one answer). Within ``timeout``; never raises
        but trio's cancellation and what ``answer`` raises.
        """
        if self._conn is None:
            return Outcome(SSH_FAILED, b"ssh: no connection (log in first)")
        out = bytearray()
        process: Any = None
        try:
            with trio.fail_after(timeout):
                process = await trio_asyncio.aio_as_trio(self._start)(self._conn, command)
                answered = False
                while line := await trio_asyncio.aio_as_trio(process.stdout.readline)():
                    out += line
                    if not answered and (reply := await answer(line)) is not None:
                        answered = True
                        # a command that ended without reading: its exit status tells
                        with contextlib.suppress(BrokenPipeError, ConnectionError):
                            process.stdin.write(reply)
                            process.stdin.write_eof()
                result = await trio_asyncio.aio_as_trio(process.wait)()
        except trio.TooSlowError:
            await self.aclose()
            return Outcome(TIMED_OUT, bytes(out) + f"timed out after {timeout:g} s".encode())
        except (OSError, TimeoutError, _ssh_error()) as err:
            await self.aclose()
            return Outcome(SSH_FAILED, bytes(out) + f"ssh: {_describe(err)}".encode())
        finally:
            if process is not None:
                process.close()
        code = result.exit_status
        if result.exit_signal is not None or code is None or code < 0:
            code = SSH_FAILED
        return Outcome(code, bytes(out))

    @staticmethod
    async def _start(conn: object, command: str) -> object:
        import asyncssh

        assert isinstance(conn, asyncssh.SSHClientConnection)
        return await conn.create_process(command, encoding=None, stderr=asyncssh.STDOUT)

    async def _open(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            self._conn = await trio_asyncio.aio_as_trio(self._connect)(timeout)
            self.connections += 1
            return
        raise TimeoutError(f"no login within {timeout:g} s")

    async def _connect(self, timeout: float) -> object:
        import asyncssh

        return await asyncssh.connect(
            self.target.host,
            self.target.port,
            username=self.target.user,
            client_keys=[str(self.target.key)],
            known_hosts=None,
            server_host_key_algs=HOST_KEY_ALGS,
            connect_timeout=timeout,
            keepalive_interval=0,
        )

    @staticmethod
    async def _run(conn: object, command: str, timeout: float) -> Outcome:
        import asyncssh

        assert isinstance(conn, asyncssh.SSHClientConnection)
        result = await conn.run(
            command, check=False, timeout=timeout, encoding=None, stderr=asyncssh.STDOUT
        )
        out = result.stdout if isinstance(result.stdout, bytes) else b""
        code = result.exit_status
        if result.exit_signal is not None or code is None or code < 0:
            code = SSH_FAILED  # killed by a signal, or the channel closed without a status
        return Outcome(code, out)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return

        async def close() -> None:
            import asyncssh

            assert isinstance(conn, asyncssh.SSHClientConnection)
            conn.close()
            await conn.wait_closed()

        with trio.move_on_after(5) as scope:
            scope.shield = True  # (a bound of its own: the caller may be cancelled)
            await trio_asyncio.aio_as_trio(close)()


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text.splitlines()[0] if text else type(err).__name__


def _broken_connection() -> tuple[type[Exception], ...]:
    """What a command on a kept connection raises when the connection itself is gone."""
    import asyncssh

    return (OSError, asyncssh.ConnectionLost, asyncssh.DisconnectError, asyncssh.ChannelOpenError)


def _ssh_error() -> type[Exception]:
    import asyncssh

    return asyncssh.Error


# Ready means provisioned: sshd answers before cloud-init has finished (which restarts it,
# to apply its settings), so wait for cloud-init too, where the guest has it.
READY_COMMAND = (
    "if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1; fi;"
    " true"
)


def healthcheck_command(test: Sequence[str]) -> str:
    """A compose healthcheck test as the shell line to run in the guest."""
    kind, *rest = test
    if kind == "CMD-SHELL":
        return rest[0]
    return shlex.join(rest)  # CMD: an argv, quoted for the guest's shell
