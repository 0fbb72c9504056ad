"""Read a YAML document into plain data, remembering where every value came from.

PyYAML's safe composer builds the node tree; we turn nodes into dicts, lists and scalars
ourselves so that we can (1) record the line and column of every key and value by its path,
(2) reject duplicate keys, tags other than the plain YAML ones, and several documents,
(3) bound how much alias expansion a small file can cause ("billion laughs").

Scalars follow the YAML 1.2 core schema, as docker compose's Go parser does: only
true/false are booleans (``restart: no`` stays the string "no", "NO" the country code stays a
string), there are no sexagesimal integers (``8080:80`` is a string, not 484880), and no
timestamps.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.errors import ConfigError, Problem

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 100_000  # values built, counting every alias expansion (1000 VMs need ~30000)
MAX_DEPTH = 64  # nesting of mappings and lists

PathKey = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = {
    _STR,
    _MAP,
    _SEQ,
    _MERGE,
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


class _CoreResolver(yaml.resolver.Resolver):
    """YAML 1.2 core schema resolution of plain scalars."""


_CoreResolver.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (
        "tag:yaml.org,2002:int",
        r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$",
        "-+0123456789",
    ),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", "<"),
):
    _CoreResolver.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """PyYAML's own parser, in Python: where PyYAML was built without libyaml."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


try:  # libyaml's parser (PyYAML's wheels have it): the same events, marks and errors, ~10x
    from yaml._yaml import CParser as _EventParser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    _EventParser = _PyParser  # type: ignore[assignment,misc]


