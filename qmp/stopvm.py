"""Power a VM down gracefully from the command line: a systemd unit's ExecStop.

``python -m qmp.stopvm SOCKET --grace SECONDS``: press the power button over QMP, give the
guest the grace period, then quit; exits 0 once QEMU is gone (or was not there).
"""

from __future__ import annotations

import argparse
import socket
import sys

import trio

from .errors import QmpError
from .session import open_session


def _gone(path: str) -> str | None:
    """Why QEMU is not there to stop (no socket, nobody listening on it), else None. systemd
    runs ExecStop also after QEMU ended by itself (a `stop` that quit it, a poweroff): then
    there is nothing to wait for."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            return err.strerror or type(err).__name__
        except OSError:
            return None  # there but slow (busy): the session below waits for it
    return None


async def _stop(path: str, grace: float) -> str:
    gone = _gone(path)
    if gone is not None:
        return f"already-gone ({gone})"
    try:
        async with open_session(path, timeout=2) as session:
            return (await session.powerdown(grace=grace)).value
    except QmpError as err:
        return f"already-gone ({err})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qmp.stopvm", description=__doc__)
    parser.add_argument("socket", help="the VM's QMP socket")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds for the guest")
    args = parser.parse_args(argv)
    print(f"qmp.stopvm: {trio.run(_stop, args.socket, args.grace)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
