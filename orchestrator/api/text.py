"""The API's data as text for people (what the CLI prints), and as JSON lines. Pure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.config.project import Project
    from orchestrator.runtime import UpPlan
    from orchestrator.runtime.doctor import Check
    from orchestrator.supervisor.eventlog import EventRecord


def format_config(project: Project, fmt: str = "yaml") -> str:
    """The project fully resolved, as YAML that loads back to the same model, or JSON."""
    from orchestrator.config.render import render_json, render_yaml

    return render_json(project) if fmt == "json" else render_yaml(project)


def format_plan(up_plan: UpPlan) -> str:
    """`up --dry-run`: a line for each image, volume, network, the supervisor and each VM."""
    from orchestrator.runtime.plan import render_up_plan

    return render_up_plan(up_plan)


def format_inspect(info: dict[str, Any]) -> str:
    """`inspect`'s dict, in sections."""
    from orchestrator.runtime.inspection import render_inspect

    return render_inspect(info)


def format_record(record: EventRecord, *, as_json: bool = False) -> str:
    """One record of the event log: a line for a person, or its JSON (`watch --json`)."""
    from orchestrator.supervisor.eventlog import record_json
    from orchestrator.supervisor.watch import format_record as line

    return record_json(record) if as_json else line(record)


def format_checks(checks: list[Check]) -> str:
    """`doctor`'s checks, a line each, with the fix under each problem."""
    from orchestrator.runtime.doctor import render

    return render(checks)
