"""Rootless mode's plumbing, for real, as an ordinary user without any capability: a network
namespace of the user's own (unshare), the link agent making a bridge, a TAP and a
partition's table in it, and a real QEMU, left in the host's namespaces, getting the TAP
from our bridge helper. The helper refuses a TAP that is not there and a namespace that is
not the user's; the agent refuses requests it does not know."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netcfg import agent, names, taphelper, userns
from netcfg.errors import PlumbingError
from tests.support.qemu import QEMU
from tests.support.users import User, ordinary

REPO = Path(__file__).resolve().parents[2]


def test_the_helper_reads_qemus_arguments_and_nothing_else() -> None:
    assert taphelper.parse(["--use-vnet", "--fd=7", "--br=qct-a"]) == (True, 7, "qct-a")
    assert taphelper.parse(["--fd=3", "--br=x"]) == (False, 3, "x")
    for bad in (["--fd=3"], ["--br=x"], ["--fd=3", "--br=x", "--other"]):
        with pytest.raises(PlumbingError):
            taphelper.parse(bad)
    for name in ("", "a" * 16, "../x"):
        with pytest.raises(PlumbingError, match="not a TAP name"):
            taphelper.open_tap(name, vnet_hdr=True)


def test_a_namespace_is_named_by_pid_and_both_inodes() -> None:
    namespace = userns.Namespace(12, 4026531837, 4026531840)
    assert userns.Namespace.parse(namespace.token()) == namespace
    for bad in ("12", "12:a:3", "", "1:2:3:4"):
        with pytest.raises(PlumbingError, match="not a namespace"):
            userns.Namespace.parse(bad)
    mine = userns.of_process(os.getpid())
    assert mine.user == os.stat("/proc/self/ns/user").st_ino


def test_the_agent_refuses_what_it_does_not_know_and_goes_on() -> None:
    answers: list[bytes] = []
    agent.serve(
        [b'{"op": "nope"}\n', b"not json\n", b"\n", b'{"op": "delete_link"}\n',
         b'{"op": "delete_link", "name": "x", "extra": 1}\n',
         b'{"op": "ensure_bridge", "name": "b", "address": "10.0.0.300/24", "alias": "a"}\n'],
        answers.append,
    )  # fmt: skip
    said = [json.loads(a) for a in answers]
    assert len(said) == 5  # (the empty line is no request)
    assert all(set(a) == {"error"} for a in said), said
    assert "nope" in said[0]["error"]
    assert "name" in said[2]["error"]
    assert "extra" in said[3]["error"]
    assert "10.0.0.300" in said[4]["error"]


def _python_for(user: User, env: dict[str, str]) -> str:
    """An interpreter the user may run, with this venv's packages on PYTHONPATH (a venv under
    root's home is not the other user's to run)."""
    for python in (sys.executable, "/usr/bin/python3"):
        tried = user.run("env", *_env(env), python, "-c", "import msgspec, pyroute2", check=False)
        if tried.returncode == 0:
            return python
    pytest.skip(f"no Python the user {user.name} may run with this venv's packages")


def _env(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in env.items()]


@pytest.fixture
def user() -> User:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs unshare and nsenter (util-linux)")
    person = ordinary()
    if person.run("unshare", "--user", "--map-root-user", "--net", "true", check=False).returncode:
        pytest.skip("unprivileged user namespaces are not allowed here")
    if person.run("test", "-r", "/dev/net/tun", "-a", "-w", "/dev/net/tun", check=False).returncode:
        pytest.skip("/dev/net/tun is not open to every user (Debian's default: 0666)")
    return person


@pytest.fixture
def place() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qc-rootless-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def keeper(user: User) -> Iterator[userns.Namespace]:
    """The user's namespace, held by a process of theirs."""
    process = subprocess.Popen(
        user.argv("unshare", "--user", "--map-root-user", "--net", "sleep", "600")
    )
    try:
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{process.pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
            assert time.monotonic() < deadline, "unshare made no namespace"
            time.sleep(0.02)
        ns = Path(f"/proc/{process.pid}/ns")
        yield userns.Namespace(process.pid, (ns / "user").stat().st_ino, (ns / "net").stat().st_ino)
    finally:
        process.kill()
        process.wait()


def test_an_ordinary_user_makes_links_in_their_namespace_and_qemu_gets_the_tap(
    user: User, keeper: userns.Namespace, place: Path
) -> None:
    paths = [str(REPO), *{sysconfig.get_paths()[k] for k in ("purelib", "platlib")}]
    env = {"PYTHONPATH": os.pathsep.join(paths), "HOME": str(place)}
    python = _python_for(user, env)
    requests = [
        {"op": "ensure_bridge", "name": "qct-br", "address": "10.77.0.1/24", "alias": "qemu-compose t/lan"},
        {"op": "ensure_tap", "name": "qct-a", "bridge": "qct-br", "alias": "qemu-compose t/a/lan"},
        {"op": "ensure_tap", "name": "qct-a", "bridge": "qct-br", "alias": "qemu-compose t/a/lan"},
        {"op": "links_by_alias", "prefix": "qemu-compose t/"},
        {"op": "set_drops", "table": "qct", "drops": [["qct-a", "qct-b"]]},
        {"op": "drops_of", "table": "qct"},
        {"op": "ensure_tap", "name": "qct-c", "bridge": "nobridge", "alias": "x"},
    ]  # fmt: skip
    served = user.run(
        "env", *_env(env), python, "-m", "netcfg", "agent", keeper.token(),
        input="".join(json.dumps(r) + "\n" for r in requests),
    )  # fmt: skip
    answers = [json.loads(line) for line in served.stdout.splitlines()]
    assert answers[:6] == [
        {"ok": True},
        {"ok": True},
        {"ok": False},  # there already: nothing changed
        {"ok": {"qct-br": "qemu-compose t/lan", "qct-a": "qemu-compose t/a/lan"}},
        {"ok": None},
        {"ok": [["qct-a", "qct-b"]]},
    ]
    assert "nobridge does not exist" in answers[6]["error"]
    assert not Path("/sys/class/net/qct-br").exists()  # not on the host

    helper = place / "tap-helper"  # (what the venv's qemu-compose-tap-helper runs)
    helper.write_text(f'#!/bin/sh\nexec {python} -m netcfg.taphelper "$@"\n')
    helper.chmod(0o755)

    def qemu(tap: str, token: str) -> subprocess.Popen[str]:
        argv = [
            QEMU, "-S", "-nodefaults", "-display", "none", "-m", "64", "-accel", "tcg",
            "-netdev", f"bridge,id=n0,br={tap},helper={helper}",
            "-device", "virtio-net-pci,netdev=n0",
        ]  # fmt: skip
        return subprocess.Popen(
            user.argv("env", *_env(env), f"{userns.ENVIRONMENT}={token}", *argv),
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def in_namespace(*argv: str) -> str:
        return user.run(
            "nsenter", f"--target={keeper.pid}", "--user", "--net", "--preserve-credentials",
            *argv,
        ).stdout  # fmt: skip

    running = qemu("qct-a", keeper.token())
    try:
        deadline = time.monotonic() + 30
        while True:
            flags = json.loads(in_namespace("ip", "-j", "link", "show", "qct-a"))[0]["flags"]
            if "LOWER_UP" in flags:  # QEMU holds the TAP
                break
            assert running.poll() is None, running.communicate()[1]
            assert time.monotonic() < deadline, flags
            time.sleep(0.1)
        assert json.loads(in_namespace("ip", "-j", "link", "show", "qct-a"))[0]["master"] == (
            "qct-br"
        )
        # no TAP of that name: refused, rather than one made in its place
        missing = qemu("qct-zz", keeper.token())
        assert missing.wait(timeout=30) == 1
        assert "TAP qct-zz does not exist" in missing.communicate()[1]
        assert "qct-zz" not in in_namespace("ip", "-br", "link")
        # a namespace that is not the user's (PID 1's): refused
        theirs = qemu("qct-a", userns.Namespace(1, 1, 1).token())
        assert theirs.wait(timeout=30) == 1
        assert "process 1 is not this user's" in theirs.communicate()[1]
        # the keeper's namespace, a reused PID: refused too
        stale = userns.Namespace(keeper.pid, keeper.user, keeper.net + 1)
        wrong = qemu("qct-a", stale.token())
        assert wrong.wait(timeout=30) == 1
        assert "no longer in the namespace" in wrong.communicate()[1]
    finally:
        running.kill()
        running.wait()


def test_a_bridge_network_in_the_users_namespace_serves_dhcp_and_names(
    user: User, keeper: userns.Namespace, place: Path
) -> None:
    if shutil.which("dnsmasq") is None or shutil.which("busybox") is None:
        pytest.skip("needs dnsmasq and busybox (udhcpc)")
    paths = [str(REPO), *{sysconfig.get_paths()[k] for k in ("purelib", "platlib")}]
    env = {"PYTHONPATH": os.pathsep.join(paths), "HOME": str(place)}
    python = _python_for(user, env)
    theirs = place / "theirs"
    theirs.mkdir()
    os.chown(theirs, user.uid, user.gid)
    walked = user.run(
        "env", *_env(env), python, "-m", "tests.support.rootless_network", "network",
        keeper.token(), str(theirs),
    )  # fmt: skip
    seen = json.loads(walked.stdout)
    assert seen["dnsmasq_uid"] == user.uid  # the namespace's root is the user, nobody more
    bridge, tap = names.bridge_name("rl", "lan"), names.tap_name("rl", "db", "lan")
    assert seen["status"] == {"bridge": bridge, "bridge_exists": True, "taps": [tap]}
    assert seen["drops"] == [[tap, "qct-other"]]
    assert seen["veth"] == [0, ""]
    assert seen["dhcp"][0] == 0, seen["dhcp"]
    assert seen["lease"] == ["10.78.0.10", "10.78.0.1", "rl"]
    assert seen["names"] == {
        "db": ["NOERROR", "10.78.0.11"],
        "db.rl": ["NOERROR", "10.78.0.11"],
        "client.rl": ["NOERROR", "10.78.0.10"],
        "nothing.rl": ["NXDOMAIN"],
    }
    assert seen["removed"]
    assert seen["files_removed"]
    assert not Path(f"/sys/class/net/{bridge}").exists()  # never on the host


def test_a_keeper_holds_a_namespace_and_a_new_one_adopts_it(user: User, place: Path) -> None:
    paths = [str(REPO), *{sysconfig.get_paths()[k] for k in ("purelib", "platlib")}]
    env = {"PYTHONPATH": os.pathsep.join(paths), "HOME": str(place)}
    python = _python_for(user, env)
    walked = user.run("env", *_env(env), python, "-m", "tests.support.rootless_network", "keeper")
    assert json.loads(walked.stdout) == {
        "own": True,  # a namespace of its own
        "lo": "UNKNOWN",  # loopback up (its state is UNKNOWN when up)
        "first_ended": 0,  # on SIGTERM, at once
        "adopted": True,  # the second keeper is in the first's namespace, kept by a holder
        "second_ended": 0,
    }
