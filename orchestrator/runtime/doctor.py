"""`doctor`: can this machine run qemu-compose, and if not, the command that fixes it.

`gather` reads the machine (binaries on PATH, versions, KVM, the bus, capabilities, free
space); `evaluate` is a pure function of what was read, so every verdict is unit-tested.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from orchestrator.guest.accel import HostFacts, kvm_usable, read_host_facts
from orchestrator.guest.firmware import find_ovmf

Verdict = Literal["ok", "warn", "fail"]
LOW_SPACE = 5 << 30  # bytes: less than this in the image cache is a warning
MIN_QEMU = (7, 1)


def qemu_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from "QEMU emulator version 7.2.22 (...)"; None if it says none."""
    match = re.search(r"version (\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str = ""  # the exact command (or step) that fixes it
    required: bool = False  # a failure of a required check makes doctor exit 1


@dataclass(frozen=True, slots=True)
class Facts:
    os_name: str
    binaries: dict[str, str | None]  # name -> path, None when missing
    versions: dict[str, str]  # name -> first line of --version
    host: HostFacts
    bus_error: str | None  # None: a systemd manager answered on the bus
    bus: str
    net_admin: bool
    is_root: bool
    cache_dir: Path
    cache_free: int | None  # bytes free where images are cached
    ovmf: str | None = None  # OVMF's code (firmware: uefi), None when not installed
    network_mode: str = "host"  # where bridge networks live: host, rootless (or the error)
    network_why: str = ""
    rootless_problem: tuple[str, str] | None = None  # what keeps rootless from working: why, fix


APT = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "dnsmasq": "dnsmasq-base",
    "ssh": "openssh-client",
    "mkfs.ext4": "e2fsprogs",
    "openssl": "openssl",
    "nft": "nftables",
    "journalctl": "systemd",
}


def _install(binary: str, root: bool) -> str:
    return f"{'' if root else 'sudo '}apt-get install -y {APT[binary]}"


def evaluate(facts: Facts) -> list[Check]:
    """Every check, in the order `doctor` prints them. Pure."""
    return [
        Check("os", "ok", facts.os_name),
        _systemd(facts),
        _qemu(facts),
        _binary(facts, "qemu-img", "makes the VMs' disks", required=True),
        _binary(facts, "openssl", "hashes the console password", required=True),
        _kvm(facts),
        _network_mode(facts),
        _binary(facts, "dnsmasq", "DHCP and DNS of bridge networks", required=False),
        _binary(facts, "nft", "NAT of bridge networks with nat: true", required=False),
        _binary(facts, "ssh", "`qemu-compose ssh`", required=False),
        _binary(facts, "mkfs.ext4", "makes named volumes", required=False),
        _binary(
            facts, "journalctl", "`qemu-compose logs` shows the unit's journal", required=False
        ),
        _ovmf(facts),
        _image_cache(facts),
    ]


def _ovmf(facts: Facts) -> Check:
    if facts.ovmf:
        return Check("ovmf", "ok", f"UEFI firmware for firmware: uefi: {facts.ovmf}")
    fix = f"{'' if facts.is_root else 'sudo '}apt-get install -y ovmf"
    return Check("ovmf", "warn", "not found: VMs with firmware: uefi cannot start", fix)


def _binary(facts: Facts, name: str, what: str, *, required: bool) -> Check:
    path = facts.binaries.get(name)
    if path:
        return Check(name, "ok", facts.versions.get(name) or path)
    verdict: Verdict = "fail" if required else "warn"
    return Check(name, verdict, f"not found: {what}", _install(name, facts.is_root), required)


def _systemd(facts: Facts) -> Check:
    if facts.bus_error is None:
        return Check("systemd", "ok", f"a systemd manager answers on the {facts.bus} bus")
    fix = (
        "run from a login session of this user (ssh, or machinectl shell USER@), or "
        "`loginctl enable-linger $USER`; where PID 1 is not systemd (a container), see "
        "examples/run.sh for a private user manager"
    )
    if not Path("/usr/lib/systemd/user/dbus.socket").exists():
        sudo = "" if facts.is_root else "sudo "
        fix = f"{sudo}apt-get install -y dbus-user-session, then log in again"
    return Check("systemd", "fail", facts.bus_error, fix, required=True)


def _qemu(facts: Facts) -> Check:
    found = _binary(facts, "qemu-system-x86_64", "runs the VMs", required=True)
    version = qemu_version(facts.versions.get("qemu-system-x86_64", ""))
    if found.verdict != "ok" or version is None or version >= MIN_QEMU:
        return found
    return Check(
        "qemu-system-x86_64",
        "fail",
        f"{facts.versions['qemu-system-x86_64']}: {'.'.join(map(str, MIN_QEMU))} or newer "
        "is needed (-action panic=exit-failure)",
        "use Debian 12 or newer (QEMU 7.2), or a backport of QEMU",
        required=True,
    )


