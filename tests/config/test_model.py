"""Loading valid compose files: short forms, defaults, paths, names, replicas."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import ConfigError, ProjectNotFoundError, UsageError, load_project
from orchestrator.config.model import Dependency, PortMapping, VolumeMount
from orchestrator.config.project import find_compose_file, normalize_project_name, scaled
from orchestrator.config.topology import replica_names


def write(directory: Path, text: str, name: str = "qemu-compose.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    project = load_project(write(tmp_path / "Demo App", "vms:\n  web: {}\n"), environ={})
    assert project.name == "demoapp"
    vm = project.model.vms["web"]
    assert (vm.cpu, vm.memory, vm.machine, vm.accel, vm.restart) == (2, 1024, "q35", "auto", "no")
    assert vm.stop_grace_period == "1m"
    assert project.state_dir == tmp_path / "Demo App" / ".qemu-compose"


def test_volume_short_forms(tmp_path: Path) -> None:
    text = """
volumes: {data: }
vms:
  web:
    volumes:
      - data:/var/lib/data
      - ./site:/srv:ro
      - ~/cache:/cache:rw
      - /abs/dir:/abs
"""
    vm = load_project(write(tmp_path, text), environ={}).model.vms["web"]
    home = str(Path("~").expanduser())
    assert vm.volumes == [
        VolumeMount(type="volume", source="data", target="/var/lib/data"),
        VolumeMount(type="bind", source=str(tmp_path / "site"), target="/srv", read_only=True),
        VolumeMount(type="bind", source=f"{home}/cache", target="/cache"),
        VolumeMount(type="bind", source="/abs/dir", target="/abs"),
    ]


def test_relative_paths_resolve_against_the_compose_file_not_the_cwd(tmp_path: Path) -> None:
    path = write(tmp_path / "proj", "vms:\n  web:\n    image: ../images/base.qcow2\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project = load_project(path, environ={}, cwd=elsewhere)
    image = project.model.vms["web"].image
    assert image is not None
    assert image.source == str(tmp_path / "images" / "base.qcow2")


def test_project_directory_moves_relative_paths_and_state(tmp_path: Path) -> None:
    path = write(tmp_path / "conf", "vms:\n  web:\n    image: disk.qcow2\n")
    project = load_project(path, environ={}, project_directory=tmp_path / "work", cwd=tmp_path)
    image = project.model.vms["web"].image
    assert image is not None
    assert image.source == str(tmp_path / "work" / "disk.qcow2")
    assert project.state_dir == tmp_path / "work" / ".qemu-compose"
    assert project.name == "work"


def test_urls_are_kept(tmp_path: Path) -> None:
    text = "vms:\n  a: {image: https://example.org/a.img}\n  b: {image: 'file:///srv/b.img'}\n"
    vms = load_project(write(tmp_path, text), environ={}).model.vms
    assert vms["a"].image is not None
    assert vms["a"].image.source == "https://example.org/a.img"
    assert vms["b"].image is not None
    assert vms["b"].image.source == "file:///srv/b.img"


def test_ports_short_forms(tmp_path: Path) -> None:
    text = "vms:\n  web:\n    ports: [80, '8080:80', '10.0.0.1:53:53/udp', '9000-9001:90-91']\n"
    vm = load_project(write(tmp_path, text), environ={}).model.vms["web"]
    assert vm.ports == [
        PortMapping(target=80),
        PortMapping(target=80, published=8080),
        PortMapping(target=53, published=53, host_ip="10.0.0.1", protocol="udp"),
        PortMapping(target=90, published=9000),
        PortMapping(target=91, published=9001),
    ]


# compose-go's TestParsePortConfig (types/types_test.go of compose-spec/compose-go, Apache-2.0,
# commit e70e961c3a3acebf0800b882f1afb3dbf1fb74a2): the spec and what it publishes.
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", [PortMapping(target=80)]),
        ("80:8080", [PortMapping(target=8080, published=80)]),
        ("80-90:8080", [PortMapping(target=8080, published="80-90")]),
        ("8080:80/tcp", [PortMapping(target=80, published=8080)]),
        ("80:8080/udp", [PortMapping(target=8080, published=80, protocol="udp")]),
        (
            "80-81:8080-8081/tcp",
            [PortMapping(target=8080, published=80), PortMapping(target=8081, published=81)],
        ),
        (
            "80-82:8080-8082/udp",
            [
                PortMapping(target=8080, published=80, protocol="udp"),
                PortMapping(target=8081, published=81, protocol="udp"),
                PortMapping(target=8082, published=82, protocol="udp"),
            ],
        ),
        ("80-82:8080/udp", [PortMapping(target=8080, published="80-82", protocol="udp")]),
        ("80-80:8080/tcp", [PortMapping(target=8080, published=80)]),
        ("1.1.1.1:80:80", [PortMapping(target=80, published=80, host_ip="1.1.1.1")]),
    ],
)
def test_ports_as_compose_go_reads_them(
    tmp_path: Path, spec: str, expected: list[PortMapping]
) -> None:
    text = f"vms:\n  web:\n    ports: ['{spec}']\n"
    assert load_project(write(tmp_path, text), environ={}).model.vms["web"].ports == expected


@pytest.mark.parametrize("spec", ["9999999", "80/xyz", "tcp", "udp", ""])
def test_ports_compose_go_refuses(tmp_path: Path, spec: str) -> None:
    with pytest.raises(ConfigError, match=r"vms\.web\.ports\[0\]"):
        load_project(write(tmp_path, f"vms:\n  web:\n    ports: ['{spec}']\n"), environ={})


def test_long_form_published_is_read_as_compose_writes_it(tmp_path: Path) -> None:
    text = (
        "vms:\n  web:\n    ports:\n"
        "      - {target: 80, published: '8080'}\n"
        "      - {target: 81, published: '9000-9009'}\n"
        "      - {target: 82, published: 9100-9100}\n"
    )
    assert load_project(write(tmp_path, text), environ={}).model.vms["web"].ports == [
        PortMapping(target=80, published=8080),
        PortMapping(target=81, published="9000-9009"),
        PortMapping(target=82, published=9100),
    ]


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ("['90-80:8080']", "ranges ascend"),
        ("[{target: 80, published: '90-80'}]", "ranges ascend"),
        ("[{target: 80, published: '0-10'}]", "ports are 1-65535"),
        ("[{target: 80, published: 'a-b'}]", "expected a port number or range"),
    ],
)
def test_bad_host_ranges_are_refused(tmp_path: Path, ports: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_project(write(tmp_path, f"vms:\n  web:\n    ports: {ports}\n"), environ={})


def test_a_host_range_serves_replicas_while_it_lasts(tmp_path: Path) -> None:
    enough = "vms:\n  web:\n    replicas: 3\n    ports: ['8000-8002:80']\n"
    assert load_project(write(tmp_path, enough), environ={}).model.vms["web"].replicas == 3
    few = "vms:\n  web:\n    replicas: 4\n    ports: ['8000-8002:80']\n"
    with pytest.raises(ConfigError, match="8000-8002 are too few for 4 replicas"):
        load_project(write(tmp_path, few), environ={})


def test_interpolated_values_take_the_fields_types(tmp_path: Path) -> None:
    """compose-go casts ${...} in typed fields: memory: ${MEM:-512} is 512 MiB, not bytes."""
    text = (
        "vms:\n  web:\n    boot: {kernel: /k}\n    memory: ${MEM:-512}\n    cpu: ${CPUS:-3}\n"
        "    replicas: ${N}\n    warm: ${WARM:-true}\n    disk: ${DISK:-4G}\n"
    )
    vm = load_project(write(tmp_path, text), environ={"N": "2"}).model.vms["web"]
    assert (vm.memory, vm.cpu, vm.replicas, vm.warm) == (512, 3, 2, True)
    assert vm.disk.size == "4G"
    sized = load_project(write(tmp_path, text), environ={"N": "1", "MEM": "2G"}).model.vms["web"]
    assert sized.memory == 2048
    with pytest.raises(ConfigError, match=r"vms\.web\.memory"):
        load_project(write(tmp_path, text), environ={"N": "1", "MEM": "lots"})


def test_environment_list_takes_bare_names_from_our_environment(tmp_path: Path) -> None:
    text = "vms:\n  web:\n    environment: [A=1, B=, FROM_HOST, NOT_SET]\n"
    vm = load_project(write(tmp_path, text), environ={"FROM_HOST": "h"}).model.vms["web"]
    assert vm.environment == {"A": "1", "B": "", "FROM_HOST": "h"}


def test_depends_on_list_and_map(tmp_path: Path) -> None:
    text = """
