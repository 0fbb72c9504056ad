"""Where bridge networks live: on the host (root or CAP_NET_ADMIN), or in the user's own
network namespace (rootless: an ordinary user), whose keeper is a service of the user's
manager.

``QEMU_COMPOSE_NETWORK_MODE`` chooses: ``host``, ``rootless``, or ``auto`` (the default:
host with CAP_NET_ADMIN, else rootless). ``network_mode`` is pure, and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Literal

import trio

import netcfg
import systemd_dbus
from netcfg import keeper
from netcfg.userns import Namespace
from orchestrator.errors import UsageError
from orchestrator.state.paths import UNIT_PREFIX

Mode = Literal["host", "rootless"]
MODE_VARIABLE = "QEMU_COMPOSE_NETWORK_MODE"
KEEPER_UNIT = f"{UNIT_PREFIX}netns.service"  # one per user manager: all their projects'


def network_mode(environ: Mapping[str, str], net_admin: bool) -> tuple[Mode, str]:
    """The mode, and why it is the one."""
    asked = environ.get(MODE_VARIABLE, "auto").strip() or "auto"
    if asked == "host":
        return "host", f"{MODE_VARIABLE}=host"
    if asked == "rootless":
        return "rootless", f"{MODE_VARIABLE}=rootless"
    if asked != "auto":
        raise UsageError(f"{MODE_VARIABLE}={asked!r}: use host, rootless or auto")
    if net_admin:
        return "host", "CAP_NET_ADMIN (root): bridges on the host"
    return "rootless", "no CAP_NET_ADMIN: bridges in the user's own network namespace"


async def keeper_namespace(manager: systemd_dbus.SystemdManager) -> Namespace:
    """The user's namespace, its keeper started first if it is not running: in the namespace
    a dnsmasq of ours kept, if one outlived the keeper (its VMs' TAPs are there), else anew."""
    status = await manager.status(KEEPER_UNIT)
    if not status.is_active:
        if status.exists:
            await manager.stop(KEEPER_UNIT)
            if status.is_failed:
                await manager.reset_failed(KEEPER_UNIT)
        adopt = await _kept(manager)
        await manager.start(
            systemd_dbus.TransientUnit(
                KEEPER_UNIT,
                keeper.argv(sys.executable, adopt=adopt),
                description="qemu-compose: the user's network namespace (rootless networks)",
            )
        )
        status = await manager.status(KEEPER_UNIT)
    if not status.main_pid:
        raise netcfg.PlumbingError(f"{KEEPER_UNIT} runs no process")
    return await trio.to_thread.run_sync(keeper.namespace_of, status.main_pid)


async def running_namespace(manager: systemd_dbus.SystemdManager) -> Namespace | None:
    """The user's namespace if its keeper runs (nothing started: for what only looks)."""
    status = await manager.status(KEEPER_UNIT)
    if not status.is_active or not status.main_pid:
        return None
    try:
        return await trio.to_thread.run_sync(keeper.namespace_of, status.main_pid)
    except netcfg.PlumbingError:
        return None


async def release_keeper(manager: systemd_dbus.SystemdManager) -> bool:
    """Stop the keeper when no network of the user's is left in its namespace (no dnsmasq of
    ours runs); True if it was stopped."""
    status = await manager.status(KEEPER_UNIT)
    if not status.exists:
        return False
    for unit in await manager.list_units(f"{UNIT_PREFIX}dnsmasq-"):
        if (await manager.status(unit.name)).is_active:
            return False
    await manager.stop(KEEPER_UNIT)
    if (await manager.status(KEEPER_UNIT)).is_failed:
        await manager.reset_failed(KEEPER_UNIT)
    return True


async def _kept(manager: systemd_dbus.SystemdManager) -> Namespace | None:
    """The namespace an active dnsmasq of ours is in, if it is not ours (rootless)."""
    for unit in await manager.list_units(f"{UNIT_PREFIX}dnsmasq-"):
        status = await manager.status(unit.name)
        if status.is_active and status.main_pid:
            try:
                found = keeper.namespace_of(status.main_pid, ready=False, timeout=0)
            except netcfg.PlumbingError:
                continue
            return found
    return None


def rootless_problem() -> tuple[str, str] | None:
    """What keeps bridge networks in the user's own namespace from working here (why, and
    the fix: "" when none is known), or None: tried for real (a user namespace made and
    left)."""
    from netcfg import taphelper

    unshare = shutil.which("unshare")
    if unshare is None:
        return "no unshare", "apt-get install -y util-linux"
    try:
        tried = subprocess.run(
            [unshare, "--user", "--map-root-user", "--net", "true"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare: {err}", ""
    if tried.returncode != 0:
        return (
            f"no user namespace for this user ({tried.stderr.strip() or 'refused'})",
            "sudo sysctl -w user.max_user_namespaces=15000 kernel.unprivileged_userns_clone=1",
        )
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "/dev/net/tun is not open to this user", "sudo chmod 0666 /dev/net/tun"
    try:
        taphelper.helper_path()
    except netcfg.PlumbingError as err:
        return str(err), ""
    return None


async def require_rootless() -> None:
    """Refuse, before anything is made, bridge networks the user's namespace cannot hold."""
    problem = await trio.to_thread.run_sync(rootless_problem)
    if problem is not None:
        why, fix = problem
        raise netcfg.PlumbingError(
            f"bridge networks in your own network namespace (rootless mode: no CAP_NET_ADMIN) "
            f"cannot work here: {why}" + (f"; fix: {fix}" if fix else "")
        )
