"""A recreated or destroyed VM's host key is forgotten; the others are kept."""

from __future__ import annotations

from pathlib import Path

from orchestrator.guest.knownhosts import forget_host, host_alias, known_hosts
from orchestrator.state.paths import ProjectPaths


def test_forget_one_vm(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path, "demo")
    paths.ssh_dir.mkdir()
    web, db = host_alias("demo", "web"), host_alias("demo", "db")
    known_hosts(paths).write_text(
        f"{web} ssh-ed25519 AAAA1\n{db} ssh-ed25519 AAAA2\n{web}x ssh-ed25519 AAAA3\n"
    )
    forget_host(paths, "demo", "web")
    assert known_hosts(paths).read_text() == f"{db} ssh-ed25519 AAAA2\n{web}x ssh-ed25519 AAAA3\n"
    forget_host(paths, "demo", "gone")  # nothing to forget: unchanged
    assert known_hosts(paths).read_text().count("\n") == 2


def test_forget_without_a_file(tmp_path: Path) -> None:
    forget_host(ProjectPaths(tmp_path, "demo"), "demo", "web")
    assert not (tmp_path / "ssh").exists()
