"""The compose file, from YAML to a frozen model. Pure: no trio, no I/O beyond reading files.

yamlsource (YAML with positions) -> interpolation (${VAR}, .env) -> normalize (short forms) ->
schema (types) -> validate (cross-field checks) -> model (frozen Structs); project ties them
together (`load_project`); quantities, graph and render are their helpers.
"""

from .model import ComposeFile, Network, Vm, Volume
from .project import Project, find_compose_file, load_project

__all__ = ["ComposeFile", "Network", "Project", "Vm", "Volume", "find_compose_file", "load_project"]
