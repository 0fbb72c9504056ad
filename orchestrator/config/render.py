"""The resolved model as text: what `qemu-compose config` prints."""

from __future__ import annotations

from typing import Any

import msgspec
import yaml

from .project import Project


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def resolved_data(project: Project) -> dict[str, Any]:
    """Plain data of the resolved model; unset optional fields are left out."""
    data: dict[str, Any] = _drop_none(msgspec.to_builtins(project.model))
    return data


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings as literal blocks so scripts stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _escape_dollars(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: _escape_dollars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_dollars(v) for v in value]
    return value


def render_yaml(project: Project) -> str:
    """A compose file again: loading it gives the same model, so '$' is written '$$'."""
    return yaml.dump(
        _escape_dollars(resolved_data(project)),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1000,
    )


def render_json(project: Project) -> str:
    """Data for scripts: values exactly as the VMs will get them."""
    encoded = msgspec.json.encode(resolved_data(project))
    return msgspec.json.format(encoded, indent=2).decode() + "\n"
