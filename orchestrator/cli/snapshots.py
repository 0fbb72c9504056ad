"""`snapshot save|restore|ls|rm`: the whole topology at one instant, and back."""

from __future__ import annotations

import sys

import click

from .lifecycle import _run
from .options import GlobalOptions, progress_option, wait_lock_option


@click.group()
def snapshot() -> None:
    """Save and restore every VM's memory and disks at one instant.

    `save` freezes the VMs together (no VM runs while another is captured), keeps each one's
    RAM and devices and a point in time of its writable disks (root disk, named volumes),
    and resumes them together. `restore` puts them back at that instant, running, without a
    boot. Snapshots survive `stop` and `up`; `destroy` removes them with the VMs.
    """


@snapshot.command("save")
@click.argument("name")
@click.argument("vms", nargs=-1)
@click.option(
    "--no-memory",
    is_flag=True,
    help="Keep the disks only (crash-consistent: as at a power cut); takes stopped VMs too. "
    "Restoring it boots the VMs.",
)
@click.option("--force", is_flag=True, help="Replace a snapshot of that name.")
@progress_option
@wait_lock_option
@click.pass_obj
def snapshot_save(
    opts: GlobalOptions,
    name: str,
    vms: tuple[str, ...],
    no_memory: bool,
    force: bool,
    progress: str,
    wait_lock: bool,
) -> None:
    """Save snapshot NAME of the VMs named (none: every running VM).

    A VM with a 9p bind mount mounted cannot have its memory saved (QEMU 7.2 refuses to
    migrate it): use --no-memory for it. The guests' open TCP connections are kept as they
    are, and their peers may have given up on them by the time of a restore.
    """
    project = opts.load()
    from orchestrator import api

    record = _run(
        progress,
        lambda on_event: api.snapshot_save(
            project,
            name,
            *vms,
            memory=not no_memory,
            force=force,
            wait_lock=wait_lock,
            on_event=on_event,
        ),
    )
    size = f", {record.size / (1 << 20):.1f} MiB" if record.memory else ""
    click.echo(
        f"snapshot {record.name}: {', '.join(sorted(record.vms))} "
        f"(frozen {record.frozen_for:.2f} s{size})",
        err=True,
    )


@snapshot.command("restore")
@click.argument("name")
@click.argument("vms", nargs=-1)
@click.option("--paused", is_flag=True, help="Leave the VMs paused (frozen) at that instant.")
@click.option("--wait", "wait_ready", is_flag=True, help="Wait until every VM is ready again.")
@click.option(
    "--wait-timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="Seconds a VM may take to be ready.",
)
@progress_option
@wait_lock_option
@click.pass_obj
def snapshot_restore(
    opts: GlobalOptions,
    name: str,
    vms: tuple[str, ...],
    paused: bool,
    wait_ready: bool,
    wait_timeout: float,
    progress: str,
    wait_lock: bool,
) -> None:
    """Put the VMs named (none: all of the snapshot's) back at snapshot NAME's instant.

    Running VMs are stopped at once (what they did since is given up), their disks put back,
    and each starts from its saved state: no boot. Stopped VMs come back running too. A VM
    whose hardware (cpu, memory, machine, networks, volumes, disk, image, boot) changed
    since is refused, naming the change, and nothing is touched. Each guest's wall clock is
    set to the host's over SSH; where that fails, it is behind by the snapshot's age.
    """
    project = opts.load()
    from orchestrator import api

    result = _run(
        progress,
        lambda on_event: api.snapshot_restore(
            project,
            name,
            *vms,
            paused=paused,
            wait=wait_ready,
            ready_timeout=wait_timeout,
            wait_lock=wait_lock,
            on_event=on_event,
        ),
    )
    click.echo(
        f"snapshot {result.name} restored: {', '.join(result.vms)} ({result.seconds:.1f} s)",
        err=True,
    )


@snapshot.command("ls")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_obj
def snapshot_ls(opts: GlobalOptions, fmt: str) -> None:
    """List the project's snapshots: name, when, VMs, with or without memory, size.

    SIZE is what the snapshot's own files take (the memory); the disks' points in time live
    in the images themselves, sharing what did not change since.
    """
    project = opts.load()
    from orchestrator import api

    from .tables import json_lines, snapshot_table

    rows = api.snapshots(project)
    sys.stdout.write(json_lines(rows) if fmt == "json" else snapshot_table(rows))


@snapshot.command("rm")
@click.argument("names", nargs=-1, required=True)
@progress_option
@wait_lock_option
@click.pass_obj
def snapshot_rm(
    opts: GlobalOptions, names: tuple[str, ...], progress: str, wait_lock: bool
) -> None:
    """Remove snapshots: their memory files and their disks' points in time."""
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.snapshot_remove(
            project, *names, wait_lock=wait_lock, on_event=on_event
        ),
    )


@click.command()
@click.argument("vms", nargs=-1)
@progress_option
@wait_lock_option
@click.pass_obj
def suspend(opts: GlobalOptions, vms: tuple[str, ...], progress: str, wait_lock: bool) -> None:
    """Save the state of running VMs (all, or those named) and end their QEMUs.

    Their CPU and memory are freed; `resume` (or `up`) brings each back where it was,
    without a boot. `ps` shows them suspended; `stop` discards the saved state (the VM boots
    next time). A VM with a 9p bind mount mounted cannot be suspended (QEMU 7.2).
    """
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.suspend(project, *vms, wait_lock=wait_lock, on_event=on_event),
    )


@click.command()
@click.argument("vms", nargs=-1)
@click.option("--wait", "wait_ready", is_flag=True, help="Wait until every VM is ready again.")
@click.option(
    "--wait-timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="Seconds a VM may take to be ready.",
)
@progress_option
@wait_lock_option
@click.pass_obj
def resume(
    opts: GlobalOptions,
    vms: tuple[str, ...],
    wait_ready: bool,
    wait_timeout: float,
    progress: str,
    wait_lock: bool,
) -> None:
    """Start suspended VMs (all, or those named) where they were, without a boot.

    A VM whose hardware changed since it was suspended is refused, naming the change. Each
    guest's wall clock is set to the host's over SSH (its monotonic time goes on from where
    it stopped); where that fails, it is behind by the time it was suspended.
    """
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.resume(
            project,
            *vms,
            wait=wait_ready,
            ready_timeout=wait_timeout,
            wait_lock=wait_lock,
            on_event=on_event,
        ),
    )


@click.group()
def template() -> None:
    """The warm templates: the saved state a warm VM's new replicas start from.

    `up` saves one when it boots the first replica of a warm VM (`warm: true`) and keeps it
    while it fits the definition; `destroy` removes it with the VMs.
    """


@template.command("ls")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_obj
def template_ls(opts: GlobalOptions, fmt: str) -> None:
    """List the project's templates: VM, the replica saved, when, size on disk, QEMU."""
    project = opts.load()
    from orchestrator import api

    from .tables import json_lines, template_table

    rows = api.templates(project)
    sys.stdout.write(json_lines(rows) if fmt == "json" else template_table(rows))


@template.command("rm")
@click.argument("vms", nargs=-1)
@progress_option
@wait_lock_option
@click.pass_obj
def template_rm(opts: GlobalOptions, vms: tuple[str, ...], progress: str, wait_lock: bool) -> None:
    """Remove the templates of the VMs named (none: all), freeing their space.

    The running replicas are not touched; the next new replica boots and is saved anew.
    """
    project = opts.load()
    from orchestrator import api

    _run(
        progress,
        lambda on_event: api.remove_templates(
            project, *vms, wait_lock=wait_lock, on_event=on_event
        ),
    )
