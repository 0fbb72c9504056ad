"""`inspect VM`: everything about one VM, from the file, the state, systemd and QMP.

`inspect` gathers a plain dict (what `--format json` prints); `render_inspect` lays it out for
a person. Reading only: no lock is taken, nothing is changed.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from typing import Any

import netcfg
import qmp
import systemd_dbus
from orchestrator.config.project import Project
from orchestrator.config.topology import dependencies, select_one
from orchestrator.errors import StateError
from orchestrator.guest.cloudinit import default_user, detect_os
from orchestrator.guest.images import cache_dir, cache_name, is_remote, local_path
from orchestrator.guest.secrets import ConsolePassword, read_console_password
from orchestrator.state.files import StateDir
from orchestrator.state.paths import ProjectPaths, dnsmasq_unit, vm_unit

from .query import ps
from .session import Settings


async def inspect(project: Project, settings: Settings, name: str) -> dict[str, Any]:
    inst = select_one(project.model, name, project=project.name)
    vm = inst.vm
    paths = ProjectPaths(project.state_dir, project.name)
    mine = paths.vm(name)
    state_dir = StateDir(project.state_dir)
    state = state_dir.read_state(project.name) if state_dir.path.exists() else None
    saved = state.vms.get(name) if state else None
    [row] = await ps(
        project,
        Settings(services=[name], bus=settings.bus, journal_dir=settings.journal_dir),
    )
    unit = vm_unit(project.name, name)
    async with qmp.asyncio_loop(), systemd_dbus.connect(settings.bus) as manager:
        status = await manager.status(unit)
        dhcp = {n: (await manager.status(dnsmasq_unit(project.name, n))) for n in vm.networks}
    qemu_status = None
    if status.is_active:
        with contextlib.suppress(qmp.QmpError, OSError):
            async with qmp.open_session(str(mine.qmp_control_socket), timeout=2) as session:
                qemu_status = (await session.query_status()).status
    image = vm.image.source if vm.image else None
    user = vm.user or default_user(image)
    base = None
    if image is not None:
        base = str(cache_dir() / cache_name(image) if is_remote(image) else local_path(image))
    networks: list[dict[str, Any]] = [
        {
            "name": "user",
            "mode": "user",
            "mac": saved.macs.get("nic0") if saved else None,
            "ssh_port": row.ssh_port,
            "ports": saved.ports if saved else [],
        }
    ]
    for i, network in enumerate(sorted(vm.networks), start=1):
        networks.append(
            {
                "name": network,
                "mode": "bridge",
                "bridge": netcfg.bridge_name(project.name, network),
                "tap": netcfg.tap_name(project.name, name, network),
                "subnet": state.subnets.get(network) if state else None,
                "address": row.addresses.get(network),
                "mac": saved.macs.get(f"nic{i}") if saved else None,
                "dhcp": dhcp[network].active_state,
                "dns_names": [name, f"{name}.{project.name}"],
            }
        )
    password = _console_password(paths)
    return {
        "name": name,
        "project": project.name,
        "definition": inst.definition,
        "status": row.status,
        "created_at": _iso(saved.created_at) if saved else None,
        "unit": {
            "name": unit,
            "active_state": status.active_state,
            "sub_state": status.sub_state,
            "result": status.result,
            "main_pid": status.main_pid or None,
        },
        "qemu_status": qemu_status,
        "config": {
            "cpu": vm.cpu,
            "memory": vm.memory,
            "machine": vm.machine,
            "accel": vm.accel,
            "image": image,
            "boot": vm.boot.kernel if vm.boot else None,
            "os_type": detect_os(image),
            "user": user,
            "hostname": vm.hostname or name,
            "restart": vm.restart,
            "stop_grace_period": vm.stop_grace_period,
        },
        "disk": {
            "size": vm.disk.size or ("the image's" if image else None),
            "instance_disk": str(mine.disk) if mine.disk.exists() else None,
            "base_image": base,
            "seed": str(mine.seed) if mine.seed.exists() else None,
        },
        "networks": networks,
        "volumes": [
            {
                "type": m.type,
                "source": m.source,
                "target": m.target,
                "read_only": m.read_only,
                "automount": m.automount,
                "host_path": str(paths.volume(m.source)) if m.type == "volume" else m.source,
            }
            for m in vm.volumes
        ],
        "environment": dict(vm.environment),
        "provision": [p.script or _first_line(p.inline or "") for p in vm.provision],
        "depends_on": {n: d.condition for n, d in dependencies(project.model, inst).items()},
        "healthcheck": vm.healthcheck.test if vm.healthcheck and vm.healthcheck.test else None,
        "ssh": {
            "command": f"qemu-compose ssh {name}",
            "user": vm.ssh.user or user,
            "host": "127.0.0.1",
            "port": row.ssh_port,
            "key": str(paths.ssh_dir / "id_ed25519"),
        },
        "console": {
            "attach": f"qemu-compose console {name}",
            "socket": str(mine.console_socket),
            "log": str(mine.console_log),
            "login": user,
            "password": password.password if password else None,
        },
        "logs": {
            "command": f"qemu-compose logs {name}",
            "journal": shlex.join(
                ["journalctl", *(["--user"] if settings.bus != "system" else []), "-u", unit]
            ),
        },
    }


def _console_password(paths: ProjectPaths) -> ConsolePassword | None:
    try:
        return read_console_password(paths.console_password)
    except (OSError, StateError):  # unreadable: inspect shows the rest
        return None


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when))


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""


def render_inspect(info: dict[str, Any]) -> str:
    """The dict of `inspect`, in sections, for a person."""
    out: list[str] = [f"VM: {info['name']}", f"Project: {info['project']}", "=" * 72]

    def section(title: str, pairs: list[tuple[str, Any]]) -> None:
        shown = [(k, v) for k, v in pairs if v not in (None, "", [], {})]
        if shown:
            out.append("")
            out.append(f"{title}:")
            out.extend(f"  {key}: {value}" for key, value in shown)

    unit, config, disk = info["unit"], info["config"], info["disk"]
    section(
        "Status",
        [
            ("State", info["status"]),
            ("QEMU", info["qemu_status"]),
            ("Systemd unit", f"{unit['name']} ({unit['active_state']}/{unit['sub_state']})"),
            ("Main PID", unit["main_pid"]),
            ("Created", info["created_at"]),
        ],
    )
    section(
        "Configuration",
        [
            ("CPU", config["cpu"]),
            ("Memory", f"{config['memory']} MiB"),
            ("Machine", config["machine"]),
            ("Accelerator", config["accel"]),
            ("Image", config["image"]),
            ("Kernel", config["boot"]),
            ("OS type", config["os_type"]),
            ("Default user", config["user"]),
            ("Hostname", config["hostname"]),
            ("Restart", config["restart"]),
            ("Stop grace period", config["stop_grace_period"]),
        ],
    )
    section(
        "Disk",
        [
            ("Size", disk["size"]),
            ("Instance disk", disk["instance_disk"]),
            ("Base image", disk["base_image"]),
            ("Cloud-init seed", disk["seed"]),
        ],
    )
    out += ["", "Networks:"]
    for net in info["networks"]:
        out.append(f"  - {net['name']} ({net['mode']}):")
        labels = {"bridge": "Bridge", "tap": "TAP", "subnet": "Subnet", "address": "IP address",
                  "mac": "MAC", "dhcp": "DHCP/DNS", "ssh_port": "SSH port"}  # fmt: skip
        for key, label in labels.items():
            if net.get(key):
                out.append(f"      {label}: {net[key]}")
        for port in net.get("ports") or []:
            out.append(f"      Port: {port}")
        if net.get("dns_names"):
            out.append(f"      DNS names: {', '.join(net['dns_names'])}")
    if info["volumes"]:
        out += ["", "Volumes:"]
        for v in info["volumes"]:
            mode = "ro" if v["read_only"] else "rw"
            out.append(f"  - {v['source']} -> {v['target']} ({v['type']}, {mode})")
            out.append(f"      Host path: {v['host_path']}")
    if info["environment"]:
        out += ["", "Environment:"] + [f"  {k}={v}" for k, v in info["environment"].items()]
    if info["provision"]:
        out += ["", "Provisioning:"] + [f"  {i}. {p}" for i, p in enumerate(info["provision"], 1)]
    if info["depends_on"]:
        out += ["", "Depends on:"] + [f"  {n} ({c})" for n, c in info["depends_on"].items()]
    if info["healthcheck"]:
        out += ["", "Healthcheck:", f"  {' '.join(info['healthcheck'])}"]
    ssh, console, logs = info["ssh"], info["console"], info["logs"]
    section("SSH", [("Connect", ssh["command"]), ("Port", ssh["port"]), ("Key", ssh["key"])])
    section(
        "Console",
        [
            ("Attach", f"{console['attach']}  (Ctrl+] detaches)"),
            ("Socket", console["socket"]),
            ("Log", console["log"]),
            ("Login", console["login"]),
            ("Password", console["password"]),
        ],
    )
    section("Logs", [("View", logs["command"]), ("Journal", logs["journal"])])
    return "\n".join(out) + "\n"
