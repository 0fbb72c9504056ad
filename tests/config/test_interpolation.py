"""Variable interpolation, as docker compose does it, and .env files."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.interpolation import (
    InterpolationError,
    interpolate,
    interpolate_tree,
    read_env_file,
)

ENV = {"SET": "value", "EMPTY": "", "NESTED": "inner"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("$SET", "value"),
        ("${SET}", "value"),
        ("a${SET}b", "avalueb"),
        ("$SET-suffix", "value-suffix"),
        ("$UNSET", ""),
        ("${UNSET:-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${UNSET-default}", "default"),
        ("${SET:-default}", "value"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${UNSET:-${NESTED}}", "inner"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("cost: $$5", "cost: $5"),
        ("${UNSET:-a:b}", "a:b"),
        ("${SET:?never shown}", "value"),
    ],
)
def test_interpolation(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${UNSET:?please set it}", "required variable UNSET is missing a value: please set it"),
        ("${EMPTY:?}", "EMPTY is missing a value: is not set or empty"),
        ("${UNSET?}", "UNSET is missing a value: is not set"),
        ("${", "needs a variable name"),
        ("${SET", "unexpected"),
        ("${SET:-x", "is never closed"),
        ("${1X}", "needs a variable name"),
        ("${SET!}", "unexpected '!'"),
        ("a $ b", "a '$' must start"),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError) as caught:
        interpolate(text, ENV)
    assert message in str(caught.value)


def test_empty_required_with_question_mark_only_checks_set() -> None:
    assert interpolate("${EMPTY?}", ENV) == ""


def test_tree_interpolates_values_not_keys_and_reports_each_path() -> None:
    errors: list[tuple[tuple[str | int, ...], str]] = []
    tree = {"$SET": ["$SET", {"k": "${BAD:?missing}"}], "n": 3}
    out = interpolate_tree(tree, ENV, lambda path, msg: errors.append((path, msg)))
    assert out == {"$SET": ["value", {"k": "${BAD:?missing}"}], "n": 3}
    assert errors == [(("$SET", 1, "k"), "required variable BAD is missing a value: missing")]


def test_env_file(tmp_path: Path) -> None:
    f = tmp_path / ".env"
    f.write_text(
        "# a comment\n\nA=1\nexport B = two words # trailing comment\n"
        "C='single $quoted'\nD=\"line\\nbreak\"\nE=\n"
    )
    assert read_env_file(f) == {
        "A": "1",
        "B": "two words",
        "C": "single $quoted",
        "D": "line\nbreak",
        "E": "",
    }


def test_env_file_bad_line_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / ".env"
    f.write_text("A=1\nnot a pair\n")
    with pytest.raises(InterpolationError, match=r"\.env:2: expected KEY=VALUE"):
        read_env_file(f)
