"""Golden output of `config`: the resolved form of the spec's examples and of examples/.

Absolute paths in the output are replaced by $REPO and $HOME so the files do not depend on
where the checkout lives. Run with QC_UPDATE_GOLDEN=1 to rewrite them after a deliberate
change, then read the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import load_project
from orchestrator.config.render import render_json, render_yaml

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden"
INPUTS = sorted((REPO / "tests" / "data" / "spec").glob("*.yaml")) + sorted(
    (REPO / "examples").glob("*/qemu-compose.yaml")
)


def _golden_name(path: Path) -> str:
    return path.parent.name if path.name == "qemu-compose.yaml" else path.stem


def _placeholders(text: str) -> str:
    """$REPO and $HOME for those directories, where a path starts with them."""
    for path, name in ((str(REPO), "$REPO"), (os.path.expanduser("~"), "$HOME")):
        text = re.sub(r"(?<![\w/.-])" + re.escape(path) + r"(?=/|$)", name, text, flags=re.M)
    return text


@pytest.mark.parametrize("path", INPUTS, ids=_golden_name)
def test_config_output_matches_golden(path: Path) -> None:
    project = load_project(path, environ={}, cwd=REPO)
    actual = _placeholders(render_yaml(project))
    golden = GOLDEN / f"{_golden_name(path)}.yaml"
    if os.environ.get("QC_UPDATE_GOLDEN"):
        golden.write_text(actual)
    assert actual == golden.read_text()


def _unescape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    return value


@pytest.mark.parametrize("path", INPUTS, ids=_golden_name)
def test_yaml_and_json_output_say_the_same(path: Path) -> None:
    """The same data, except that YAML, being a compose file again, writes '$' as '$$'."""
    project = load_project(path, environ={}, cwd=REPO)
    assert _unescape(yaml.safe_load(render_yaml(project))) == json.loads(render_json(project))


@pytest.mark.parametrize("path", INPUTS, ids=_golden_name)
def test_resolved_output_is_a_fixed_point(path: Path, tmp_path: Path) -> None:
    """Loading what `config` printed gives the same model again."""
    project = load_project(path, environ={}, cwd=REPO)
    again = tmp_path / "qemu-compose.yaml"
    again.write_text(render_yaml(project))
    reloaded = load_project(again, environ={}, cwd=tmp_path)
    assert reloaded.model == project.model
