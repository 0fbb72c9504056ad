"""Variable interpolation in compose files, with docker compose's syntax and rules.

``$VAR`` and ``${VAR}`` take the variable's value (empty when unset); ``${VAR:-default}`` the
default when VAR is unset or empty, ``${VAR-default}`` only when unset; ``${VAR:?message}`` and
``${VAR?message}`` make a missing value an error; ``${VAR:+other}`` and ``${VAR+other}`` give
``other`` when VAR is set (and non-empty); defaults may themselves hold ``${...}`` and balanced
braces (``${JSON:-{"a":1}}``); ``$$`` is a literal ``$``, and so is a ``$`` that starts no name
(``^REGEX$``, ``a $ b``, ``$}``), as compose-go leaves it. Values are interpolated, keys are not.
The .env reader is here too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InterpolationError(ValueError):
    """A ``${...}`` that is malformed or names a required variable that has no value."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Return ``text`` with every variable reference replaced."""
    if "$" not in text:
        return text
    out, end = _expand(text, 0, env, stop_at_brace=False)
    assert end == len(text)
    return out


def _expand(text: str, i: int, env: Mapping[str, str], *, stop_at_brace: bool) -> tuple[str, int]:
    """Expand from ``i`` to the end, or to the ``}`` that closes the enclosing ``${``.

    Inside a ``${...}``, a literal ``{`` opens a brace that the next ``}`` closes: compose-go
    ends a default at the brace that balances the ``${``, or, when none does, at the last
    ``}`` (``${X:-{a}`` is ``{a``).
    """
    parts: list[str] = []
    n = len(text)
    depth = 0
    last_close: tuple[int, int] | None = None  # (parts so far, index) of the last '}' seen
    while i < n:
        c = text[i]
        if stop_at_brace and c in "{}":
            if c == "}" and depth == 0:
                return "".join(parts), i
            if c == "}":
                last_close = (len(parts), i)
            depth += 1 if c == "{" else -1
        if c != "$":
            parts.append(c)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < n else ""
        if nxt == "$":
            parts.append("$")
            i += 2
        elif nxt == "{":
            value, i = _braced(text, i + 2, env)
            parts.append(value)
        elif m := _NAME.match(text, i + 1):
            parts.append(env.get(m.group(), ""))
            i = m.end()
        else:  # starts no name: kept as written
            parts.append("$")
            i += 1
    if stop_at_brace and last_close is not None:  # unbalanced: the last brace closes it
        kept, at = last_close
        return "".join(parts[:kept]), at
    if stop_at_brace:
        raise InterpolationError(f"invalid interpolation in {text!r}: '${{' is never closed")
    return "".join(parts), i


def _braced(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    """Expand the body of a ``${...}`` that starts at ``i``; return it and the index past ``}``."""
    m = _NAME.match(text, i)
    if not m:
        raise InterpolationError(f"invalid interpolation in {text!r}: '${{' needs a variable name")
    name = m.group()
    i = m.end()
    if i < len(text) and text[i] == "}":
        return env.get(name, ""), i + 1
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if text.startswith(op, i):
            break
    else:
        raise InterpolationError(
            f"invalid interpolation in {text!r}: unexpected {text[i : i + 1]!r} after ${{{name}"
        )
    arg, end = _expand(text, i + len(op), env, stop_at_brace=True)
    value = env.get(name)
    is_set = value is not None
    usable = is_set and (value != "" or ":" not in op)
    kind = op[-1]
    if kind == "-":
        result = value if usable else arg
    elif kind == "+":
        result = arg if usable else ""
    else:  # "?"
        if not usable:
            reason = arg or ("is not set" if ":" not in op else "is not set or empty")
            raise InterpolationError(f"required variable {name} is missing a value: {reason}")
        result = value
    assert result is not None
    return result, end + 1


def interpolate_tree(
    data: Any,
    env: Mapping[str, str],
    on_error: Callable[[tuple[str | int, ...], str], None],
    path: tuple[str | int, ...] = (),
) -> Any:
    """Interpolate every string value of a YAML tree (keys stay as written)."""
    if isinstance(data, str):
        try:
            return interpolate(data, env)
        except InterpolationError as err:
            on_error(path, str(err))
            return data
    if isinstance(data, dict):
        return {k: interpolate_tree(v, env, on_error, (*path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate_tree(v, env, on_error, (*path, i)) for i, v in enumerate(data)]
    return data


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a .env file: ``KEY=VALUE`` lines, optional ``export``, # comments, quotes.

    Single quotes keep their content as written; double quotes understand ``\\n``, ``\\t``,
    ``\\"`` and ``\\\\``; an unquoted value ends at `` #``. A malformed line is an error naming it.
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _NAME.fullmatch(key):
            raise InterpolationError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(
                r"\\(.)",
                lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)),
                value[1:-1],
            )
        else:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values
