"""The compose file, from YAML to a frozen model. Pure: no trio, no I/O beyond reading files.

yamlsource (YAML with positions) -> interpolation (${VAR}, .env) -> normalize (short forms) ->
schema (types) -> validate (cross-field checks) -> model (frozen Structs); project ties them
together (`load_project`) and reads the files the compose file names (files); quantities,
graph, topology and render are their helpers. Names are imported on first use: a user of
the model alone (the supervisor) does not load the YAML pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator._lazy import lazy_exports

if TYPE_CHECKING:
    from .model import ComposeFile, Network, Vm, Volume
    from .project import Project, find_compose_file, load_project

_EXPORTS = {
    "ComposeFile": ".model",
    "Network": ".model",
    "Vm": ".model",
    "Volume": ".model",
    "Project": ".project",
    "find_compose_file": ".project",
    "load_project": ".project",
}
__all__ = ["ComposeFile", "Network", "Project", "Vm", "Volume", "find_compose_file", "load_project"]

__getattr__ = lazy_exports(__name__, _EXPORTS)
