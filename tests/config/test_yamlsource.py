"""Reading YAML: positions, the YAML 1.2 core schema, merges, and what is refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import ConfigError
from orchestrator.config.yamlsource import MAX_FILE_BYTES, Position, load_yaml, read_yaml_file

F = Path("f.yaml")


def test_positions_of_keys_and_values_are_recorded() -> None:
    data, source = load_yaml("vms:\n  web:\n    cpu: 2\n    ports: ['80']\n", F)
    assert data == {"vms": {"web": {"cpu": 2, "ports": ["80"]}}}
    assert source.keys[("vms", "web", "cpu")] == Position(3, 5)
    assert source.values[("vms", "web", "cpu")] == Position(3, 10)
    assert source.values[("vms", "web", "ports", 0)] == Position(4, 13)


def test_a_missing_path_is_located_at_its_nearest_ancestor() -> None:
    _, source = load_yaml("vms:\n  web: {}\n", F)
    assert source.locate(("vms", "web", "image", "source")) == Position(2, 8)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("no", "no"),
        ("yes", "yes"),
        ("off", "off"),
        ("NO", "NO"),
        ("true", True),
        ("False", False),
        ("8080:80", "8080:80"),  # YAML 1.1 would make this the base-60 integer 484880
        ("2001-12-14", "2001-12-14"),  # and this a date
        ("010", 10),
        ("0o17", 15),
        ("0x1f", 31),
        ("1.5", 1.5),
        ("~", None),
        ("", None),
    ],
)
def test_scalars_follow_the_yaml_1_2_core_schema(text: str, value: object) -> None:
    data, _ = load_yaml(f"v: {text}\n", F)
    assert data["v"] == value
    assert type(data["v"]) is type(value)


def test_merge_keys_expand_and_explicit_keys_win() -> None:
    data, _ = load_yaml("base: &b {cpu: 1, memory: 64}\nvm:\n  <<: *b\n  cpu: 4\n", F)
    assert data["vm"] == {"cpu": 4, "memory": 64}


def test_duplicate_keys_are_reported_with_both_lines() -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml("a: 1\nb: 2\na: 3\n", F)
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (3, 1)
    assert "duplicate key 'a' (first defined at line 1)" in problem.message


def test_python_tags_are_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = f"a: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError, match="is not allowed"):
        load_yaml(text, F)
    assert not marker.exists()


def test_custom_tags_are_refused() -> None:
    with pytest.raises(ConfigError, match="'!include' is not allowed"):
        load_yaml("a: !include other.yaml\n", F)


def test_recursive_alias_is_bounded() -> None:
    with pytest.raises(ConfigError, match="nests deeper than"):
        load_yaml("a: &a [*a]\n", F)


def test_empty_file_is_an_error() -> None:
    with pytest.raises(ConfigError, match="the file is empty"):
        load_yaml("# nothing here\n", F)


def test_large_file_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml_file(big)


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(ConfigError) as caught:
        read_yaml_file(bad)
    assert caught.value.problems[0].line == 2


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml_file(tmp_path / "missing.yaml")


def test_deep_nesting_is_refused_without_a_crash() -> None:
    with pytest.raises(ConfigError, match="nests"):
        load_yaml("a: " + "[" * 5000 + "]" * 5000 + "\n", F)
    with pytest.raises(ConfigError, match="deeper than"):
        load_yaml("a: " + "[" * 100 + "]" * 100 + "\n", F)


def bomb_of_aliases(depth: int) -> str:
    lines = ["a0: &a0 [x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


def bomb_of_merges(depth: int) -> str:
    lines = ["m0: &m0 {k: v}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: v}}" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("bomb", [bomb_of_aliases, bomb_of_merges], ids=["aliases", "merges"])
def test_a_small_file_cannot_expand_without_bound(bomb: Callable[[int], str]) -> None:
    """A billion laughs, with lists or with merge keys (a 973-byte merge bomb ran for minutes
    and took over a gigabyte): refused within 2 s of CPU (0.4 s here; this process's own CPU
    time, which other work on the machine does not stretch as it does the wall clock),
    naming a line."""
    text = bomb(24)
    assert len(text) < 1500
    started = time.process_time()
    with pytest.raises(ConfigError, match="expands to more than") as caught:
        load_yaml(text, F)
    assert time.process_time() - started < 2.0
    assert caught.value.problems[0].line >= 1  # where the budget ran out


def test_a_mapping_merged_into_itself_is_an_error() -> None:
    with pytest.raises(ConfigError, match="cannot merge a mapping into itself"):
        load_yaml("a: &a {b: 1, <<: *a}\n", F)


def test_ordinary_merges_still_work() -> None:
    data, _ = load_yaml("base: &b {cpu: 2, memory: 256}\nvm: {<<: *b, memory: 512}\n", F)
    assert data["vm"] == {"cpu": 2, "memory": 512}


def test_text_that_is_not_valid_unicode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid Unicode"):
        load_yaml("a: \udcff\n", F)  # a lone surrogate: os.environ's escape of a bad byte
