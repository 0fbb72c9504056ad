"""A corpus of broken compose files: each names the problems it must produce.

Every file in tests/data/bad starts with ``# expect: LINE:COLUMN [FIELD:] MESSAGE`` lines
(``*:*`` where the position depends on the parser); loading it must raise ConfigError with,
for each expectation, a problem at that position, on that field, whose message contains the
text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator import ConfigError, load_project

BAD = Path(__file__).parent.parent / "data" / "bad"
_EXPECT = re.compile(r"^# expect: (\*|\d+):(\*|\d+) (?:(\S+): )?(.+)$")


def _expectations(path: Path) -> list[tuple[str, str, str | None, str]]:
    found = []
    for line in path.read_text().splitlines():
        m = _EXPECT.match(line)
        if m:
            found.append((m.group(1), m.group(2), m.group(3), m.group(4)))
    return found


CORPUS = sorted(BAD.glob("*.yaml"))


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30
    for path in CORPUS:
        assert _expectations(path), f"{path.name} states no expectation"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_file_is_rejected_with_its_message(path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_project(path, environ={}, cwd=tmp_path)
    problems = caught.value.problems
    for line, column, field, text in _expectations(path):
        matching = [
            p
            for p in problems
            if (line == "*" or p.line == int(line))
            and (column == "*" or p.column == int(column))
            and (field is None or p.path == field)
            and text in p.message
        ]
        rendered = "\n".join(p.render() for p in problems)
        assert matching, f"expected {line}:{column} {field}: {text!r} among:\n{rendered}"
        assert all(p.file == path for p in matching)
