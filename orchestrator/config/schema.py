"""Check plain data against the model's types and report *every* mismatch, not the first.

msgspec stops at the first error it meets; a user fixing a compose file wants them all. This
walks the data beside the struct annotations, collects each unknown field (with a "did you
mean"), missing field, wrong type and broken constraint under its path, and leaves the final
conversion to msgspec once nothing is left to report.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import msgspec.inspect as mi

from .yamlsource import PathKey

Report = Callable[[PathKey, str, bool], None]  # (path, message, points at the key)

_KIND = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
    type(None): "nothing (null)",
}


# What docker compose users write for our field names.
_SYNONYMS = {"services": "vms", "mem_limit": "memory", "cpus": "cpu", "command": "provision"}


def kind_of(value: Any) -> str:
    for cls, kind in _KIND.items():
        if type(value) is cls:
            return kind
    return type(value).__name__


def check(value: Any, annotation: Any, path: PathKey, report: Report) -> None:
    """Report each way ``value`` fails to be an ``annotation``."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        _check_struct(value, annotation, path, report)
    elif origin is typing.Annotated:
        base = typing.get_args(annotation)[0]
        if typing.get_origin(base) in (list, dict) or _is_struct(base):
            check(value, base, path, report)
        else:
            _check_leaf(value, annotation, path, report)
    elif origin is list:
        if not isinstance(value, list):
            report(path, f"expected a list, got {kind_of(value)}", False)
            return
        (item,) = typing.get_args(annotation)
        for i, v in enumerate(value):
            check(v, item, (*path, i), report)
    elif origin is dict:
        if not isinstance(value, dict):
            report(path, f"expected a mapping, got {kind_of(value)}", False)
            return
        key_type, value_type = typing.get_args(annotation)
        for k, v in value.items():
            _check_leaf(k, key_type, (*path, k), report, is_key=True)
            check(v, value_type, (*path, k), report)
    elif origin in (typing.Union, types.UnionType):
        _check_union(value, typing.get_args(annotation), path, report)
    elif annotation is Any:
        return
    else:
        _check_leaf(value, annotation, path, report)


def _is_struct(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)


@functools.cache
def _fields(cls: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    """A struct's fields by the name written: msgspec resolves its string annotations anew at
    each call (~15 ForwardRef compiles per VM of a file, the most of a 100-VM load)."""
    return {f.encode_name: f for f in msgspec.structs.fields(cls)}


def _check_struct(value: Any, cls: type[msgspec.Struct], path: PathKey, report: Report) -> None:
    if not isinstance(value, dict):
        report(path, f"expected a mapping, got {kind_of(value)}", False)
        return
    fields = _fields(cls)
    for key in value:
        if key not in fields:
            hint = [_SYNONYMS[key]] if _SYNONYMS.get(key) in fields else []
            hint = hint or difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            if hint:
                message = f"unknown field; did you mean {hint[0]!r}?"
            else:
                message = f"unknown field (known fields: {', '.join(fields)})"
            report((*path, key), message, True)
    for name, field in fields.items():
        if name in value:
            check(value[name], field.type, (*path, name), report)
        elif field.required:
            report(path, f"missing the required field {name!r}", False)


def _shape(annotation: Any) -> type | None:
    """The kind of plain value an annotation takes: dict, list, str, int, ... or None (any)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if _is_struct(annotation) or typing.get_origin(annotation) is dict:
        return dict
    if typing.get_origin(annotation) is list:
        return list
    if typing.get_origin(annotation) is Literal:
        return type(typing.get_args(annotation)[0])
    if isinstance(annotation, type):
        return annotation
    return None


def _check_union(value: Any, options: tuple[Any, ...], path: PathKey, report: Report) -> None:
    if value is None and type(None) in options:
        return
    candidates = [o for o in options if o is not type(None)]
    matching = [o for o in candidates if _shape(o) is type(value)]
    if len(matching) == 1:
        check(value, matching[0], path, report)
        return
    for option in candidates:
        try:
            msgspec.convert(value, option, strict=False)
        except msgspec.ValidationError:
            continue
        return
    wanted = " or ".join(_describe(o) for o in candidates)
    report(path, f"expected {wanted}, got {kind_of(value)}", False)


def _check_leaf(
    value: Any, annotation: Any, path: PathKey, report: Report, *, is_key: bool = False
) -> None:
    # Non-strict, so that "2" from ${CPUS} is the integer 2, as docker compose does.
    try:
        msgspec.convert(value, annotation, strict=False)
    except msgspec.ValidationError:
        pass
    else:
        return
    what = "name" if is_key else "value"
    report(path, f"invalid {what} {value!r}: expected {_describe(annotation)}", is_key)


def _describe(annotation: Any) -> str:
    """A user's description of what ``annotation`` accepts."""
    info = mi.type_info(annotation)
    hint = None
    if isinstance(info, mi.Metadata):
        hint = (info.extra or {}).get("hint")
        info = info.type
    if isinstance(info, mi.StrType):
        text = hint or "a string"
        if info.max_length is not None:
            text += f", at most {info.max_length} characters"
        return text
    if isinstance(info, mi.IntType):
        bounds = []
        if info.ge is not None:
            bounds.append(f">= {info.ge}")
        if info.le is not None:
            bounds.append(f"<= {info.le}")
        return "an integer" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in info.values)
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.FloatType):
        return "a number"
    if isinstance(info, mi.ListType):
        return "a list"
    if isinstance(info, mi.DictType | mi.StructType):
        return "a mapping"
    return hint or str(annotation)
