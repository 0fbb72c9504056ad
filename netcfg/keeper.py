"""The keeper of a user's namespace (rootless mode): a process that does nothing but be in it,
so that it lives while no VM or dnsmasq does. The caller runs it as a service of the user's
own manager (netcfg knows nothing of systemd) with ``argv``; ``namespace_of`` says, from the
service's main PID, where its namespace is once it has one.

A new keeper makes a new namespace (``unshare --user --map-root-user --net``), unless it is
given one to adopt: the namespace of a dnsmasq or a QEMU that outlived the last keeper, so
what runs already and what starts next share their bridges.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

from .errors import PlumbingError
from .userns import Namespace, of_process


def argv(python: str = sys.executable, adopt: Namespace | None = None) -> list[str]:
    """The keeper's command line: in a new namespace, or in ``adopt``."""
    keeper = [python, "-m", "netcfg", "keeper"]
    if adopt is not None:
        return [python, "-m", "netcfg", "enter", adopt.token(), "--", *keeper]
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    return [unshare, "--user", "--map-root-user", "--net", "--", *keeper]


def namespace_of(pid: int, *, ready: bool = True, timeout: float = 10.0) -> Namespace:
    """The namespace the keeper ``pid`` is in, once it is in one of its own (not this
    process's) and has brought its loopback up (``ready``; else any process of the user's
    that is in one: what a new keeper adopts)."""
    mine = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + timeout
    while True:
        namespace = of_process(pid)
        if namespace.net != mine and (not ready or _ready(pid)):
            return namespace
        if time.monotonic() > deadline:
            raise PlumbingError(f"the keeper {pid} has no namespace of its own after {timeout} s")
        time.sleep(0.02)


READY = b"qc-netns-ready"  # the keeper's name (comm) once its loopback is up


def _ready(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm", "rb") as comm:
            return comm.read().strip() == READY
    except OSError:
        return False


def main(args: list[str]) -> int:
    """In the namespace: loopback up (names a VM's own address resolve through it), then
    wait for SIGTERM."""
    if args:
        print("usage: python -m netcfg keeper", file=sys.stderr)
        return 2
    ends = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, ends)  # taken by sigwait below, none missed
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    _set_name(READY)
    signal.sigwait(ends)
    return 0


def _set_name(name: bytes) -> None:
    """The process's name (comm, what ``ps`` shows): PR_SET_NAME, at most 15 bytes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)
