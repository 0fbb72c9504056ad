"""qemu-compose's orchestrator: the compose model, its project state and the CLI.

The only package that knows the compose file; it uses qmp, systemd_dbus and netcfg.
Public names are re-exported here and imported on first use, so that the CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .config.model import ComposeFile, Network, Vm, Volume
    from .config.project import Project, find_compose_file, load_project
    from .errors import (
        ConfigError,
        LockHeldError,
        PeerError,
        Problem,
        ProjectNotFoundError,
        QemuComposeError,
        SeveralErrors,
        StateError,
        UsageError,
        VmError,
    )
    from .state.files import ProjectLock, ProjectState, StateDir, atomic_write

_EXPORTS = {
    "ConfigError": ".errors",
    "LockHeldError": ".errors",
    "PeerError": ".errors",
    "UsageError": ".errors",
    "VmError": ".errors",
    "Problem": ".errors",
    "ProjectNotFoundError": ".errors",
    "QemuComposeError": ".errors",
    "SeveralErrors": ".errors",
    "StateError": ".errors",
    "ComposeFile": ".config.model",
    "Network": ".config.model",
    "Vm": ".config.model",
    "Volume": ".config.model",
    "Project": ".config.project",
    "find_compose_file": ".config.project",
    "load_project": ".config.project",
    "ProjectLock": ".state.files",
    "ProjectState": ".state.files",
    "StateDir": ".state.files",
    "atomic_write": ".state.files",
}

__all__ = [
    "ComposeFile",
    "ConfigError",
    "LockHeldError",
    "Network",
    "PeerError",
    "Problem",
    "Project",
    "ProjectLock",
    "ProjectNotFoundError",
    "ProjectState",
    "QemuComposeError",
    "SeveralErrors",
    "StateDir",
    "StateError",
    "UsageError",
    "Vm",
    "VmError",
    "Volume",
    "atomic_write",
    "find_compose_file",
    "load_project",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
