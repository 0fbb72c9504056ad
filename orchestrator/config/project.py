"""Find and load a project: compose file discovery, project name, .env, the load pipeline.

load: read YAML (positions kept) -> interpolate -> expand short forms -> check every field
against the model -> convert to structs -> cross-field validation. Every problem found is
reported at once, each with file, line, column and field; nothing is written anywhere.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from orchestrator.errors import ConfigError, Problem, ProjectNotFoundError, UsageError

from . import schema
from .files import NamedFiles, read_named_files
from .interpolation import InterpolationError, interpolate_tree, read_env_file
from .model import ComposeFile
from .normalize import Normalizer
from .validate import validate
from .yamlsource import PathKey, read_yaml_file

log = logging.getLogger(__name__)

DEFAULT_FILENAMES = ("qemu-compose.yaml", "qemu-compose.yml")
STATE_DIRNAME = ".qemu-compose"
_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


class Project(msgspec.Struct, frozen=True):
    """A loaded compose file and where its project lives."""

    name: str
    compose_file: Path
    directory: Path  # relative paths in the file are resolved against this
    model: ComposeFile
    files: NamedFiles = NamedFiles()  # its scripts and user-data files

    @property
    def state_dir(self) -> Path:
        return self.directory / STATE_DIRNAME


MAX_SCALE = 1000


def scaled(project: Project, scale: Mapping[str, int]) -> Project:
    """The project with the replicas `up --scale VM=N` asks for (for that `up`: the file is
    not changed). Only a replica set scales: a definition whose replicas are named
    ``<vm>-N`` (``replicas:`` above 1 in the file, or ``warm: true``)."""
    if not scale:
        return project
    vms = dict(project.model.vms)
    for name, count in scale.items():
        vm = vms.get(name)
        said = f"--scale {name}={count}"
        if vm is None:
            known = ", ".join(vms) or "none"
            raise UsageError(f"{said}: no VM named {name!r} in {project.name} (VMs: {known})")
        if not 0 <= count <= MAX_SCALE:
            raise UsageError(f"{said}: the number of replicas is 0 to {MAX_SCALE}")
        if not vm.warm and (vm.replicas == 1 or count == 1):
            raise UsageError(
                f"{said}: {name} would change names ({name} alone, or {name}-1 .. {name}-N):"
                " only a replica set scales, one with replicas: above 1 in the file or warm: true"
            )
        vms[name] = msgspec.structs.replace(vm, replicas=count)
    model = msgspec.structs.replace(project.model, vms=vms)
    problems: list[str] = []

    def report(path: PathKey, message: str, key: bool = False) -> None:
        problems.append(f"{'.'.join(str(p) for p in path)}: {message}")

    validate(model, project.state_dir, report)
    if problems:
        raise UsageError("--scale: " + "; ".join(problems))
    return msgspec.structs.replace(project, model=model)


def find_compose_file(start: Path) -> Path:
    """The default compose file in ``start`` or the nearest parent that has one."""
    for directory in (start, *start.parents):
        found = [directory / n for n in DEFAULT_FILENAMES if (directory / n).is_file()]
        if found:
            if len(found) > 1:
                log.warning("found %s and %s: using %s", found[0], found[1].name, found[0].name)
            return found[0]
    names = " or ".join(DEFAULT_FILENAMES)
    raise ProjectNotFoundError(
        f"no {names} in {start} or its parents; name one with -f FILE or QEMU_COMPOSE_FILE"
    )


def normalize_project_name(text: str) -> str:
    """docker compose's rule: lower-case, keep [a-z0-9_-], start with a letter or digit."""
    name = re.sub(r"[^a-z0-9_-]", "", text.lower()).lstrip("_-")
    return name[:48]


