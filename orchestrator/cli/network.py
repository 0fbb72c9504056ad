"""network ls, network rm: the project's bridge networks."""

from __future__ import annotations

import sys

import click

from .options import GlobalOptions, progress_option, wait_lock_option


@click.group()
def network() -> None:
    """List and remove the project's networks."""


@network.command("ls")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_obj
def network_ls(opts: GlobalOptions, fmt: str) -> None:
    """List the networks: subnet, bridge, DHCP/DNS server and the VMs on each."""
    project = opts.load()
    from orchestrator import api

    from .runner import run
    from .tables import json_lines, network_table

    rows = run(lambda: api.networks(project))
    sys.stdout.write(json_lines(rows) if fmt == "json" else network_table(rows))


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@progress_option
@wait_lock_option
@click.pass_obj
def network_rm(opts: GlobalOptions, names: tuple[str, ...], progress: str, wait_lock: bool) -> None:
    """Remove networks no VM uses: their bridge, DHCP/DNS server and subnet."""
    project = opts.load()
    from orchestrator import api

    from .progress import with_progress
    from .runner import run

    run(
        lambda: with_progress(
            progress,
            lambda on_event: api.remove_networks(
                project, *names, wait_lock=wait_lock, on_event=on_event
            ),
        )
    )