vms:
  db: {}
  cache: {}
  web:
    depends_on: [db]
  app:
    depends_on:
      db: {condition: service_healthy}
      cache:
"""
    vms = load_project(write(tmp_path, text), environ={}).model.vms
    assert vms["web"].depends_on == {"db": Dependency()}
    assert vms["app"].depends_on == {
        "db": Dependency(condition="service_healthy"),
        "cache": Dependency(),
    }


def test_interpolation_from_dotenv_overridden_by_environment(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CPUS=3\nMEM=2G\n")
    text = "vms:\n  web:\n    cpu: ${CPUS}\n    memory: ${MEM}\n"
    vm = load_project(write(tmp_path, text), environ={"CPUS": "5"}).model.vms["web"]
    assert (vm.cpu, vm.memory) == (5, 2048)


def test_bad_dotenv_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("no equals sign\n")
    with pytest.raises(ConfigError, match=r"\.env:1"):
        load_project(write(tmp_path, "vms: {a: {}}\n"), environ={})


def test_extension_fields_are_ignored(tmp_path: Path) -> None:
    text = "x-top: 1\nvms:\n  web:\n    x-note: anything\n    cpu: 1\nnetworks:\n  n: {x-n: 1}\n"
    project = load_project(write(tmp_path, text), environ={})
    assert project.model.vms["web"].cpu == 1


def test_project_name_precedence(tmp_path: Path) -> None:
    path = write(tmp_path / "dir", "name: fromfile\nvms: {a: {}}\n")
    assert load_project(path, environ={}).name == "fromfile"
    env = {"QEMU_COMPOSE_PROJECT_NAME": "fromenv"}
    assert load_project(path, environ=env).name == "fromenv"
    assert load_project(path, environ=env, project_name="fromflag").name == "fromflag"


def test_invalid_explicit_project_name(tmp_path: Path) -> None:
    path = write(tmp_path, "vms: {a: {}}\n")
    with pytest.raises(ConfigError, match="invalid project name 'Bad Name' from -p"):
        load_project(path, environ={}, project_name="Bad Name")


def test_unnameable_directory_asks_for_a_name(tmp_path: Path) -> None:
    path = write(tmp_path / "___", "vms: {a: {}}\n")
    with pytest.raises(ConfigError, match="set name: in the file or pass -p NAME"):
        load_project(path, environ={})


@pytest.mark.parametrize(
    ("directory", "name"),
    [("My Project", "myproject"), ("web.app", "webapp"), ("_x-1", "x-1"), ("ÄÖ", "")],
)
def test_normalize_project_name(directory: str, name: str) -> None:
    assert normalize_project_name(directory) == name


def test_compose_file_is_found_in_a_parent(tmp_path: Path) -> None:
    path = write(tmp_path, "vms: {a: {}}\n", "qemu-compose.yml")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_compose_file(deep) == path
    assert load_project(environ={}, cwd=deep).compose_file == path


def test_yaml_is_preferred_over_yml(tmp_path: Path) -> None:
    write(tmp_path, "vms: {a: {}}\n", "qemu-compose.yml")
    yaml_file = write(tmp_path, "vms: {b: {}}\n", "qemu-compose.yaml")
    assert find_compose_file(tmp_path) == yaml_file


def test_no_compose_file(tmp_path: Path) -> None:
    with pytest.raises(ProjectNotFoundError, match="-f FILE"):
        load_project(environ={}, cwd=tmp_path)
    with pytest.raises(ProjectNotFoundError, match="no compose file at"):
        load_project(Path("missing.yaml"), environ={}, cwd=tmp_path)


def test_replicas(tmp_path: Path) -> None:
    text = "vms:\n  worker: {replicas: 3}\n  solo: {}\n"
    vms = load_project(write(tmp_path, text), environ={}).model.vms
    assert replica_names("worker", vms["worker"]) == ["worker-1", "worker-2", "worker-3"]
    assert replica_names("solo", vms["solo"]) == ["solo"]


def test_inline_cloud_config_string_becomes_data(tmp_path: Path) -> None:
    text = (
        "vms:\n  web:\n    cloud_init:\n      user_data: |\n"
        "        #cloud-config\n        packages: [nginx]\n"
    )
    vm = load_project(write(tmp_path, text), environ={}).model.vms["web"]
    assert vm.cloud_init.user_data == {"packages": ["nginx"]}


def test_named_files_are_read_at_load_time(tmp_path: Path) -> None:
    (tmp_path / "setup.sh").write_text("#!/bin/sh\necho set up\n")
    (tmp_path / "user-data.yaml").write_text("#cloud-config\npackages: [nginx]\n")
    text = (
        "vms:\n  web:\n    provision: [{script: ./setup.sh}, {inline: echo two}]\n"
        "    cloud_init: {user_data: ./user-data.yaml}\n  db:\n    provision: [{script: setup.sh}]\n"
    )
    project = load_project(write(tmp_path, text), environ={})
    script, user_data = str(tmp_path / "setup.sh"), str(tmp_path / "user-data.yaml")
    assert project.files.scripts == {script: "#!/bin/sh\necho set up\n"}  # read once for both
    assert project.files.user_data == {user_data: {"packages": ["nginx"]}}
    (tmp_path / "setup.sh").unlink()  # what up uses is what was read
    assert project.files.scripts[script].endswith("set up\n")


def test_a_user_data_file_is_read_as_cloud_init_reads_it(tmp_path: Path) -> None:
    """YAML 1.1, as cloud-init's PyYAML: octal modes, yes/no, !!binary (the compose file's
    own YAML 1.2 would read 0644 as 644 and refuse the tag)."""
    write(
        tmp_path,
        "#cloud-config\npackage_upgrade: yes\nwrite_files:\n"
        "  - {path: /etc/x, permissions: 0644, content: !!binary aGk=}\n",
        "user-data.yaml",
    )
    text = "vms:\n  web: {cloud_init: {user_data: ./user-data.yaml}}\n"
    project = load_project(write(tmp_path, text), environ={})
    config = project.files.user_data[str(tmp_path / "user-data.yaml")]
    assert config["package_upgrade"] is True
    assert config["write_files"] == [{"path": "/etc/x", "permissions": 0o644, "content": b"hi"}]


def test_a_user_data_file_that_is_not_yaml_is_pinned_in_that_file(tmp_path: Path) -> None:
    files = {"broken.yaml": "#cloud-config\npackages: [nginx\n", "list.yaml": "- a\n- b\n"}
    lines = ["vms:"]
    for vm, (name, content) in zip("ab", files.items(), strict=True):
        write(tmp_path, content, name)
        lines.append(f"  {vm}: {{cloud_init: {{user_data: ./{name}}}}}")
    with pytest.raises(ConfigError) as caught:
        load_project(write(tmp_path, "\n".join(lines) + "\n"), environ={})
    broken, listed = sorted(caught.value.problems, key=lambda p: p.file.name)
    assert (broken.file, broken.line) == (tmp_path / "broken.yaml", 3)
    assert "invalid YAML" in broken.message
    assert (listed.file.name, listed.line, listed.path) == (
        "qemu-compose.yaml",
        3,
        "vms.b.cloud_init.user_data",
    )
    assert listed.message.endswith("list.yaml must be a mapping")


def test_the_model_is_frozen(tmp_path: Path) -> None:
    vm = load_project(write(tmp_path, "vms: {a: {}}\n"), environ={}).model.vms["a"]
    with pytest.raises(AttributeError):
        vm.cpu = 4  # type: ignore[misc]


def test_warm_replicas_are_always_numbered_and_scale(tmp_path: Path) -> None:
    text = (
        "vms:\n  w: {boot: {kernel: /k}, warm: true}\n  r: {replicas: 3}\n  solo: {}\n"
        "  fixed: {boot: {kernel: /k}, warm: true, ports: ['8080:80']}\n"
    )
    project = load_project(write(tmp_path, text), environ={})
    assert replica_names("w", project.model.vms["w"]) == ["w-1"]  # a set of one
    grown = scaled(project, {"w": 3, "r": 0})
    assert replica_names("w", grown.model.vms["w"]) == ["w-1", "w-2", "w-3"]
    assert replica_names("r", grown.model.vms["r"]) == []
    assert project.model.vms["w"].replicas == 1  # (the loaded project is left as it is)
    for scale, said in [
        ({"solo": 2}, "only a replica set scales"),
        ({"r": 1}, "would change names"),
        ({"nope": 2}, "no VM named 'nope'"),
        ({"w": 1001}, "0 to 1000"),
        ({"fixed": 3}, "host port 8080 cannot be published by 3 replicas"),
    ]:
        with pytest.raises(UsageError, match=said):
            scaled(project, scale)
