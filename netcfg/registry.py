"""What every qemu-compose project on this host has claimed: subnets and host ports.

One JSON file per user (``$XDG_STATE_HOME/qemu-compose/claims.json``), read and written under
an flock, so that two projects starting at once never pick the same subnet or port, and a
project that is down keeps its subnet for its next ``up``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec

from .errors import NetcfgError


class Claims(msgspec.Struct):
    """Owner keys are "project/network" for subnets and "project/vm" for ports."""

    subnets: dict[str, str] = {}
    ports: dict[str, list[int]] = {}

    def subnets_of_others(self, project: str) -> list[str]:
        return [s for owner, s in self.subnets.items() if not owner.startswith(f"{project}/")]

    def ports_of_others(self, project: str, vm: str) -> set[int]:
        return {
            p for owner, ports in self.ports.items() if owner != f"{project}/{vm}" for p in ports
        }

    def forget_project(self, project: str) -> None:
        prefix = f"{project}/"
        self.subnets = {k: v for k, v in self.subnets.items() if not k.startswith(prefix)}
        self.ports = {k: v for k, v in self.ports.items() if not k.startswith(prefix)}


def default_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "qemu-compose" / "claims.json"


class Registry:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    @contextlib.contextmanager
    def claims(self) -> Iterator[Claims]:
        """The claims, locked against other processes; changes are saved on a clean exit."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                claims = msgspec.json.decode(self.path.read_bytes(), type=Claims)
            except FileNotFoundError:
                claims = Claims()
            except (msgspec.DecodeError, msgspec.ValidationError):
                claims = Claims()  # unreadable: start over; host interfaces still guard us
            yield claims
            write_whole(self.path, msgspec.json.encode(claims), mode=0o600)
        finally:
            os.close(lock)


def write_whole(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data``, whole or not at all (temporary file, fsync, rename); a
    write that fails (a full disk) leaves the old file and no temporary one: NetcfgError."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise NetcfgError(f"cannot write {path}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # interrupted too: no temporary file is left behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise NetcfgError(f"cannot write {path}: {err.strerror}") from err
        raise