def load_project(
    file: Path | None = None,
    *,
    project_name: str | None = None,
    project_directory: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Project:
    """Load and validate a project; raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    compose_file, directory = _locate(file, project_directory, (cwd or Path.cwd()).absolute())
    env = _environment(directory, environ)

    data, source = read_yaml_file(compose_file)
    problems: list[Problem] = []
    flagged: set[PathKey] = set()

    def report(path: PathKey, message: str, key: bool = False) -> None:
        flagged.add(path)
        problems.append(source.problem(path, message, key=key))

    def report_schema(path: PathKey, message: str, key: bool) -> None:
        if path not in flagged:  # the short form at this path was already reported
            report(path, message, key)

    if not isinstance(data, dict):
        raise ConfigError([source.problem((), "the top level must be a mapping")])
    data = interpolate_tree(data, env, report)
    if data.get("vms") == {}:
        report(("vms",), "no VMs are defined")
    data = Normalizer(directory, env, source, report).compose(data)
    schema.check(data, ComposeFile, (), report_schema)
    if problems:
        # Drop what is broken and check the rest across fields too, so that one run reports
        # as much as it can; the file is rejected either way.
        model = _convert(_pruned(data, flagged))
        if model is not None:
            validate(model, directory / STATE_DIRNAME, report)
            problems += read_named_files(model, source)[1]
        raise ConfigError(_ordered(problems))
    model = _convert(data)
    if model is None:  # the schema check should have said why first
        raise ConfigError([Problem(compose_file, 0, 0, "", "the file does not fit the model")])
    name = _project_name(project_name, environ, model, directory, compose_file)
    model = msgspec.structs.replace(model, name=name)
    validate(model, directory / STATE_DIRNAME, report)
    files, unreadable = read_named_files(model, source)
    problems += unreadable
    if problems:
        raise ConfigError(_ordered(problems))
    return Project(name, compose_file, directory, model, files)


def _locate(file: Path | None, project_directory: Path | None, cwd: Path) -> tuple[Path, Path]:
    """The compose file (named, or found) and the project's directory."""
    if file is None:
        compose_file = find_compose_file(project_directory or cwd)
    else:
        compose_file = cwd / file
        if not compose_file.is_file():
            raise ProjectNotFoundError(f"no compose file at {compose_file}")
    compose_file = Path(os.path.normpath(compose_file))
    if project_directory:
        return compose_file, Path(os.path.normpath(cwd / project_directory))
    return compose_file, compose_file.parent


def _convert(data: dict[str, Any]) -> ComposeFile | None:
    try:
        return msgspec.convert(data, ComposeFile, strict=False)
    except msgspec.ValidationError:
        return None


def _pruned(data: dict[str, Any], paths: set[PathKey]) -> dict[str, Any]:
    """A copy of ``data`` without the mapping entries that hold the given paths.

    Each path loses its nearest enclosing mapping key, so list items are never renumbered
    and the positions of what remains stay right.
    """
    result: dict[str, Any] = copy.deepcopy(data)
    for path in paths:
        cut = max((i for i, part in enumerate(path) if isinstance(part, str)), default=None)
        if cut is None:
            continue
        parent: Any = result
        for part in path[:cut]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                break
        else:
            if isinstance(parent, dict):
                parent.pop(path[cut], None)
    return result


def _environment(directory: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables for interpolation: the .env beside the project, overridden by ours."""
    dotenv = directory / ".env"
    values: dict[str, str] = {}
    if dotenv.is_file():
        try:
            values = read_env_file(dotenv)
        except (InterpolationError, OSError, UnicodeDecodeError) as err:
            raise ConfigError([Problem(dotenv, 0, 0, "", str(err))]) from err
    values.update(environ)
    return values


def _project_name(
    explicit: str | None,
    environ: Mapping[str, str],
    model: ComposeFile,
    directory: Path,
    compose_file: Path,
) -> str:
    for given, origin in (
        (explicit, "-p/--project-name"),
        (environ.get("QEMU_COMPOSE_PROJECT_NAME"), "QEMU_COMPOSE_PROJECT_NAME"),
    ):
        if given:
            if not _PROJECT_NAME.match(given):
                raise ConfigError(
                    [
                        Problem(
                            compose_file,
                            0,
                            0,
                            "",
                            f"invalid project name {given!r} from {origin}: use lower-case "
                            "letters, digits, '_' and '-' (at most 48), starting with a "
                            "letter or digit",
                        )
                    ]
                )
            return given
    if model.name:
        return model.name
    name = normalize_project_name(directory.name)
    if not name:
        raise ConfigError(
            [
                Problem(
                    compose_file,
                    0,
                    0,
                    "",
                    f"cannot make a project name from the directory {directory.name!r}: "
                    "set name: in the file or pass -p NAME",
                )
            ]
        )
    return name


def _ordered(problems: list[Problem]) -> list[Problem]:
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (p.line, p.column, p.path))