class _Loader(
    # The composer comes first: PyYAML's, in Python, on the parser's events. libyaml's own
    # composer (CParser.get_single_node) recurses in C with no bound on nesting; this one
    # raises RecursionError, which load_yaml reports.
    yaml.composer.Composer,
    _EventParser,
    yaml.constructor.SafeConstructor,
    _CoreResolver,
):
    def __init__(self, stream: str) -> None:
        _EventParser.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        _CoreResolver.__init__(self)

    def construct_core_int(self, node: ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        if text[:2] in ("0o", "0x"):
            return int(text, 0)
        return int(text, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_core_int)  # type: ignore[type-var]


class Position(msgspec.Struct, frozen=True):
    line: int  # 1-based
    column: int  # 1-based


class SourceMap(msgspec.Struct):
    """Where each path of the loaded document was written."""

    file: Path
    values: dict[PathKey, Position] = {}  # (msgspec copies an empty default)
    keys: dict[PathKey, Position] = {}
    # Paths that a rewrite (short form -> long form) moved: new path -> (written path, shown)
    moved: dict[PathKey, tuple[PathKey, bool]] = {}

    def move(self, new: PathKey, written: PathKey, *, show_written: bool = False) -> None:
        """Say that what is now at ``new`` was written at ``written``.

        ``show_written``: name the written path in messages (a list item whose index changed)
        rather than the new one (a list of names that became a mapping reads better as such).
        """
        if new != written:
            self.moved[new] = (written, show_written)

    def _written(self, path: PathKey) -> tuple[PathKey, PathKey]:
        """(where to look ``path`` up, how to show it), following moves of it or its parents."""
        for cut in range(len(path), 0, -1):
            entry = self.moved.get(path[:cut])
            if entry is not None:
                written, show_written = entry
                where = (*written, *path[cut:])
                return where, where if show_written else path
        return path, path

    def locate(self, path: PathKey, *, key: bool = False) -> Position | None:
        """The position of ``path`` (its key when ``key``), else of its nearest ancestor."""
        path, _ = self._written(path)
        if key and path in self.keys:
            return self.keys[path]
        for cut in range(len(path), -1, -1):
            pos = self.values.get(path[:cut])
            if pos is not None:
                return pos
        return None

    def problem(self, path: PathKey, message: str, *, key: bool = False) -> Problem:
        pos = self.locate(path, key=key)
        _, shown = self._written(path)
        return Problem(
            file=self.file,
            line=pos.line if pos else 0,
            column=pos.column if pos else 0,
            path=format_path(shown),
            message=message,
        )


def format_path(path: PathKey) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = part
    return out


def _position(node: Node) -> Position:
    mark = node.start_mark
    return Position(mark.line + 1, mark.column + 1)


class _Builder:
    def __init__(self, loader: _Loader, source: SourceMap) -> None:
        self.loader = loader
        self.source = source
        self.problems: list[Problem] = []
        self.budget = MAX_NODES

    def fail(self, node: Node, path: PathKey, message: str) -> None:
        pos = _position(node)
        self.problems.append(
            Problem(self.source.file, pos.line, pos.column, format_path(path), message)
        )

    def spend(self, node: Node) -> None:
        """One more value built or merged: a small file must not expand without bound."""
        self.budget -= 1
        if self.budget < 0:
            raise _TooBig(
                node, f"the document expands to more than {MAX_NODES} values (too many aliases?)"
            )

    def build(self, node: Node, path: PathKey) -> Any:
        self.spend(node)
        if len(path) > MAX_DEPTH:
            raise _TooBig(node, f"the document nests deeper than {MAX_DEPTH} levels")
        self.source.values.setdefault(path, _position(node))
        if node.tag not in _PLAIN_TAGS:
            self.fail(node, path, f"the YAML tag {node.tag!r} is not allowed here")
            return None
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as err:
            self.fail(node, path, f"invalid value: {err.problem}")
            return None

    def _pairs(
        self, node: MappingNode, path: PathKey, merging: frozenset[int] = frozenset()
    ) -> Iterator[tuple[Node, Node, bool]]:
        """The (key, value, merged) pairs of a mapping, merge keys (``<<``) expanded; every
        merged pair counts against the same budget as a value (``<<: [*m, *m]`` nested is
        as much a bomb as aliases are)."""
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for src in sources:
                    if not isinstance(src, MappingNode):
                        self.fail(src, path, "a merge key (<<) takes a mapping or a list of them")
                        continue
                    if id(src) in merging or src is node:
                        self.fail(src, path, "a merge key (<<) cannot merge a mapping into itself")
                        continue
                    for k, v, _ in self._pairs(src, path, merging | {id(node)}):
                        self.spend(k)
                        yield k, v, True
            else:
                yield key_node, value_node, False

    def _mapping(self, node: MappingNode, path: PathKey) -> dict[str, Any]:
        explicit: dict[str, Node] = {}
        result: dict[str, Any] = {}
        merged: list[tuple[str, Node, Node]] = []
        for key_node, value_node, from_merge in self._pairs(node, path):
            if not isinstance(key_node, ScalarNode):
                self.fail(key_node, path, "mapping keys must be plain strings")
                continue
            key = str(key_node.value)
            if from_merge:
                merged.append((key, key_node, value_node))
                continue
            if key in explicit:
                first = _position(explicit[key])
                self.fail(
                    key_node,
                    (*path, key),
                    f"duplicate key {key!r} (first defined at line {first.line})",
                )
                continue
            explicit[key] = key_node
            self.source.keys[(*path, key)] = _position(key_node)
            result[key] = self.build(value_node, (*path, key))
        # Explicit keys win over merged ones; among merged sources the first wins (YAML merge).
        for key, key_node, value_node in merged:
            if key not in result:
                self.source.keys[(*path, key)] = _position(key_node)
                result[key] = self.build(value_node, (*path, key))
        return result


class _TooBig(Exception):
    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def load_yaml(text: str, file: Path) -> tuple[Any, SourceMap]:
    """Parse one YAML document; raise ConfigError with every problem found."""
    source = SourceMap(file)
    try:
        loader = _Loader(text)
    except UnicodeEncodeError as err:  # a lone surrogate (from an environment variable, say)
        raise ConfigError([Problem(file, 0, 0, "", "the text is not valid Unicode")]) from err
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            if isinstance(err, yaml.composer.ComposerError) and "another document" in str(
                err.problem
            ):
                raise _one_problem(
                    file, mark, "", "expected one YAML document, found several"
                ) from err
            if "maximum nesting depth" in str(err.problem):  # libyaml's bound (1000 levels)
                raise _one_problem(file, mark, "", "the document nests too deeply") from err
            raise _one_problem(
                file, mark, "", f"invalid YAML: {err.problem or err.context}"
            ) from err
        except yaml.YAMLError as err:  # e.g. a byte no YAML reader takes
            raise ConfigError([Problem(file, 0, 0, "", f"invalid YAML: {err}")]) from err
        except RecursionError:  # PyYAML's composer recurses once per nesting level
            raise ConfigError([Problem(file, 0, 0, "", "the document nests too deeply")]) from None
        if root is None:
            raise ConfigError([Problem(file, 0, 0, "", "the file is empty")])
        builder = _Builder(loader, source)
        try:
            data = builder.build(root, ())
        except _TooBig as big:
            pos = _position(big.node)
            raise ConfigError([Problem(file, pos.line, pos.column, "", big.message)]) from None
        if builder.problems:
            raise ConfigError(builder.problems)
        return data, source
    finally:
        loader.dispose()


def _one_problem(file: Path, mark: yaml.Mark | None, path: str, message: str) -> ConfigError:
    if mark is None:
        return ConfigError([Problem(file, 0, 0, path, message)])
    return ConfigError([Problem(file, mark.line + 1, mark.column + 1, path, message)])


def read_yaml_file(file: Path) -> tuple[Any, SourceMap]:
    """Read and parse ``file``, bounded in size; every failure is a ConfigError naming it."""
    try:
        with file.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError([Problem(file, 0, 0, "", f"cannot read: {err.strerror}")]) from err
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            [Problem(file, 0, 0, "", f"the file is larger than {MAX_FILE_BYTES // 1024} KiB")]
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError([Problem(file, line, 0, "", "the file is not valid UTF-8")]) from err
    return load_yaml(text, file)
