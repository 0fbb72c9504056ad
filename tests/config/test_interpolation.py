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
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError) as caught:
        interpolate(text, ENV)
    assert message in str(caught.value)


# Cases from compose-go's own tests: template/template_test.go of compose-spec/compose-go
# (Apache-2.0), commit e70e961c3a3acebf0800b882f1afb3dbf1fb74a2, with its mapping.
COMPOSE_GO_ENV = {"FOO": "first", "BAR": "", "JSON": '{"json":2}'}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # TestEscaped, TestSubstituteNoMatch
        ("$${foo}", "${foo}"),
        ("foo", "foo"),
        # TestUnescaped: a '$' that starts no name stays as written
        ("a $ string", "a $ string"),
        ("^REGEX$", "^REGEX$"),
        ("$}", "$}"),
        ("$", "$"),
        # TestNonBraced, TestNoValueNoDefault, TestValueNoDefault
        ("$FOO-bar", "first-bar"),
        ("This ${missing} var", "This  var"),
        ("This ${BAR} var", "This  var"),
        ("This $FOO var", "This first var"),
        # TestNonAlphanumericDefault
        ("ok ${BAR:-/non:-alphanumeric}", "ok /non:-alphanumeric"),
        # TestInterpolationExternalInterference
        ("-ok ${BAR:-defaultValue}", "-ok defaultValue"),
        ("+ok ${UNSET:-${BAR-defaultValue}}", "+ok "),
        (":-ok ${UNSET-defaultValue}", ":-ok defaultValue"),
        (":?ok ${BAR:-defaultValue}", ":?ok defaultValue"),
        # TestDefaultsWithNestedExpansion
        ("ok ${UNSET_VAR-${FOO} ${FOO}}", "ok first first"),
        ("ok ${BAR:-$FOO}", "ok first"),
        ("ok ${BAR+$FOO ${FOO:+second}}", "ok first second"),
        # TestPrecedence: the first operator after the name decides
        ("${UNSET_VAR-myerror?msg}", "myerror?msg"),
        ("${FOO?bar-baz}", "first"),
        # TestNoValueWithCurlyBracesDefault, TestValueWithCurlyBracesDefault
        ('ok ${missing:-{"json":1}}', 'ok {"json":1}'),
        ('ok ${missing-{"json":1}}', 'ok {"json":1}'),
        ('ok ${JSON:-{"json":1}}', 'ok {"json":2}'),
        ('ok ${JSON-{"json":1}}', 'ok {"json":2}'),
        # TestSubstituteWithReplacementFunc (its last case, the default function)
        ("ok ${SUBDOMAIN:-redis}.${FOO:?}", "ok redis.first"),
    ],
)
def test_compose_go_cases(text: str, expected: str) -> None:
    assert interpolate(text, COMPOSE_GO_ENV) == expected


@pytest.mark.parametrize("text", ["${", "${}", "${ }", "${ foo}", "${foo }", "${foo!}"])
def test_compose_go_invalid_templates(text: str) -> None:
    """compose-go's TestInvalid: each is an error."""
    with pytest.raises(InterpolationError, match="invalid interpolation"):
        interpolate(text, COMPOSE_GO_ENV)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${UNSET:-{}}", "{}"),
        ("${UNSET:-{a}{b}}", "{a}{b}"),
        ("${UNSET:-{${SET}}}", "{value}"),
        ("${SET:-{x}} and }", "value and }"),
        ("cost $5", "cost $5"),
        ("${UNSET:-{a}", "{a"),  # none balances: the last brace closes it, as in compose-go
        ("${UNSET:-{}", "{"),
        ("${UNSET:-{a} b", "{a b"),
    ],
)
def test_braces_balance_inside_a_default(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


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
