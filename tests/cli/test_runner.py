"""Ctrl-C and SIGTERM end an async command promptly, after its cleanup, never with a hang.

Regression test for the trio-asyncio hazard in HOSTING.md: a KeyboardInterrupt delivered
inside trio-asyncio's loop could hang the process. Each case runs the real runner in a child
process, signals it while it waits (in trio, or in asyncio through trio-asyncio on a socket
that never answers) and checks exit status, timing and that cleanup ran.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import trio, trio_asyncio
    from orchestrator.cli.runner import run
    mode, addr, marker = sys.argv[1], sys.argv[2], sys.argv[3]

    async def command():
        try:
            if mode == "trio":
                print("waiting", flush=True)
                await trio.sleep_forever()
            else:
                async with trio_asyncio.open_loop():
                    host, port = addr.rsplit(":", 1)
                    async def connect():
                        reader, writer = await asyncio.open_connection(host, int(port))
                        await reader.read(1)  # the peer never says anything
                    print("waiting", flush=True)
                    await trio_asyncio.aio_as_trio(connect)()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.05)  # cleanup that needs the event loop
                open(marker, "w").write("cleaned up")

    try:
        run(command)
    except Exception as err:
        print(type(err).__name__, err, flush=True)
        sys.exit(getattr(err, "exit_status", 1))
    """
)


@pytest.fixture
def silent_peer() -> socket.socket:
    """A listening socket that accepts and then never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


@pytest.mark.parametrize("mode", ["trio", "asyncio"])
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_ends_the_command_after_cleanup(
    mode: str, signum: int, status: int, silent_peer: socket.socket, tmp_path: Path
) -> None:
    host, port = silent_peer.getsockname()
    marker = tmp_path / "marker"
    for attempt in range(5):  # the signal lands at a different point each time
        marker.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, f"{host}:{port}", str(marker)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.02 * attempt)
        sent = time.monotonic()
        proc.send_signal(signum)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{mode}: the process hung after {signal.Signals(signum).name}")
        assert time.monotonic() - sent < 5
        assert proc.returncode == status, (out, err)
        assert f"Interrupted interrupted by {signal.Signals(signum).name}" in out
        assert marker.read_text() == "cleaned up"
        assert "Traceback" not in err


def test_a_result_is_returned_when_no_signal_came() -> None:
    from orchestrator.cli.runner import run

    async def answer() -> int:
        return 42

    assert run(answer) == 42


def test_an_error_wrapped_by_nurseries_comes_out_as_itself() -> None:
    import trio

    from orchestrator.cli.runner import run
    from orchestrator.errors import UsageError

    async def fail_soon() -> None:
        await trio.lowlevel.checkpoint()
        raise UsageError("no VM named x")

    async def failing() -> None:
        async with trio.open_nursery() as outer, trio.open_nursery() as inner:
            outer.start_soon(trio.sleep, 0)
            inner.start_soon(fail_soon)

    with pytest.raises(UsageError, match="no VM named x"):
        run(failing)


def test_errors_of_tasks_side_by_side_come_out_together() -> None:
    import trio

    from orchestrator.cli.runner import run
    from orchestrator.errors import SeveralErrors, UsageError, VmError

    async def fail(err: Exception) -> None:
        raise err  # at once: no checkpoint where the other's failure would cancel this one

    async def failing() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, VmError("a", "stop", "a.service", "QEMU hung"))
            nursery.start_soon(fail, UsageError("no VM named x"))

    with pytest.raises(SeveralErrors) as caught:
        run(failing)
    assert sorted(str(e) for e in caught.value.errors) == ["QEMU hung", "no VM named x"]
    assert caught.value.exit_status == 2  # the highest of theirs
    assert sorted(str(caught.value).splitlines()) == ["QEMU hung", "no VM named x"]


SECOND = textwrap.dedent(
    """
    import sys
    import trio
    from orchestrator.cli.runner import another_signal, interrupted, run

    async def command():
        try:
            print("waiting", flush=True)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                print("cleaning up", interrupted(), flush=True)
                with trio.move_on_after(20) as slow:
                    await another_signal()  # a long cleanup, cut short by a second signal
                print("cut short" if not slow.cancelled_caught else "ran out", flush=True)

    try:
        run(command)
    except Exception as err:
        print(type(err).__name__, flush=True)
        sys.exit(getattr(err, "exit_status", 1))
    """
)


def test_a_second_signal_reaches_the_cleanup_and_never_raises() -> None:
    """Attached `up` stops its VMs on the first Ctrl-C and cuts the grace short on the
    second: the second signal must reach the cleanup, never a KeyboardInterrupt."""
    proc = subprocess.Popen([sys.executable, "-c", SECOND], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "waiting"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "cleaning up True"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert out.split() == ["cut", "short", "Interrupted"], (out, err)
    assert proc.returncode == 130
    assert "KeyboardInterrupt" not in err


def test_several_errors_are_told_a_line_each_naming_their_vm() -> None:
    from orchestrator.cli import _render_error
    from orchestrator.errors import SeveralErrors, UsageError, VmError

    text = _render_error(SeveralErrors([VmError("a", "stop", "u", "hung"), UsageError("no x")]))
    assert text.splitlines() == ["qemu-compose: error: a: hung", "qemu-compose: error: no x"]
