"""Fixtures shared by the test suite: real peers, started for the tests and torn down after."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.http import Files
from tests.support.qemu import short_tempdir
from tests.support.systemd_user import ManagerHandle, UserManager, pid1_is_systemd


def _real_user_bus() -> str | None:
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not address and runtime and Path(runtime, "bus").is_socket():
        address = f"unix:path={runtime}/bus"
    return address


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the test guests that take minutes to build (marked ``built_guest``) run last,
    in their order: the whole suite builds those guests in the background meanwhile
    (.ci/test), so the tests before them use the other core and none waits idle."""
    items.sort(key=lambda item: item.get_closest_marker("built_guest") is not None)


@pytest.fixture(scope="session")
def user_manager() -> Iterator[ManagerHandle]:
    """The machine's user manager where PID 1 is systemd, else a private one (needs root)."""
    if pid1_is_systemd() and (address := _real_user_bus()):
        yield ManagerHandle(address, None, None)
        return
    if os.geteuid() != 0 or not Path("/lib/systemd/systemd").exists():
        pytest.skip("no systemd user manager: PID 1 is not systemd and we cannot start one (root)")
    state = Path(tempfile.mkdtemp(prefix="qc-systemd-"))
    manager = UserManager(state / "m", name=f"qc-test-{os.getpid()}")
    manager.start()
    try:
        yield ManagerHandle(manager.bus_address, manager.journal_dir, manager)
    finally:
        manager.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[tuple[str, type[Files]]]:
    """An HTTP server of 3 MiB of random bytes at any path: (base URL, its handler class)."""
    handler = type("Files", (Files,), {"content": os.urandom(3 << 20), "cut": None, "ranges": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def shortdir() -> Iterator[Path]:
    """A directory with a short path (unix sockets), removed after the test."""
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
