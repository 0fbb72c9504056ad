"""Unit-name escaping must be byte-for-byte what `systemd-escape` prints."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from systemd_dbus import escape, is_valid_unit_name, unescape, unit_object_path

CASES = [
    "web",
    "fedora-vm",
    "my_project",
    "a.b",
    ".hidden",
    "a/b/c",
    "/leading/slash",
    "with space",
    "semi;colon",
    "back\\slash",
    "ünïcödé",
    "x:y",
    "tab\there",
    "-dash",
    "trailing-",
    "日本",
]


def _random_names(count: int) -> list[str]:
    rng = random.Random(20261127)
    alphabet = "abcXYZ019-_.:/\\ @;'\"$`!\x01é€"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(count)]


@pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="systemd-escape not installed")
def test_escape_matches_systemd_escape() -> None:
    names = CASES + _random_names(300)
    result = subprocess.run(
        ["systemd-escape", "--", *names], capture_output=True, text=True, check=True
    )
    expected = result.stdout.split()  # escaped names never contain white space
    assert len(expected) == len(names)
    for name, want in zip(names, expected, strict=True):
        assert escape(name) == want, name


@pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="systemd-escape not installed")
def test_unescape_matches_systemd_escape() -> None:
    for name in CASES:
        escaped = escape(name)
        result = subprocess.run(
            ["systemd-escape", "--unescape", "--", escaped],
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.removesuffix("\n") == unescape(escaped) == name


@pytest.mark.parametrize("name", CASES + _random_names(50))
def test_unescape_inverts_escape(name: str) -> None:
    assert unescape(escape(name)) == name


def test_escaped_names_make_valid_unit_names() -> None:
    for name in CASES + _random_names(100):
        assert is_valid_unit_name(f"qemu-compose-{escape(name)}.service")


def test_invalid_unit_names() -> None:
    assert not is_valid_unit_name("no-suffix")
    assert not is_valid_unit_name("sp ace.service")
    assert not is_valid_unit_name("a" * 300 + ".service")


def test_unit_object_path() -> None:
    assert unit_object_path("exp1.service") == "/org/freedesktop/systemd1/unit/exp1_2eservice"
    assert (
        unit_object_path("qemu-compose-a\\x2db.service")
        == "/org/freedesktop/systemd1/unit/qemu_2dcompose_2da_5cx2db_2eservice"
    )
