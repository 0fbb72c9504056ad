"""Nobody in: directories, keys and sockets are private to their owner and checked, never
trusted (#13, item 4), and the key pair is written as a unit (item 5).

The intruder is a real second user, made for the test; what it makes, it makes itself.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import StateDir, StateError
from orchestrator.guest.secrets import ensure_project_key
from orchestrator.state.files import private_dir
from orchestrator.state.paths import ProjectPaths, make_socket_dir, remove_socket_dir
from tests.support.users import User, intruder

EXE = str(Path(sys.executable).parent / "qemu-compose")


@pytest.fixture
def other() -> User:
    return intruder()


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory the other user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="qc-sec-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared(reachable: Path) -> Path:
    """A project directory anyone may write to (as a careless /srv/lab would be)."""
    project = reachable / "lab"
    project.mkdir()
    project.chmod(0o1777)
    (project / "qemu-compose.yaml").write_text("name: lab\nvms:\n  web: {memory: 64}\n")
    return project


def test_a_state_directory_another_user_made_is_refused(other: User, shared: Path) -> None:
    """The intruder makes .qemu-compose with its own key first; the owner's up must refuse
    to use it (it would put the intruder's key into a new VM with passwordless sudo)."""
    ssh = shared / ".qemu-compose" / "ssh"
    other.run("mkdir", "-p", str(ssh))
    other.run("sh", "-c", f"echo intruder-key > {ssh}/id_ed25519")
    for command in (["up", "-d"], ["ps"], ["up", "--dry-run"]):
        result = subprocess.run(
            [EXE, *command], cwd=shared, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 1, (command, result.stderr)
        assert f"{shared / '.qemu-compose'} belongs to qc-intruder" in result.stderr
        assert "Traceback" not in result.stderr
    assert (ssh / "id_ed25519").read_text() == "intruder-key\n"  # nothing touched, nothing used
    assert os.stat(shared / ".qemu-compose").st_uid == other.uid


def test_a_project_directory_others_may_write_to_is_refused(reachable: Path) -> None:
    """Who may rename entries in the project's directory could swap .qemu-compose (for a
    link to /etc, say) while a command works in it: refused unless sticky, as /tmp is."""
    project = reachable / "open"
    project.mkdir()
    project.chmod(0o777)
    (project / "qemu-compose.yaml").write_text("vms:\n  web: {memory: 64}\n")
    result = subprocess.run([EXE, "ps"], cwd=project, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1
    assert f"{project} can be written by other users (mode 777)" in result.stderr
    assert not (project / ".qemu-compose").exists()


def test_a_project_directory_of_another_user_is_refused(other: User, reachable: Path) -> None:
    """root working in another user's directory: that user could replace the state."""
    shared = reachable / "pub"
    shared.mkdir()
    shared.chmod(0o1777)
    project = shared / "theirs"
    other.run("mkdir", str(project))
    other.run("sh", "-c", f"printf 'vms:\\n  web: {{memory: 64}}\\n' > {project}/qemu-compose.yaml")
    result = subprocess.run([EXE, "up", "--dry-run"], cwd=project, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"{project} belongs to qc-intruder" in result.stderr


def test_a_directory_others_may_write_to_is_refused(tmp_path: Path) -> None:
    state = tmp_path / ".qemu-compose"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(StateError, match=r"can be written by other users \(mode 777\)"):
        StateDir(state).ensure()
    with pytest.raises(StateError, match="can be written by other users"):
        StateDir(state).read_state("demo")


def test_a_link_in_place_of_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "ssh").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError, match="is a symbolic link"):
        private_dir(tmp_path / "ssh")


def test_a_directory_others_could_only_read_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / ".qemu-compose"
    state.mkdir()
    state.chmod(0o755)
    StateDir(state).ensure()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_a_key_another_user_put_in_place_is_refused(other: User, reachable: Path) -> None:
    ssh = private_dir(reachable / "ssh")
    ssh.chmod(0o733)  # a moment of carelessness: others may create files in it
    other.run("sh", "-c", f"echo not-yours > {ssh}/id_ed25519")
    ssh.chmod(0o700)
    with pytest.raises(StateError, match="id_ed25519 belongs to qc-intruder"):
        ensure_project_key(ssh, "demo")


def test_the_key_pair_is_whole_after_a_crash_between_its_files(tmp_path: Path) -> None:
    """ENOSPC (or a crash) after the private key and before the public one used to wedge
    every later up (FileNotFoundError: id_ed25519.pub): the pair comes from the private key."""
    first = ensure_project_key(tmp_path / "ssh", "demo")
    public = tmp_path / "ssh" / "id_ed25519.pub"
    public.unlink()
    again = ensure_project_key(tmp_path / "ssh", "demo")
    assert again == first
    assert public.read_text() == first.public_line + "\n"
    public.write_text("ssh-ed25519 AAAAwrong qemu-compose@demo\n")  # half of another pair
    assert ensure_project_key(tmp_path / "ssh", "demo").public_line == first.public_line
    assert public.read_text() == first.public_line + "\n"


def test_a_broken_private_key_is_a_clear_error(tmp_path: Path) -> None:
    ssh = private_dir(tmp_path / "ssh")
    (ssh / "id_ed25519").write_bytes(b"")  # what a full disk could leave from an older version
    with pytest.raises(StateError, match="not an unencrypted OpenSSH private key"):
        ensure_project_key(ssh, "demo")


def test_sockets_without_a_runtime_dir_go_to_an_unguessable_private_directory(
    other: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old fallback, /tmp/qemu-compose-<uid>/, could be made first by anyone, who then
    served a fake console socket: the fallback is made by mkdtemp and recorded."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    guessable = Path(f"/tmp/qemu-compose-{os.getuid()}")
    premade = not guessable.exists()
    if premade:
        other.run("mkdir", "-p", str(guessable / "qemu-compose"))
    try:
        state = tmp_path / ("x" * 90) / ".qemu-compose"  # too long for sockets in place
        paths = ProjectPaths(private_dir(state), "demo")
        vm = make_socket_dir(paths, "web")
        assert vm.sockets != vm.directory
        assert not vm.sockets.is_relative_to(guessable)
        base = vm.sockets.parent
        assert base.name.startswith("qemu-compose-")
        assert stat.S_IMODE(base.stat().st_mode) == 0o700
        assert base.stat().st_uid == os.geteuid()
        assert paths.vm("web").sockets == vm.sockets  # found again through the record
        assert len(str(vm.qmp_control_socket)) < 108
        remove_socket_dir(paths, "web")  # destroy leaves no directory behind
        assert not base.exists()
        assert not paths.sockets_record.exists()
    finally:
        if premade:
            other.run("rm", "-rf", str(guessable))


def test_sockets_in_the_runtime_dir_are_removed_with_their_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    paths = ProjectPaths(private_dir(tmp_path / ("y" * 90) / ".qemu-compose"), "demo")
    vm = make_socket_dir(paths, "web")
    assert vm.sockets.parent == runtime / "qemu-compose"
    remove_socket_dir(paths, "web")
    assert not vm.sockets.exists()
    runtime.chmod(0o777)
    with pytest.raises(StateError, match="can be written by other users"):
        make_socket_dir(paths, "web")
