"""The `qemu-compose` group: global options, config, completion and doctor; the command
families are registered from their modules (lifecycle, inspection, network, images)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .faults import fault, kill, pause, unpause
from .images import image, pull
from .inspection import console, inspect, logs, ps, ssh, watch
from .lifecycle import destroy, restart, stop, up
from .network import network
from .options import GlobalOptions
from .snapshots import resume, snapshot, suspend, template

DISTRIBUTION = "qemu-compose-vm"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Run 'qemu-compose COMMAND --help' for more on a command.",
)
@click.option(
    "-f",
    "--file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="QEMU_COMPOSE_FILE",
    show_envvar=True,
    help="The compose file [default: qemu-compose.yaml or .yml here or in a parent directory].",
)
@click.option(
    "-p",
    "--project-name",
    envvar="QEMU_COMPOSE_PROJECT_NAME",
    show_envvar=True,
    help="The project name [default: name: in the file, else the directory's name].",
)
@click.option(
    "--project-directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where relative paths point and state lives [default: the compose file's directory].",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar="QEMU_COMPOSE_DEBUG",
    show_envvar=True,
    help="Log every step and show tracebacks.",
)
@click.version_option(None, "--version", "-V", package_name=DISTRIBUTION, prog_name="qemu-compose")
@click.pass_context
def cli(
    ctx: click.Context,
    file: Path | None,
    project_name: str | None,
    project_directory: Path | None,
    debug: bool,
) -> None:
    """Define QEMU virtual machines, their networks and volumes in one YAML file, and run them."""
    ctx.obj = GlobalOptions(file, project_name, project_directory, debug)


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Output format.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only validate: print nothing, exit 0 if valid.")
@click.option(
    "--services", "--vms", "list_vms", is_flag=True, help="Print the VM names, one a line."
)
@click.option("--networks", "list_networks", is_flag=True, help="Print the network names.")
@click.option("--volumes", "list_volumes", is_flag=True, help="Print the named volume names.")
@click.pass_obj
def config(
    opts: GlobalOptions,
    fmt: str,
    quiet: bool,
    list_vms: bool,
    list_networks: bool,
    list_volumes: bool,
) -> None:
    """Validate the compose file and print it fully resolved.

    Variables are interpolated, defaults filled in, short forms expanded and relative paths
    made absolute. Problems are reported all at once, each with file:line:column and the
    field; the exit status is then 2.
    """
    if sum((list_vms, list_networks, list_volumes)) > 1:
        raise click.UsageError("give only one of --services, --networks and --volumes")
    project = opts.load()
    if quiet:
        return
    if list_vms or list_networks or list_volumes:
        model = project.model
        table = model.vms if list_vms else model.networks if list_networks else model.volumes
        for name in table:
            click.echo(name)
        return
    from orchestrator import api

    sys.stdout.write(api.format_config(project, fmt))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  qemu-compose completion bash > ~/.local/share/bash-completion/completions/qemu-compose
    zsh:   qemu-compose completion zsh > "${fpath[1]}/_qemu-compose"
    fish:  qemu-compose completion fish > ~/.config/fish/completions/qemu-compose.fish
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the choice above lists only shells click knows
    click.echo(completer(cli, {}, "qemu-compose", "_QEMU_COMPOSE_COMPLETE").source())


@click.command()
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--bus", default="user", show_default=True, help="user, system, or a D-Bus address.")
def doctor(fmt: str, bus: str) -> None:
    """Check that this machine can run VMs: systemd, QEMU, KVM, networking tools, disk space.

    Every problem comes with the command that fixes it. Exits 1 when something required is
    missing; KVM, bridge networking and the other optional parts only warn.
    """
    from orchestrator import api

    from .runner import run

    checks = run(lambda: api.doctor(bus=bus))
    if fmt == "json":
        import dataclasses
        import json

        click.echo(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
    else:
        click.echo(api.format_checks(checks), nl=False)
    if any(c.verdict == "fail" and c.required for c in checks):
        sys.exit(1)


for command in (up, stop, destroy, restart, ps, ssh, watch, inspect, logs, console, network):
    cli.add_command(command)
for command in (pause, unpause, kill, fault, snapshot, suspend, resume, template):
    cli.add_command(command)
for command in (doctor, pull, image):
    cli.add_command(command)
