"""The QEMU command-line fragment for qemu-compose's two QMP monitors. Pure.

The first monitor is for supervision (one long-lived session that sees every event); the
second for control (short-lived sessions of CLI commands). QEMU serves one client per
monitor socket, so the two never wait for each other.
"""

from __future__ import annotations

SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL


def check_socket_path(path: str) -> str:
    """``path`` if a unix socket can be bound there, else ValueError."""
    if len(path.encode()) > SUN_PATH_MAX:
        raise ValueError(
            f"socket path is {len(path.encode())} bytes, longer than the {SUN_PATH_MAX} "
            f"a unix socket allows: {path}"
        )
    return path


def qemu_option_value(text: str) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas doubled."""
    return text.replace(",", ",,")


def monitor_args(supervision_socket: str, control_socket: str) -> list[str]:
    """``-chardev``/``-mon`` pairs for the two QMP monitors, servers that do not wait."""
    args: list[str] = []
    for chardev_id, path in (
        ("qmp-supervise", supervision_socket),
        ("qmp-control", control_socket),
    ):
        check_socket_path(path)
        args += [
            "-chardev",
            f"socket,id={chardev_id},path={qemu_option_value(path)},server=on,wait=off",
            "-mon",
            f"chardev={chardev_id},mode=control",
        ]
    return args