def _kvm(facts: Facts) -> Check:
    usable, why = kvm_usable(facts.host)
    if usable:
        return Check("kvm", "ok", f"KVM: {why}")
    if not facts.host.cpu_flags & {"vmx", "svm"}:
        fix = "enable VT-x/AMD-V in the firmware, or give this VM nested virtualisation"
    elif facts.host.kvm_pvm_loaded:
        fix = "none here: use a host with hardware virtualisation for KVM speed"
    else:
        fix = "sudo usermod -aG kvm $USER (then log in again), or sudo modprobe kvm_intel"
        fix += " / kvm_amd"
    return Check("kvm", "warn", f"VMs run under TCG (slow): {why}", fix)


def _network_mode(facts: Facts) -> Check:
    if facts.network_mode == "host":
        if facts.net_admin:
            return Check("network_mode", "ok", f"host: {facts.network_why}")
        return Check(
            "network_mode",
            "warn",
            f"host ({facts.network_why}) without CAP_NET_ADMIN: no bridge networks",
            "unset QEMU_COMPOSE_NETWORK_MODE (rootless needs no privilege), or run as root",
        )
    if facts.network_mode != "rootless":  # the variable's value was refused
        fix = "QEMU_COMPOSE_NETWORK_MODE=host, rootless or auto"
        return Check("network_mode", "fail", facts.network_mode, fix, required=True)
    if facts.rootless_problem is None:
        return Check("network_mode", "ok", f"rootless: {facts.network_why}")
    problem, fix = facts.rootless_problem
    return Check(
        "network_mode",
        "warn",
        f"rootless ({facts.network_why}), but {problem}: VMs on user-mode networking only",
        fix or "run qemu-compose as root for bridge networks on the host",
    )


def _image_cache(facts: Facts) -> Check:
    if facts.cache_free is None:
        return Check("image_cache", "warn", f"cannot read free space of {facts.cache_dir}")
    gib = facts.cache_free / (1 << 30)
    verdict: Verdict = "ok" if facts.cache_free >= LOW_SPACE else "warn"
    fix = "" if verdict == "ok" else "qemu-compose image prune, or free disk space"
    return Check("image_cache", verdict, f"{gib:.1f} GiB free in {facts.cache_dir}", fix)


def _version(path: str) -> str:
    flag = "version" if Path(path).name == "openssl" else "--version"
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return path
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else path


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))}, kernel {platform.release()}"
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


async def gather(bus: str = "user") -> Facts:
    import netcfg
    import systemd_dbus
    from orchestrator.guest.images import cache_dir

    binaries = {name: shutil.which(name) or _sbin(name) for name in APT}
    versions = {}
    for name in ("qemu-system-x86_64", "qemu-img", "openssl", "dnsmasq"):
        path = binaries.get(name)
        if path:
            versions[name] = await trio.to_thread.run_sync(_version, path)
    bus_error = None
    try:
        with trio.fail_after(10):
            async with systemd_dbus.connect(bus) as manager:
                await manager.list_units("qemu-compose-")
    except (systemd_dbus.SystemdError, trio.TooSlowError, OSError) as err:
        bus_error = str(err) or type(err).__name__
    cache = cache_dir()
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free: int | None = shutil.disk_usage(probe).free
    except OSError:
        free = None
    from orchestrator.errors import UsageError

    from .netmode import network_mode, rootless_problem

    mode: str
    try:
        mode, why = network_mode(os.environ, netcfg.has_net_admin())
    except UsageError as err:
        mode, why = str(err), ""
    problem = await trio.to_thread.run_sync(rootless_problem) if mode == "rootless" else None
    return Facts(
        os_name=_os_name(),
        binaries=binaries,
        versions=versions,
        host=read_host_facts(),
        bus_error=bus_error,
        bus=bus,
        net_admin=netcfg.has_net_admin(),
        is_root=os.geteuid() == 0,
        cache_dir=cache,
        cache_free=free,
        ovmf=str(ovmf.code) if (ovmf := find_ovmf()) else None,
        network_mode=mode,
        network_why=why,
        rootless_problem=problem,
    )


def _sbin(name: str) -> str | None:
    """Debian keeps dnsmasq and mkfs in /usr/sbin, off a user's PATH: they are still there."""
    for directory in ("/usr/sbin", "/sbin"):
        path = Path(directory) / name
        if os.access(path, os.X_OK):
            return str(path)
    return None


def render(checks: list[Check]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for check in checks:
        lines.append(f"{marks[check.verdict]}  {check.name:<20} {check.detail}")
        if check.fix and check.verdict != "ok":
            lines.append(f"{'':<26}fix: {check.fix}")
    failed = [c for c in checks if c.verdict == "fail" and c.required]
    if failed:
        lines.append(f"\n{len(failed)} required check(s) failed.")
    else:
        lines.append("\nqemu-compose can run here.")
    return "\n".join(lines) + "\n"
