"""The files a compose file names, read when it is loaded: provision scripts and cloud-init
user-data files.

A file that is missing, unreadable, too large or not UTF-8, or (user-data) not a YAML mapping,
is a problem of the field that names it, reported with the others; `up` never opens them, so
it cannot fail half-way on a file that went missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from orchestrator.errors import Problem

from .model import ComposeFile
from .yamlsource import MAX_FILE_BYTES, PathKey, SourceMap


class NamedFiles(msgspec.Struct, frozen=True):
    scripts: Mapping[str, str] = {}  # path -> its text
    user_data: Mapping[str, Mapping[str, Any]] = {}  # path -> config


def read_named_files(model: ComposeFile, source: SourceMap) -> tuple[NamedFiles, list[Problem]]:
    """Every provision script and user-data file of the model, read; the problems found."""
    scripts: dict[str, str] = {}
    user_data: dict[str, Mapping[str, Any]] = {}
    problems: list[Problem] = []
    for name, vm in model.vms.items():
        for i, step in enumerate(vm.provision):
            where: PathKey = ("vms", name, "provision", i, "script")
            if step.script is not None and step.script not in scripts:
                text = _read_text(Path(step.script))
                if isinstance(text, str):
                    scripts[step.script] = text
                else:
                    problems.append(source.problem(where, f"the provision script {text.message}"))
        named = vm.cloud_init.user_data
        if isinstance(named, str) and named not in user_data:
            where = ("vms", name, "cloud_init", "user_data")
            text = _read_text(Path(named))
            if isinstance(text, _Unreadable):
                problems.append(source.problem(where, f"the user-data file {text.message}"))
                continue
            config = _cloud_config(text, Path(named), problems)
            if isinstance(config, dict):
                user_data[named] = config
            elif config is not _UNPARSED:
                problems.append(
                    source.problem(where, f"the cloud-config in {named} must be a mapping")
                )
    return NamedFiles(scripts, user_data), problems


_UNPARSED = object()


def _cloud_config(text: str, path: Path, problems: list[Problem]) -> Any:
    """The file as cloud-init reads it: PyYAML's safe loader, YAML 1.1 (``0644`` is octal,
    ``yes`` is true, ``!!binary`` is bytes), not the compose file's stricter YAML 1.2.
    A syntax error is a problem at its own line and column."""
    try:
        return yaml.safe_load(text.removeprefix("\ufeff"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problems.append(Problem(path, line, column, "", f"invalid YAML: {err.problem or err}"))
    except yaml.YAMLError as err:
        problems.append(Problem(path, 0, 0, "", f"invalid YAML: {err}"))
    return _UNPARSED


class _Unreadable(msgspec.Struct, frozen=True):
    message: str


def _read_text(path: Path) -> str | _Unreadable:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return _Unreadable(f"{path} does not exist")
    except OSError as err:
        return _Unreadable(f"{path} cannot be read: {err.strerror}")
    if len(raw) > MAX_FILE_BYTES:
        return _Unreadable(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _Unreadable(f"{path} is not valid UTF-8")
