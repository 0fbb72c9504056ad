"""The units' ExecStop (`python -m qmp.stopvm`) when QEMU has ended already: systemd runs
it after QEMU quit by itself too (a `stop` that quit it, a poweroff); it answers at once
instead of waiting for a monitor that will not come."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from qmp.stopvm import _stop
from tests.support.qemu import Vm


async def test_no_socket_or_a_socket_nobody_listens_on_is_gone_at_once(sockdir: Path) -> None:
    missing = str(sockdir / "missing.sock")
    stale = str(sockdir / "stale.sock")
    with socket.socket(socket.AF_UNIX) as left:  # bound, never listening: as QEMU leaves it
        left.bind(stale)
    for path in (missing, stale):
        began = time.monotonic()
        said = await _stop(path, 30)
        assert said.startswith("already-gone"), said
        assert time.monotonic() - began < 0.5


async def test_a_running_qemu_is_still_stopped(make_vm: Callable[..., Vm]) -> None:
    vm = make_vm(name="a")
    assert await _stop(vm.control_socket, 0) == "quit"
    assert vm.process is not None
    assert vm.process.wait(timeout=10) == 0
