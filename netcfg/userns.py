"""A network namespace that an ordinary user owns: the rootless mode's home for bridges, TAPs
and dnsmasq.

The namespace is made by a process of the user's (``unshare --user --map-root-user --net``)
and lives as long as something holds it: that process (the keeper), a dnsmasq started in it,
a QEMU holding one of its TAPs. Whoever joins it later (the TAP helper QEMU runs, the link
agent, dnsmasq) names it by ``Namespace``: a process in it and the two namespaces' inode
numbers, checked again when joining, so a reused PID never takes anyone elsewhere.

Joining a user namespace needs a single-threaded process: call ``enter`` in a process of its
own, before anything starts threads.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import msgspec

from .errors import PlumbingError

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
ENVIRONMENT = "QEMU_COMPOSE_NETNS"  # how the TAP helper, run by QEMU, is told where to go


class Namespace(msgspec.Struct, frozen=True):
    pid: int
    user: int  # inode of /proc/<pid>/ns/user
    net: int  # inode of /proc/<pid>/ns/net

    def token(self) -> str:
        return f"{self.pid}:{self.user}:{self.net}"

    @classmethod
    def parse(cls, token: str) -> Namespace:
        try:
            pid, user, net = (int(part) for part in token.split(":"))
        except ValueError:
            message = f"not a namespace: {token!r} (want pid:user-inode:net-inode)"
            raise PlumbingError(message) from None
        return cls(pid, user, net)


def of_process(pid: int, *, proc: Path = Path("/proc")) -> Namespace:
    """The namespaces ``pid`` is in, if that process is the caller's user's (else an error:
    nobody is taken into another user's namespace)."""
    try:
        owner = (proc / str(pid)).stat().st_uid
        user = os.stat(proc / str(pid) / "ns" / "user").st_ino
        net = os.stat(proc / str(pid) / "ns" / "net").st_ino
    except OSError as err:
        raise PlumbingError(f"process {pid}: {err.strerror}") from err
    if owner != os.getuid():
        raise PlumbingError(f"process {pid} is not this user's (uid {owner})")
    return Namespace(pid, user, net)


def _setns(fd: int, kind: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12
    if setns is not None:
        setns(fd, kind)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, kind) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def enter(namespace: Namespace) -> None:
    """Join ``namespace``'s user namespace, then its network namespace (this process only,
    which must be single-threaded)."""
    base = Path("/proc") / str(namespace.pid) / "ns"
    fds = []
    try:
        if (owner := base.parent.stat().st_uid) != os.getuid():
            raise PlumbingError(f"process {namespace.pid} is not this user's (uid {owner})")
        for kind, expected in (("user", namespace.user), ("net", namespace.net)):
            fd = os.open(base / kind, os.O_RDONLY | os.O_CLOEXEC)
            fds.append(fd)
            if os.fstat(fd).st_ino != expected:
                raise PlumbingError(f"process {namespace.pid} is no longer in the namespace")
        if os.fstat(fds[0]).st_ino != os.stat("/proc/self/ns/user").st_ino:
            _setns(fds[0], CLONE_NEWUSER)
        _setns(fds[1], CLONE_NEWNET)
    except FileNotFoundError as err:
        raise PlumbingError(f"process {namespace.pid} has ended") from err
    except OSError as err:
        raise PlumbingError(f"joining the namespace of {namespace.pid}: {err.strerror}") from err
    finally:
        for fd in fds:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """``python -m netcfg enter PID:USER:NET -- PROGRAM ARG...``: run a program in the
    namespace (dnsmasq, in rootless mode), checked as ``enter`` checks."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m netcfg enter PID:USER-INODE:NET-INODE -- PROGRAM [ARG...]",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        enter(Namespace.parse(args[0]))
    except PlumbingError as err:
        print(f"qemu-compose: {err}", file=sys.stderr)
        return 1
    try:
        os.execvp(args[2], args[2:])
    except OSError as err:
        print(f"qemu-compose: {args[2]}: {err.strerror}", file=sys.stderr)
        return 127
