"""What a transient unit is made of, and what systemd says about a unit. Pure data.

``TransientUnit.properties()`` turns a spec into the ``a(sv)`` list StartTransientUnit takes,
each property with the D-Bus signature systemd expects; ``UnitStatus`` is read back from
the Unit and Service interfaces (or from their PropertiesChanged signals).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
from dbus_fast import Variant

from .escape import is_valid_unit_name

USEC = 1_000_000

KillMode = Literal["control-group", "mixed", "process", "none"]
RestartPolicy = Literal[
    "no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"
]
ServiceType = Literal["simple", "exec", "forking", "oneshot", "notify", "dbus", "idle"]


class ExtraProperty(msgspec.Struct, frozen=True):
    """Any other unit property, with its D-Bus signature: ``("CPUQuotaPerSecUSec", "t", 5e5)``."""

    name: str
    signature: str
    value: Any


class TransientUnit(msgspec.Struct, frozen=True):
    """A transient service: its name, command line and settings."""

    name: str
    argv: Sequence[str]
    description: str = ""
    environment: Mapping[str, str] = msgspec.field(default_factory=dict)
    working_directory: str | None = None
    exec_stop: Sequence[str] | None = None
    kill_mode: KillMode | None = None
    timeout_stop: float | None = None  # seconds
    collect_mode: Literal["inactive", "inactive-or-failed"] = "inactive-or-failed"
    restart: RestartPolicy | None = None
    restart_sec: float | None = None  # seconds
    type: ServiceType = "exec"  # the start job fails if the binary cannot be executed
    slice: str | None = None
    extra: Sequence[ExtraProperty] = ()

    def __post_init__(self) -> None:
        if not is_valid_unit_name(self.name) or not self.name.endswith(".service"):
            raise ValueError(f"not a valid service unit name: {self.name!r}")
        if not self.argv or not self.argv[0].startswith("/"):
            raise ValueError(f"argv[0] must be an absolute path, got {list(self.argv)[:1]}")
        for key in self.environment:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"invalid environment variable name {key!r}")

    def properties(self) -> list[tuple[str, Variant]]:
        """The ``a(sv)`` properties of StartTransientUnit."""
        props: list[tuple[str, Variant]] = [
            ("Description", Variant("s", self.description or self.name)),
            ("ExecStart", _exec(self.argv)),
            ("Type", Variant("s", self.type)),
            ("CollectMode", Variant("s", self.collect_mode)),
        ]
        if self.environment:
            env = [f"{k}={v}" for k, v in self.environment.items()]
            props.append(("Environment", Variant("as", env)))
        if self.working_directory is not None:
            props.append(("WorkingDirectory", Variant("s", self.working_directory)))
        if self.exec_stop is not None:
            props.append(("ExecStop", _exec(self.exec_stop)))
        if self.kill_mode is not None:
            props.append(("KillMode", Variant("s", self.kill_mode)))
        if self.timeout_stop is not None:
            props.append(("TimeoutStopUSec", Variant("t", round(self.timeout_stop * USEC))))
        if self.restart is not None:
            props.append(("Restart", Variant("s", self.restart)))
        if self.restart_sec is not None:
            props.append(("RestartUSec", Variant("t", round(self.restart_sec * USEC))))
        if self.slice is not None:
            props.append(("Slice", Variant("s", self.slice)))
        props.extend((p.name, Variant(p.signature, p.value)) for p in self.extra)
        return props


def _exec(argv: Sequence[str]) -> Variant:
    """An Exec* property: ``a(sasb)`` of (path, argv, ignore-failure)."""
    return Variant("a(sasb)", [[argv[0], list(argv), False]])


class ActiveState(enum.StrEnum):
    """A unit's ActiveState, as systemd says it (compares equal to systemd's string)."""

    ACTIVE = "active"
    RELOADING = "reloading"
    INACTIVE = "inactive"
    FAILED = "failed"
    ACTIVATING = "activating"
    DEACTIVATING = "deactivating"
    MAINTENANCE = "maintenance"
    REFRESHING = "refreshing"
    UNKNOWN = "unknown"  # a state this version does not know

    @classmethod
    def parse(cls, text: str) -> ActiveState:
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN

    @property
    def running(self) -> bool:
        """Its processes run, or are being started: what must be stopped to stop it."""
        return self in _RUNNING

    @property
    def stopped(self) -> bool:
        """It has ended: nothing of it runs (failed keeps its result until reset)."""
        return self in (ActiveState.INACTIVE, ActiveState.FAILED)


_RUNNING = frozenset(
    {ActiveState.ACTIVE, ActiveState.ACTIVATING, ActiveState.RELOADING, ActiveState.REFRESHING}
)


class UnitStatus(msgspec.Struct, frozen=True):
    """What systemd says about a unit now (or said last, for a unit already collected)."""

    name: str
    load_state: str = "not-found"  # loaded, not-found, ...
    active_state: ActiveState = ActiveState.INACTIVE
    sub_state: str = "dead"
    result: str = ""  # success, exit-code, signal, timeout, ... ("" when unknown)
    main_pid: int = 0
    exec_main_code: int = 0  # CLD_EXITED (1), CLD_KILLED (2), CLD_DUMPED (3); 0 if none
    exec_main_status: int = 0  # exit status, or signal number
    exec_main_pid: int = 0  # the main process's PID, kept after it exited
    active_enter_usec: int = 0  # CLOCK_REALTIME microseconds; 0 if never
    active_exit_usec: int = 0
    inactive_enter_usec: int = 0
    n_restarts: int = 0  # a service's NRestarts: how often systemd restarted it (Restart=)
    description: str = ""
    environment: tuple[str, ...] = ()  # a service's Environment= ("NAME=value" each)

    @property
    def exists(self) -> bool:
        """systemd knows the unit (a collected or never-made one is "not-found")."""
        return self.load_state != "not-found"

    @property
    def is_active(self) -> bool:
        return self.active_state is ActiveState.ACTIVE

    @property
    def is_failed(self) -> bool:
        return self.active_state is ActiveState.FAILED

    @property
    def has_stopped(self) -> bool:
        return self.active_state.stopped

    def describe_exit(self) -> str:
        if self.exec_main_code == 1:
            how = f"exit status {self.exec_main_status}"
        elif self.exec_main_code in (2, 3):
            how = f"killed by signal {self.exec_main_status}"
        else:
            how = "no exit status"
        return f"result {self.result or 'unknown'}, {how}"

    def updated(self, changed: Mapping[str, Any]) -> UnitStatus:
        """A copy with the properties of a PropertiesChanged or GetAll applied."""
        fields = {_FIELDS[k]: v for k, v in changed.items() if k in _FIELDS}
        if "active_state" in fields:
            fields["active_state"] = ActiveState.parse(fields["active_state"])
        if "environment" in fields:
            fields["environment"] = tuple(fields["environment"])
        return msgspec.structs.replace(self, **fields) if fields else self


_FIELDS = {
    "LoadState": "load_state",
    "ActiveState": "active_state",
    "SubState": "sub_state",
    "Result": "result",
    "MainPID": "main_pid",
    "ExecMainCode": "exec_main_code",
    "ExecMainStatus": "exec_main_status",
    "ExecMainPID": "exec_main_pid",
    "ActiveEnterTimestamp": "active_enter_usec",
    "ActiveExitTimestamp": "active_exit_usec",
    "InactiveEnterTimestamp": "inactive_enter_usec",
    "NRestarts": "n_restarts",
    "Description": "description",
    "Environment": "environment",
}
STATUS_PROPERTIES = frozenset(_FIELDS)


class UnitSummary(msgspec.Struct, frozen=True):
    """One row of ListUnitsByPatterns."""

    name: str
    description: str
    load_state: str
    active_state: ActiveState
    sub_state: str
