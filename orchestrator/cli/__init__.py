"""The `qemu-compose` command line.

Start-up time matters (``--help`` is a target of bench/): this module imports click only;
each command imports what it needs when it runs.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from .app import cli


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: one clear message and an exit status, never a trace."""
    from orchestrator import QemuComposeError

    debug = _debug_requested(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="qemu-compose: %(levelname)s: %(message)s"
        if not debug
        else "%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        status = cli.main(args=argv, prog_name="qemu-compose", standalone_mode=False)
    except click.ClickException as err:
        err.show()
        status = err.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        status = 130
    except QemuComposeError as err:
        if debug:
            traceback.print_exc()
        if not getattr(err, "expected", False):  # (an attached `up` that Ctrl-C stopped)
            click.echo(_render_error(err), err=True)
        status = err.exit_status
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        # Our reader went away (`qemu-compose config | head`); don't complain about it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 1
    except Exception as err:  # a bug: say so plainly, trace only on request
        if debug:
            traceback.print_exc()
        click.echo(
            f"qemu-compose: internal error: {type(err).__name__}: {err}\n"
            "run again with --debug for the traceback, and please report it",
            err=True,
        )
        status = 1
    sys.exit(status if isinstance(status, int) else 0)


def _debug_requested(argv: list[str]) -> bool:
    env = os.environ.get("QEMU_COMPOSE_DEBUG", "").strip().lower()
    return "--debug" in argv or env in ("1", "true", "yes", "on")


def _render_error(err: Exception) -> str:
    from orchestrator import ConfigError, SeveralErrors, VmError

    if isinstance(err, SeveralErrors):  # each on its own lines, a VM's named
        return "\n".join(
            f"qemu-compose: error: {e.vm}: {e}" if isinstance(e, VmError) else _render_error(e)
            for e in err.errors
        )
    if isinstance(err, ConfigError):
        files = {p.file for p in err.problems}
        count = len(err.problems)
        head = "problem" if count == 1 else "problems"
        shown = ", ".join(_shown(f) for f in sorted(files))
        lines = [f"qemu-compose: {shown} is not valid ({count} {head}):"]
        lines += [f"  {p.render(_shown(p.file))}" for p in err.problems]
        return "\n".join(lines)
    return f"qemu-compose: error: {err}"


def _shown(path: os.PathLike[str] | str) -> str:
    """A path as short as it can be said: relative to the working directory when inside it."""
    text = os.fspath(path)
    try:
        rel = os.path.relpath(text)
    except ValueError:
        return text
    return text if rel.startswith("..") else rel


__all__ = ["cli", "main"]
