"""A second, unprivileged local user for the tests that play an intruder (root only)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass

import pytest

NAME = "qc-intruder"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``argv`` as this user (setpriv: no groups, no capabilities)."""
        return subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
             "--inh-caps=-all", "--", *argv],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip


def intruder() -> User:
    """The test's second user, made once (a system user without a home or a login)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, useradd and setpriv to make a second user")
    try:
        entry = pwd.getpwnam(NAME)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME],
            check=True, capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(NAME)
    return User(NAME, entry.pw_uid, entry.pw_gid)
