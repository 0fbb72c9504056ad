"""SSH to a VM with the project key: readiness probes, healthchecks and one-off commands.

asyncssh is an asyncio library; this is the one orchestrator module that bridges to it (through
the trio-asyncio loop the runtime opens), and nothing asyncio leaves it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
import trio_asyncio

# As OpenSSH orders them: some servers (dropbear) offer RSA without having an RSA key.
HOST_KEY_ALGS = ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256"]


@dataclass(frozen=True, slots=True)
class SshTarget:
    host: str
    port: int
    user: str
    key: Path


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


async def run(target: SshTarget, command: str, *, timeout: float) -> CommandResult:
    """Run ``command`` (a shell line for the guest) once; OSError/asyncssh errors propagate."""

    import asyncssh  # here, not at the top: ~140 ms that `ps` of VMs without SSH need not pay

    async def go() -> CommandResult:
        conn = await asyncssh.connect(
            target.host,
            target.port,
            username=target.user,
            client_keys=[str(target.key)],
            known_hosts=None,
            server_host_key_algs=HOST_KEY_ALGS,
            connect_timeout=timeout,
        )
        try:
            result = await conn.run(command, check=False, timeout=timeout)
        finally:
            conn.close()
        return CommandResult(int(result.exit_status or 0), str(result.stdout), str(result.stderr))

    with trio.fail_after(timeout + 1):
        result: CommandResult = await trio_asyncio.aio_as_trio(go)()
    return result


def _ssh_error() -> type[Exception]:
    import asyncssh

    return asyncssh.Error


async def passes(target: SshTarget, command: str, *, timeout: float) -> bool:
    """``command`` ran and exited 0; an SSH failure or a timeout is a failure too."""
    try:
        return (await run(target, command, timeout=timeout)).exit_status == 0
    except (OSError, _ssh_error(), trio.TooSlowError, TimeoutError):
        return False


async def reachable(target: SshTarget, *, timeout: float = 5.0) -> bool:
    return await passes(target, "true", timeout=timeout)


# Ready means provisioned: sshd answers before cloud-init has finished (which restarts it,
# to apply its settings), so wait for cloud-init too, where the guest has it.
READY_COMMAND = (
    "if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1; fi;"
    " true"
)


async def wait_ready(
    target: SshTarget, *, interval: float = 1.0, provision_timeout: float = 600
) -> None:
    """Until SSH logs in with the key and cloud-init is done; bound it with trio.fail_after."""
    while True:
        try:
            result = await run(target, READY_COMMAND, timeout=provision_timeout)
        except (OSError, _ssh_error(), trio.TooSlowError, TimeoutError):
            await trio.sleep(interval)
            continue
        if result.exit_status == 0:
            return
        await trio.sleep(interval)


def healthcheck_command(test: Sequence[str]) -> str:
    """A compose healthcheck test as the shell line to run in the guest."""
    kind, *rest = test
    if kind == "CMD-SHELL":
        return rest[0]
    return shlex.join(rest)  # CMD: an argv, quoted for the guest's shell
