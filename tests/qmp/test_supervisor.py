"""Supervised sessions against real QEMUs: every event to the sink, reconnects, set changes."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from qmp import QmpSession, open_session
from qmp.events import QmpEvent, SessionClosed, SessionEvent, SessionOpened
from qmp.supervisor import Supervisor
from tests.support.qemu import Vm

MakeVm = Callable[..., Vm]
CONNECTED, DISCONNECTED = SessionOpened.name, SessionClosed.name


@dataclass
class Sink:
    """What the supervisor hands on: (VM, event), in order."""

    seen: list[tuple[str, SessionEvent]] = field(default_factory=list)

    def __call__(self, vm: str, session: QmpSession, event: SessionEvent) -> None:
        self.seen.append((vm, event))

    def names(self, vm: str) -> list[str]:
        return [e.event if isinstance(e, QmpEvent) else e.name for v, e in self.seen if v == vm]

    async def wait_for(self, predicate: Callable[[Sink], bool]) -> None:
        with trio.fail_after(20):
            while not predicate(self):
                await trio.sleep(0.05)


async def test_events_of_every_vm_reach_the_sink_and_restarts_reconnect(make_vm: MakeVm) -> None:
    a, b = make_vm(name="a"), make_vm(name="b")
    sink = Sink()
    supervisor = Supervisor(
        sink, vms={"a": a.supervision_socket, "b": b.supervision_socket}, retry_interval=0.05
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await sink.wait_for(lambda s: s.names("a") == [CONNECTED] and s.names("b") == [CONNECTED])
        async with open_session(a.control_socket) as control:
            await control.execute("cont")
            await control.execute("stop")
        await sink.wait_for(lambda s: "STOP" in s.names("a"))
        assert sink.names("a") == [CONNECTED, "RESUME", "STOP"]
        assert sink.names("b") == [CONNECTED]
        resume = next(e for v, e in sink.seen if isinstance(e, QmpEvent))
        assert resume.timestamp > 1.5e9  # typed, with QEMU's own clock (epoch seconds)
        opened = next(e for v, e in sink.seen if v == "b")
        assert opened == SessionOpened(status="prelaunch")

        a.signal(signal.SIGKILL)  # the VM dies, then comes back on the same socket
        await sink.wait_for(lambda s: DISCONNECTED in s.names("a"))
        closed = [e for v, e in sink.seen if v == "a" and isinstance(e, SessionClosed)]
        assert closed == [SessionClosed("connection-closed")]
        a.stop()
        a2 = make_vm(name="a")
        await sink.wait_for(lambda s: s.names("a").count(CONNECTED) == 2)
        async with open_session(a2.control_socket) as control:
            await control.execute("cont")
        await sink.wait_for(lambda s: s.names("a").count("RESUME") == 2)
        assert sink.names("a") == [
            CONNECTED, "RESUME", "STOP", DISCONNECTED, CONNECTED, "RESUME",
        ]  # fmt: skip
        nursery.cancel_scope.cancel()


async def test_vms_are_added_and_removed_while_it_runs(make_vm: MakeVm) -> None:
    a, b = make_vm(name="a"), make_vm(name="b")
    sink = Sink()
    supervisor = Supervisor(sink, vms={"a": a.supervision_socket}, retry_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await sink.wait_for(lambda s: CONNECTED in s.names("a"))
        supervisor.set_vms({"b": b.supervision_socket})
        await sink.wait_for(lambda s: CONNECTED in s.names("b"))
        async with open_session(a.control_socket) as control:
            await control.execute("cont")  # a is no longer supervised: not handed on
        async with open_session(b.control_socket) as control:
            await control.execute("cont")
        await sink.wait_for(lambda s: "RESUME" in s.names("b"))
        await trio.sleep(0.3)
        assert sink.names("a") == [CONNECTED, DISCONNECTED]
        assert ("a", SessionClosed("supervision-ended")) in sink.seen
        nursery.cancel_scope.cancel()
