"""Where a project's links are made: ``HostLinks`` in this process's network namespace (root
or CAP_NET_ADMIN: host bridges), ``AgentLinks`` in the user's own namespace through the link
agent (rootless mode). ``network``'s functions take either; both run the same requests.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import msgspec
import trio

from . import agent, links
from .errors import PlumbingError
from .userns import Namespace


class Links(Protocol):
    async def run(self, request: agent.Request) -> Any:
        """Do what ``request`` asks; its JSON-ready result, or PlumbingError."""
        ...


class HostLinks:
    """This process's namespace (or a named one, ``ip netns``: the tests')."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    async def run(self, request: agent.Request) -> Any:
        if isinstance(request, agent.CHANGES):
            links.require_net_admin()
        return await trio.to_thread.run_sync(agent.execute, request, self.netns)


HOST = HostLinks()


class AgentLinks:
    """The user's namespace, through one agent process; requests one at a time."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._stderr = process.stderr
        self._buffer = bytearray()
        self._lock = trio.Lock()

    async def _line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = await self._stdout.receive_some(65536)
            if not chunk:
                said = bytearray()
                with trio.move_on_after(5):
                    while data := await self._stderr.receive_some(65536):
                        said += data
                why = said.decode(errors="replace").strip() or "no word why"
                raise PlumbingError(f"the link agent ended: {why}")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    async def run(self, request: agent.Request) -> Any:
        async with self._lock:
            await self._stdin.send_all(msgspec.json.encode(request) + b"\n")
            return _answer(await self._line())


@asynccontextmanager
async def open_agent(namespace: Namespace, python: str = sys.executable) -> AsyncIterator[Links]:
    """A link agent in ``namespace`` for the block's length."""
    process = await trio.lowlevel.open_process(
        [python, "-m", "netcfg", "agent", namespace.token()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield AgentLinks(process)
    finally:
        with trio.CancelScope(shield=True):
            assert process.stdin is not None
            await process.stdin.aclose()
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


class OneShotAgent:
    """The user's namespace, through an agent per request (a process start each: for the few
    requests of a command that has no agent open)."""

    def __init__(self, namespace: Namespace, python: str = sys.executable) -> None:
        self.namespace = namespace
        self.python = python

    async def run(self, request: agent.Request) -> Any:
        done = await trio.run_process(
            [self.python, "-m", "netcfg", "agent", self.namespace.token()],
            stdin=msgspec.json.encode(request) + b"\n",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        lines = done.stdout.splitlines()
        if done.returncode != 0 or not lines:
            why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            raise PlumbingError(f"the link agent failed: {why}")
        return _answer(lines[0])


def _answer(line: bytes) -> Any:
    """The agent's answer to one request: its result, or its error raised."""
    answer = msgspec.json.decode(line)
    if "error" in answer:
        raise PlumbingError(answer["error"])
    return answer["ok"]
