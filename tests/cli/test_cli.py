"""The command line as a user meets it: the real console script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad"
EXE = shutil.which("qemu-compose", path=str(Path(sys.executable).parent)) or "qemu-compose"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_COMPOSE")}
    full_env.update(env or {})
    return subprocess.run(
        [EXE, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "qemu-compose.yaml").write_text(
        "name: demo\nnetworks: {lan: {subnet: 10.77.0.0/24}}\nvolumes: {data: {}}\n"
        "vms:\n  db: {}\n  web:\n    depends_on: [db]\n    networks: [lan]\n"
    )
    return tmp_path


COMMANDS = [
    "completion", "config", "console", "destroy", "doctor", "fault", "image", "inspect", "kill",
    "logs", "network", "pause", "ps", "pull", "restart", "resume", "snapshot", "ssh", "stop",
    "suspend", "template", "unpause", "up", "watch",
]  # fmt: skip
FAULTS = ["fault link", "fault net", "fault disk", "fault partition", "fault heal", "fault panic",
          "fault ls", "fault clear"]  # fmt: skip
SNAPSHOTS = ["snapshot save", "snapshot restore", "snapshot ls", "snapshot rm", "template ls",
             "template rm"]  # fmt: skip


def test_help_lists_only_working_commands(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    block = result.stdout.split("Commands:")[1].strip().split("\n\n")[0]
    listed = [line.split()[0] for line in block.splitlines()]
    assert listed == COMMANDS


@pytest.mark.parametrize(
    "command",
    [
        *COMMANDS,
        "network ls",
        "network rm",
        "image ls",
        "image rm",
        "image prune",
        *FAULTS,
        *SNAPSHOTS,
    ],
)
def test_every_command_has_help(command: str, tmp_path: Path) -> None:
    result = run(*command.split(), "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Usage: qemu-compose" in result.stdout


def test_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("qemu-compose, version 0.")


def test_config_prints_the_resolved_file(project: Path) -> None:
    result = run("config", cwd=project)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    assert data["name"] == "demo"
    assert data["vms"]["web"]["depends_on"] == {
        "db": {"condition": "service_started", "required": True}
    }
    assert data["networks"]["lan"]["subnet"] == "10.77.0.0/24"


def test_config_prints_interpolated_numbers_as_numbers(tmp_path: Path) -> None:
    (tmp_path / "qemu-compose.yaml").write_text(
        "vms:\n  web:\n    memory: ${MEM:-512}\n    cpu: ${CPUS:-2}\n"
        "    ports: ['8000-8010:80']\n    environment: {RE: '^a$'}\n"
    )
    result = run("config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "    memory: 512\n" in result.stdout
    assert "    cpu: 2\n" in result.stdout
    web = yaml.safe_load(result.stdout)["vms"]["web"]
    assert web["ports"][0]["published"] == "8000-8010"
    assert web["environment"] == {"RE": "^a$$"}  # written back escaped, as docker compose does


def test_config_json(project: Path) -> None:
    result = run("config", "--format", "json", cwd=project)
    assert result.returncode == 0
    assert json.loads(result.stdout)["vms"]["db"]["cpu"] == 2


@pytest.mark.parametrize(
    ("flag", "names"),
    [("--services", ["db", "web"]), ("--networks", ["lan"]), ("--volumes", ["data"])],
)
def test_config_lists_names(project: Path, flag: str, names: list[str]) -> None:
    result = run("config", flag, cwd=project)
    assert result.returncode == 0
    assert result.stdout.split() == names


def test_config_quiet_prints_nothing(project: Path) -> None:
    result = run("config", "-q", cwd=project)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_file_found_from_a_subdirectory(project: Path) -> None:
    sub = project / "a" / "b"
    sub.mkdir(parents=True)
    result = run("config", "--services", cwd=sub)
    assert result.returncode == 0
    assert result.stdout.split() == ["db", "web"]


def test_file_from_the_environment_and_the_flag(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other")
    (other / "x.yaml").write_text("vms: {solo: {}}\n")
    env = {"QEMU_COMPOSE_FILE": str(other / "x.yaml")}
    assert run("config", "--services", cwd=project, env=env).stdout.split() == ["solo"]
    result = run(
        "-f", str(project / "qemu-compose.yaml"), "config", "--services", cwd=other, env=env
    )
    assert result.stdout.split() == ["db", "web"]


def test_project_name_flag(project: Path) -> None:
    result = run("-p", "other", "config", "--format", "json", cwd=project)
    assert json.loads(result.stdout)["name"] == "other"


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_file_exit_2_one_message_no_traceback_nothing_written(
    path: Path, tmp_path: Path
) -> None:
    shutil.copy(path, tmp_path / "qemu-compose.yaml")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run("config", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("qemu-compose: qemu-compose.yaml is not valid (")
    first_expectation = next(
        line for line in path.read_text().splitlines() if line.startswith("# expect:")
    )
    position = first_expectation.split()[2]
    if "*" not in position:
        assert f"qemu-compose.yaml:{position}:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_no_compose_file_is_exit_2(tmp_path: Path) -> None:
    result = run("config", cwd=tmp_path)
    assert result.returncode == 2
    assert "no qemu-compose.yaml or qemu-compose.yml" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_error_is_exit_2(project: Path) -> None:
    result = run("config", "--format", "toml", cwd=project)
    assert result.returncode == 2
    assert "Invalid value for '--format'" in result.stderr
    result = run("config", "--services", "--volumes", cwd=project)
    assert result.returncode == 2
    result = run("no-such-command", cwd=project)
    assert result.returncode == 2


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run("--debug", "config", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    result = run("config", cwd=tmp_path, env={"QEMU_COMPOSE_DEBUG": "true"})
    assert "Traceback" in result.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str, tmp_path: Path) -> None:
    result = run("completion", shell, cwd=tmp_path)
    assert result.returncode == 0
    assert "_QEMU_COMPOSE_COMPLETE" in result.stdout


def test_bash_completion_completes_commands(tmp_path: Path) -> None:
    env = {
        "_QEMU_COMPOSE_COMPLETE": "bash_complete",
        "COMP_WORDS": "qemu-compose con",
        "COMP_CWORD": "1",
    }
    result = run(cwd=tmp_path, env=env)
    assert "config" in result.stdout
    assert "completion" not in result.stdout


def test_bash_completion_script_loads_in_bash(tmp_path: Path) -> None:
    script = run("completion", "bash", cwd=tmp_path).stdout
    checked = subprocess.run(
        ["bash", "-n"], input=script, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    """`config | head` of a large project: the reader leaves early, we say nothing."""
    vms = "".join(f"  vm{i}: {{}}\n" for i in range(500))  # output well over a pipe's 64 KiB
    (tmp_path / "qemu-compose.yaml").write_text(f"vms:\n{vms}")
    pipeline = f"'{EXE}' config | head -c 10 >/dev/null"
    result = subprocess.run(
        ["bash", "-c", pipeline], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.stderr == ""


@pytest.mark.parametrize("command", ["ps", "stop", "inspect db", "network ls"])
def test_no_systemd_to_talk_to_is_one_clear_error(command: str, project: Path) -> None:
    """systemd's errors reach the user as ours (PeerError): one line, exit 1, no trace."""
    gone = f"unix:path={project}/no-such-bus"
    result = run(*command.split(), cwd=project, env={"DBUS_SESSION_BUS_ADDRESS": gone})
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("qemu-compose: error: "), result.stderr
    assert "no-such-bus" in result.stderr
    assert "internal error" not in result.stderr
    assert "Traceback" not in result.stderr
