"""The project's state directory: versioned state file, atomic writes, the project lock.

``.qemu-compose/`` beside the compose file is created 0700, and one that another user made
or may write to is refused (see `check_private_dir`). Every file in it is replaced
atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves the old
version or the new one, never half of one. Mutating commands hold an exclusive flock on
``.qemu-compose/lock`` so that two runs on one project are serialised; the lock dies with its
process, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self, TypeVar

import msgspec

from orchestrator.errors import LockHeldError, StateError

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "lock"


class VmState(msgspec.Struct, kw_only=True):
    """What qemu-compose created for one VM (the model says what should exist)."""

    unit: str
    config_hash: str
    created_at: float
    ssh_port: int | None = None
    macs: dict[str, str] = {}  # QEMU netdev (nic0: user-mode, nic1...: bridges) -> MAC
    ports: list[str] = []  # published: "127.0.0.1:8080->80/tcp"
    restart: str = "no"  # the restart: policy its QEMU was started with (-no-shutdown or not)
    shape: dict[str, str] | None = None  # what it runs with, field by field (runtime.changes)
    user: str | None = None  # the guest account its disk was made with (None: earlier versions)


class Scale(msgspec.Struct, frozen=True):
    """What `up --scale` set a replica set to: ``count`` replicas while the file says
    ``file`` (once it says something else, the file's number counts again)."""

    count: int
    file: int


class ProjectState(msgspec.Struct, kw_only=True):
    version: int = STATE_VERSION
    project: str = ""
    vms: dict[str, VmState] = {}
    subnets: dict[str, str] = {}  # network -> subnet, kept across runs
    addresses: dict[str, dict[str, str]] = {}  # network -> vm -> IPv4 address
    scale: dict[str, Scale] = {}  # definition -> its replicas as `up --scale` set them

    def networks_in_use(self) -> dict[str, list[str]]:
        """Each network's created VMs (those with an address on it)."""
        return {
            n: sorted(vm for vm in members if vm in self.vms)
            for n, members in self.addresses.items()
            if any(vm in self.vms for vm in members)
        }


def private_dir(path: Path) -> Path:
    """``path`` as a directory that only this user can use: made 0700 if it is not there
    (its missing parents too), else checked as `check_private_dir` does."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except PermissionError as err:
        raise StateError(f"cannot make {path}: {err.strerror}") from err
    return check_private_dir(path)


def check_project_dir(path: Path) -> None:
    """The directory that holds ``.qemu-compose`` must be this user's (or root's) and closed
    to other writers, or sticky as /tmp is: who may rename entries in it could put another
    ``.qemu-compose`` (or a link to anywhere) in place while a command works in it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return  # nothing there yet: load_project found the compose file elsewhere
    if info.st_uid not in (os.geteuid(), 0):
        raise StateError(
            f"{path} belongs to {_user(info.st_uid)}: its owner could replace the project's "
            f"state under qemu-compose's feet; run qemu-compose as {_user(info.st_uid)}, or "
            "move the project to a directory of your own"
        )
    if _writable_by_others(info) and not info.st_mode & stat.S_ISVTX:
        raise StateError(
            f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}): "
            "they could replace .qemu-compose under qemu-compose's feet; `chmod go-w "
            f"{path}` (or make it sticky, as /tmp is)"
        )


def check_private_dir(path: Path) -> Path:
    """Refuse a directory that is a link, belongs to another user or that other users can
    write to (as OpenSSH's StrictModes refuses a ~/.ssh): whoever could write there could
    have put their own key, password or socket in it. One that others can only read is made
    0700, with a warning (its key may have been read).
    """
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise StateError(f"{path} is {what}: qemu-compose keeps its keys and sockets in a "
                         "directory of its own there; remove it")  # fmt: skip
    check_owner(path, info)
    if info.st_mode & 0o022:
        raise StateError(
            f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}): "
            "anyone could have put keys or sockets in it; check what is in it, then "
            f"`chmod 700 {path}`"
        )
    if info.st_mode & 0o077:
        log.warning("%s was readable by other users: made it private (0700)", path)
        path.chmod(0o700)
    return path


def check_owner(path: Path, info: os.stat_result | None = None) -> None:
    """Refuse a file or directory that another user made."""
    info = info or path.lstat()
    if info.st_uid != os.geteuid():
        raise StateError(
            f"{path} belongs to {_user(info.st_uid)}, not to {_user(os.geteuid())}: another "
            "user made it, and its keys and sockets cannot be trusted; remove it, or run "
            "qemu-compose as its owner"
        )


def _writable_by_others(info: os.stat_result) -> bool:
    """Writable by another user: world-writable, or group-writable by a group that is not the
    owner's own (the private group of one user that umask 002 systems give each user)."""
    if info.st_mode & 0o002:
        return True
    if not info.st_mode & 0o020:
        return False
    try:
        group, owner = grp.getgrgid(info.st_gid), pwd.getpwuid(info.st_uid)
    except KeyError:
        return True
    return group.gr_name != owner.pw_name or bool(set(group.gr_mem) - {owner.pw_name})


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(path: Path | None, err: OSError) -> StateError:
    """The error of a write that found the disk (or the quota) full: which file, how much is
    free. What was being written is not there, so the same command converges once there is
    room again."""
    why = "no space left" if err.errno == errno.ENOSPC else "the disk quota is used up"
    if path is None:
        return StateError(f"cannot write: {why}; free some space, then run the command again")
    return StateError(
        f"cannot write {path}: {why} ({free_space(path.parent)}); free some space, then run "
        "the command again"
    )


