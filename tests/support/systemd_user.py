"""A real, throw-away ``systemd --user`` manager for tests on hosts where PID 1 is not systemd.

On our machines and in CI there is no systemd as PID 1, but systemd is installed. A user
manager runs if it gets a private ``/run`` containing ``run/systemd/system`` and its own
journald, both in one private mount namespace, each in its own cgroup subtree (see
HOSTING.md). Its session bus is socket-activated by the manager (package dbus-user-session).
``XDG_RUNTIME_DIR`` is the same path inside and outside, so tests connect from the host's
namespace. Needs root. Everything it starts lives under its own cgroup subtree, which
``stop`` empties and removes, so nothing outlives it.

Where PID 1 *is* systemd, use the real user manager instead (``real_user_manager_env``).

Also a command: ``python -m tests.support.systemd_user start|ensure|stop|env DIR``
(``ensure`` starts one unless one already runs there).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
JOURNALD = "/lib/systemd/systemd-journald"


def pid1_is_systemd() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def _cgroup_roots() -> list[Path]:
    """The cgroup hierarchies that track processes: unified and/or name=systemd."""
    base = Path("/sys/fs/cgroup")
    fs = subprocess.run(
        ["stat", "-fc", "%T", str(base)], capture_output=True, text=True, check=True
    ).stdout.strip()
    if fs == "cgroup2fs":
        return [base]
    roots = []
    unified = base / "unified"
    if unified.is_dir() and (unified / "cgroup.procs").exists():
        roots.append(unified)
    if (base / "systemd").is_dir():
        roots.append(base / "systemd")
    if not roots:
        raise RuntimeError("no usable cgroup hierarchy under /sys/fs/cgroup")
    return roots


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (our daemons are reaped by PID 1)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class UserManager:
    """A private user manager under ``state``; ``name`` names its cgroup subtree."""

    state: Path
    name: str = "qc-test"
    timeout: float = 30.0
    stop_grace: float = 30.0  # how long the manager may take to stop its units
    systemd_pid: int | None = None
    journald_pid: int | None = None
    uid: int = 0  # whose manager: root's, or an ordinary user's (uid, gid, name)
    gid: int = 0
    user: str = "root"

    @property
    def runtime_dir(self) -> Path:
        return self.state / "xdg"

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.runtime_dir / 'bus'}"

    @property
    def journal_dir(self) -> Path:
        return self.state / "run" / "log" / "journal"

    @property
    def home(self) -> Path:
        return self.state / "home" if self.uid else Path("/root")

    @property
    def _slice(self) -> str:
        return f"{self.name}-user.slice"

    def env(self) -> dict[str, str]:
        return {
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
            "QEMU_COMPOSE_JOURNAL_DIR": str(self.journal_dir),  # for `qemu-compose logs`
        }

    def _cgroup(self, sub: str) -> list[Path]:
        return [root / self._slice / sub for root in _cgroup_roots()]

    def start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("a private user manager needs root")
        if self.state.exists():
            shutil.rmtree(self.state)
        (self.state / "run" / "systemd" / "system").mkdir(parents=True)
        self.runtime_dir.mkdir(mode=0o700)
        home = self.state / "home"
        home.mkdir(mode=0o700)  # (the user's; root's manager keeps /root)
        journald_cg = self._cgroup("journald.scope")
        manager_cg = self._cgroup(f"user.slice/user-{self.uid}.slice/user@{self.uid}.service")
        for cg in journald_cg + manager_cg:
            cg.mkdir(parents=True, exist_ok=True)
        if self.uid != 0:  # the user's: their runtime directory, home and cgroup (delegated)
            for directory in (self.state, *self.state.parents):
                if directory == Path("/tmp") or directory.stat().st_uid != 0:
                    break
                directory.chmod(directory.stat().st_mode | 0o711)  # (to reach their files)
            for path in (self.runtime_dir, home):
                os.chown(path, self.uid, self.gid)
            for cg in manager_cg:
                for path in (cg, *cg.iterdir()):
                    if path.is_dir() or path.name in ("cgroup.procs", "cgroup.subtree_control",
                                                      "cgroup.threads"):  # fmt: skip
                        os.chown(path, self.uid, self.gid)
        # 1) journald, in a new mount namespace where state/run is /run. setsid, unshare and
        #    sh all exec, so the PID we get is journald's.
        join = "; ".join(f'echo $$ > "{cg}/cgroup.procs"' for cg in journald_cg)
        with (self.state / "journald.log").open("wb") as log:
            journald = subprocess.Popen(
                [
                    "setsid", "unshare", "--mount", "--propagation", "slave", "--",
                    "sh", "-c", f'{join}; mount --bind "$1" /run && exec "$2"', "sh",
                    str(self.state / "run"), JOURNALD,
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        self.journald_pid = journald.pid
        self._wait((self.state / "run/systemd/journal/stdout").is_socket, journald, "journald")
        # 2) the user manager in the same mount namespace, in its own cgroup, clean environment.
        join = "; ".join(f'echo $$ > "{cg}/cgroup.procs"' for cg in manager_cg)
        become = (
            f"setpriv --reuid={self.uid} --regid={self.gid} --clear-groups --inh-caps=-all -- "
            if self.uid != 0
            else ""
        )
        script = (
            f"{join}; exec env -i HOME={self.home} USER={self.user} "
            f"LOGNAME={self.user} SHELL=/bin/sh "
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
            f'XDG_RUNTIME_DIR="$1" {become}"$2" --user --log-target=journal'
        )
        with (self.state / "systemd.log").open("wb") as log:
            manager = subprocess.Popen(
                [
                    "setsid", "nsenter", f"--mount=/proc/{journald.pid}/ns/mnt", "--",
                    "sh", "-c", script, "sh", str(self.runtime_dir), SYSTEMD,
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        self.systemd_pid = manager.pid
        self._wait(self._manager_running, manager, "systemd --user")

    def as_owner(self, *argv: str) -> list[str]:
        """``argv`` as the manager's user (its session bus admits no one else)."""
        if self.uid == 0:
            return list(argv)
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--inh-caps=-all", "--", *argv]  # fmt: skip

    def _manager_running(self) -> bool:
        if not (self.runtime_dir / "bus").is_socket():
            return False
        result = subprocess.run(
            self.as_owner(
                "busctl", "--user", "get-property", "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "SystemState",
            ),
            env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=10,
            check=False,
        )  # fmt: skip
        return '"running"' in result.stdout or '"degraded"' in result.stdout

    def _wait(self, ready: object, proc: subprocess.Popen[bytes], what: str) -> None:
        assert callable(ready)
        deadline = time.monotonic() + self.timeout
        while not ready():
            if proc.poll() is not None:
                logs = (self.state / f"{what.split(maxsplit=1)[0]}.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"{what} exited with {proc.returncode}: {logs}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{what} not ready after {self.timeout} s")
            time.sleep(0.05)

    def _cgroup_pids(self) -> list[int]:
        pids: set[int] = set()
        for root in _cgroup_roots():
            top = root / self._slice
            if top.is_dir():
                for procs in top.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(p) for p in procs.read_text().split())
        return sorted(pids)

    def stop(self) -> None:
        """Stop every unit (SIGTERM to the manager), then journald; leave nothing behind."""
        for pid, grace in ((self.systemd_pid, self.stop_grace), (self.journald_pid, 5.0)):
            if pid is None or not _alive(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            pids = [p for p in self._cgroup_pids() if _alive(p)]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for root in _cgroup_roots():
            top = root / self._slice
            if top.is_dir():
                for d in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if d.is_dir():
                        with contextlib.suppress(OSError):
                            d.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()
        self.systemd_pid = self.journald_pid = None


def main(argv: list[str]) -> None:
    command, state = argv[0], Path(argv[1])
    manager = UserManager(state)
    pidfile = state.parent / f"{state.name}.pids"
    if command == "ensure" and manager._manager_running():  # running already: reuse it
        command = "env"
    if command in ("start", "ensure"):
        manager.start()
        pidfile.write_text(f"{manager.systemd_pid} {manager.journald_pid}\n")
        for key, value in manager.env().items():
            print(f"export {key}={value}")
    elif command == "stop":
        with contextlib.suppress(OSError, ValueError):
            manager.systemd_pid, manager.journald_pid = map(int, pidfile.read_text().split())
        manager.stop()
    elif command == "env":
        for key, value in manager.env().items():
            print(f"export {key}={value}")


if __name__ == "__main__":
    main(sys.argv[1:])


@dataclass(frozen=True)
class ManagerHandle:
    """How to reach a systemd user manager for tests."""

    bus_address: str
    journal_dir: Path | None
    private: UserManager | None  # None: the machine's own user manager

    def as_owner(self, *argv: str) -> list[str]:
        """``argv`` as the manager's user."""
        return self.private.as_owner(*argv) if self.private is not None else list(argv)

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.bus_address}
        if self.private is not None:
            env["XDG_RUNTIME_DIR"] = str(self.private.runtime_dir)
        return subprocess.run(
            self.as_owner("systemctl", "--user", *args), env=env, capture_output=True,
            text=True, check=False,
        )  # fmt: skip
