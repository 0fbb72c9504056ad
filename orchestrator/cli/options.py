"""What every command shares: the global options (which project), and the options of the
commands that change things (how to show progress, whether to wait for the lock)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import msgspec

if TYPE_CHECKING:
    from orchestrator import Project


class GlobalOptions(msgspec.Struct, frozen=True):
    file: Path | None
    project_name: str | None
    project_directory: Path | None
    debug: bool

    def load(self) -> Project:
        from orchestrator import load_project

        return load_project(
            self.file, project_name=self.project_name, project_directory=self.project_directory
        )


progress_option = click.option(
    "--progress",
    type=click.Choice(["auto", "tty", "plain", "json", "quiet"]),
    default="auto",
    show_default=True,
    help="How to show progress: a live table, plain lines, JSON lines, or nothing.",
)
wait_lock_option = click.option(
    "--wait-lock", is_flag=True, help="Wait for another qemu-compose on this project to finish."
)