def free_space(directory: Path) -> str:
    """How much is free where ``directory`` is, said for an error: "3.2 MiB free there"."""
    try:
        size = shutil.disk_usage(directory).free
    except OSError:
        return "free space unknown"
    amount = f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size // 1024} KiB"
    return f"{amount} free there"


def read_struct(path: Path, kind: type[T]) -> T | None:
    """The ``kind`` (a msgspec type) a small JSON file holds; None when it is missing or
    cannot be read as one (its writer writes it whole: nothing half-written is ever read)."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=kind)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole. A
    full disk is a StateError naming the file and the space left (see `no_space`). Not
    ``durable``: not synced to disk (what a power cut may lose, being remade at once)."""
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
        )  # the writer's PID in the name: `sweep_temporaries` knows when it is gone
    except OSError as err:
        if err.errno in NO_SPACE:
            raise no_space(path, err) from err
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            raise no_space(path, err) from err
        raise
    if durable:
        sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """What was renamed in ``directory`` (or made, or removed) survives a power cut."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_WRITER = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .<name>.<pid>.<random>.tmp


def sweep_temporaries(state_dir: Path) -> list[Path]:
    """Remove what killed writers left in the state directory: `atomic_write`'s temporary
    files whose writer is gone, and the fixed-name ones of disks and seeds (``.<name>.tmp``,
    ``.<name>.raw``), which only a holder of the project lock writes. Call it holding the
    lock. Returns what it removed."""
    removed = []
    for path in state_dir.rglob(".*"):
        if not (path.name.endswith((".tmp", ".raw")) and path.is_file()):
            continue
        match = _WRITER.match(path.name)
        if match and _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    if removed:
        log.info("removed %d temporary files of interrupted writes", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StateDir:
    """One project's ``.qemu-compose`` directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def ensure(self) -> Self:
        private_dir(self.path)
        return self

    def read_state(self, project: str) -> ProjectState:
        """The saved state; a fresh one if there is none or it is unreadable (moved aside).
        A state directory that is not this user's own is refused, never read."""
        if self.path.exists() or self.path.is_symlink():
            check_private_dir(self.path)
        try:
            raw = self.state_file.read_bytes()
        except FileNotFoundError:
            return ProjectState(project=project)
        try:
            version = msgspec.json.decode(raw, type=_Versioned).version
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return self._set_aside(project, err)
        if version > STATE_VERSION:
            raise StateError(
                f"{self.state_file} was written by a newer qemu-compose (state version "
                f"{version}, this one knows {STATE_VERSION}): upgrade qemu-compose"
            )
        try:
            return msgspec.json.decode(raw, type=ProjectState)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return self._set_aside(project, err)

    def _set_aside(self, project: str, err: Exception) -> ProjectState:
        aside = self.path / f"{STATE_FILE}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(self.state_file, aside)
        log.warning(
            "%s was unreadable (%s); moved it to %s and started afresh",
            self.state_file,
            err,
            aside.name,
        )
        return ProjectState(project=project)

    def write_state(self, state: ProjectState) -> None:
        self.write_encoded(self.encode(state))

    @staticmethod
    def encode(state: ProjectState) -> bytes:
        return msgspec.json.format(msgspec.json.encode(state), indent=2)

    def write_encoded(self, data: bytes) -> None:
        """Write what `encode` made (in a worker thread, say: it fsyncs)."""
        self.ensure()
        atomic_write(self.state_file, data)


class _Versioned(msgspec.Struct):
    version: int


class ProjectLock:
    """An exclusive, process-lifetime lock on a project's state directory."""

    POLL_SECONDS = 0.1

    def __init__(self, state_dir: Path, command: str = "") -> None:
        self.path = state_dir / LOCK_FILE
        self.command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> None:
        """Take the lock now or raise LockHeldError naming its holder."""
        if self._fd is not None:
            raise StateError(f"{self.path} is already held by this process")
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise StateError(f"cannot lock {self.path}: {err.strerror}") from err
            pid, command = self._holder()
            raise LockHeldError(self.path, pid, command) from None
        os.ftruncate(fd, 0)
        try:  # who holds it, for whoever waits: worth nothing on a full disk
            os.pwrite(fd, f"{os.getpid()}\n{self.command}\n".encode(), 0)
        except OSError as err:
            if err.errno not in NO_SPACE:
                os.close(fd)
                raise
        self._fd = fd

    def _holder(self) -> tuple[int | None, str]:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return None, ""
        pid = int(lines[0]) if lines and lines[0].isdigit() else None
        return pid, lines[1] if len(lines) > 1 else ""

    async def acquire(self, *, wait: bool) -> None:
        """Take the lock; with ``wait``, poll until it is free (bound it with trio.fail_after)."""
        import trio

        while True:
            try:
                self.try_acquire()
            except LockHeldError as held:
                if not wait:
                    raise
                log.info("%s; waiting", held)
                await trio.sleep(self.POLL_SECONDS)
            else:
                return

    def release(self) -> None:
        # The file stays: unlinking a lock file races with a process that has just opened it.
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def held_now(self) -> Iterator[Self]:
        self.try_acquire()
        try:
            yield self
        finally:
            self.release()
