"""Unprivileged local users for the tests (root only): an intruder, and an ordinary user who
runs qemu-compose without privilege (rootless mode)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass

import pytest

NAME = "qc-intruder"
ORDINARY = "qc-rootless"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    gid: int

    def argv(self, *argv: str) -> list[str]:
        """``argv`` to run as this user (setpriv: no groups, no capabilities)."""
        return [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
            "--inh-caps=-all", "--", *argv,
        ]  # fmt: skip

    def run(
        self, *argv: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as this user."""
        return subprocess.run(
            self.argv(*argv), input=input, capture_output=True, text=True, check=check,
            timeout=30,
        )  # fmt: skip


def local_user(name: str) -> User:
    """A user of that name, made once (a system user without a home or a login)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, useradd and setpriv to make a second user")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid)


def intruder() -> User:
    """The test's second user, who tries to get at the first one's things."""
    return local_user(NAME)


def ordinary() -> User:
    """A user without any privilege, who runs VMs as themselves."""
    return local_user(ORDINARY)
