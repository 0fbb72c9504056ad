"""The project's SSH key and the VMs' console password: made once, kept owner-only.

The key is ed25519 in OpenSSH format (``.qemu-compose/ssh/id_ed25519``, 0600, in a 0700
directory); guests accept it, and SSH password login stays off. The console password is
random per project, for the serial console only; the seed carries its SHA-512 crypt hash,
made by `openssl passwd -6` (Python's crypt module is gone in 3.13).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.errors import StateError
from orchestrator.state.files import atomic_write, check_owner, private_dir


@dataclass(frozen=True, slots=True)
class ProjectKey:
    private_key: Path
    public_line: str  # "ssh-ed25519 AAAA... qemu-compose@<project>"


def ensure_project_key(ssh_dir: Path, project: str) -> ProjectKey:
    """The project's key, made on first use. The private key is the truth, written whole or
    not at all; the public line is derived from it (``id_ed25519.pub`` is a copy for people,
    written again when it is missing or does not match), so no crash or full disk between
    two writes can leave a pair that does not fit."""
    private_dir(ssh_dir)
    private = ssh_dir / "id_ed25519"
    if private.exists() or private.is_symlink():
        check_owner(private)
        key = _load_key(private)
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        atomic_write(private, pem, mode=0o600)
    if private.stat().st_mode & 0o077:
        private.chmod(0o600)
    raw = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{raw.decode()} qemu-compose@{project}"
    public = ssh_dir / "id_ed25519.pub"
    try:
        written = public.read_text().strip()
    except FileNotFoundError:
        written = None
    if written != line:
        atomic_write(public, f"{line}\n".encode(), mode=0o644)
    return ProjectKey(private, line)


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise StateError(
            f"{path} is not an unencrypted OpenSSH private key ({err}): delete it (and "
            "recreate the project's VMs, which trust it) to make a new one"
        ) from err
    if not isinstance(key, Ed25519PrivateKey):
        raise StateError(f"{path} is not an ed25519 key: delete it to make a new one")
    return key


@dataclass(frozen=True, slots=True)
class ConsolePassword:
    password: str
    crypt_hash: str


def read_console_password(path: Path) -> ConsolePassword | None:
    """The project's console password, or None if none was made yet."""
    try:
        data = json.loads(path.read_text())
        return ConsolePassword(data["password"], data["hash"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as err:
        raise StateError(f"{path} is unreadable ({err}): delete it to make a new password") from err


def ensure_console_password(path: Path) -> ConsolePassword:
    """The project's console password (made on first use), stored 0600 with its hash."""
    existing = read_console_password(path)
    if existing is not None:
        return existing
    password = secrets.token_urlsafe(12)
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StateError(f"openssl passwd failed: {result.stderr.strip()}")
    made = ConsolePassword(password, result.stdout.strip())
    private_dir(path.parent)
    atomic_write(path, json.dumps({"password": made.password, "hash": made.crypt_hash}).encode())
    os.chmod(path, 0o600)
    return made
