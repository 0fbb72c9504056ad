"""`inspect VM`: everything about one VM, from the file, the state, systemd and QMP.

`inspect` gathers a plain dict (what `--format json` prints); `render_inspect` lays it out for
a person. Reading only: no lock is taken, nothing is changed.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import netcfg
import qmp
from orchestrator.config.model import Vm
from orchestrator.config.project import Project
from orchestrator.config.topology import Instance, dependencies, select_one
from orchestrator.errors import StateError
from orchestrator.guest.images import detect_os, image_path
from orchestrator.guest.secrets import ConsolePassword, read_console_password
from orchestrator.progress import Reporter
from orchestrator.state.files import ProjectState
from orchestrator.state.paths import ProjectPaths, VmPaths
from orchestrator.supervisor.health import read_health

from .access import guest_user
from .options import Connection
from .query import VmRow, vm_rows
from .session import open_session


async def inspect(project: Project, connection: Connection, name: str) -> dict[str, Any]:
    async with open_session(project, connection, Reporter(), lock=False) as session:
        inst = select_one(session.project.model, name, project=project.name)
        vm = inst.vm
        unit = session.vm_unit(name)
        [row] = await vm_rows(session, [name])
        status = await session.manager.status(unit)
        dhcp = {
            n: (await session.manager.status(session.dnsmasq_unit(n))).active_state
            for n in vm.networks
        }
        qemu_status = None
        if status.is_active:
            socket = str(session.paths.vm(name).qmp_control_socket)
            try:
                async with qmp.open_session(socket, timeout=2) as monitor:
                    qemu_status = (await monitor.query_status()).status
            except (qmp.QmpConnectError, qmp.QmpTimeoutError):
                if Path(socket).is_socket():  # its unit is active, QEMU does not answer
                    qemu_status = "unresponsive"
            except (qmp.QmpError, OSError):
                qemu_status = None
    paths, state = session.paths, session.state
    saved = state.vms.get(name)
    image = vm.image.source if vm.image else None
    user = guest_user(vm, saved)
    password = _console_password(paths)
    return {
        "name": name,
        "project": project.name,
        "definition": inst.definition,
        "state": row.state,
        "status": row.status,
        "health": _health(paths.vm(name), row, status.active_enter_usec),
        "started_at": _iso(row.started_at) if row.started_at else None,
        "restarts": row.restarts,
        "ports": row.ports,
        "faults": row.faults,
        "created_at": _iso(saved.created_at) if saved else None,
        "unit": {
            "name": unit,
            "active_state": status.active_state,
            "sub_state": status.sub_state,
            "result": status.result,
            "main_pid": status.main_pid or None,
        },
        "qemu_status": qemu_status,
        "config": _config(inst, image, user),
        "disk": _disk(vm, paths.vm(name), image),
        "networks": _networks(project, inst, state, row, dhcp),
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
        **_access(inst, paths, user, row.ssh_port, password, connection.bus, unit),
    }


def _config(inst: Instance, image: str | None, user: str) -> dict[str, Any]:
    vm = inst.vm
    return {
        "cpu": vm.cpu,
        "memory": vm.memory,
        "machine": vm.machine,
        "accel": vm.accel,
        "image": image,
        "boot": vm.boot.kernel if vm.boot else None,
        "os_type": detect_os(image),
        "user": user,
        "hostname": vm.hostname or inst.name,
        "restart": vm.restart,
        "stop_grace_period": vm.stop_grace_period,
    }


def _disk(vm: Vm, mine: VmPaths, image: str | None) -> dict[str, Any]:
    base = str(image_path(image)) if image is not None else None
    return {
        "size": vm.disk.size or ("the image's" if image else None),
        "instance_disk": str(mine.disk) if mine.disk.exists() else None,
        "base_image": base,
        "seed": str(mine.seed) if mine.seed.exists() else None,
    }


def _networks(
    project: Project,
    inst: Instance,
    state: ProjectState,
    row: VmRow,
    dhcp: Mapping[str, str],
) -> list[dict[str, Any]]:
    name, saved = inst.name, state.vms.get(inst.name)
    networks: list[dict[str, Any]] = [
        {
            "name": "user",
            "mode": "user",
            "mac": saved.macs.get("nic0") if saved else None,
            "ssh_port": row.ssh_port,
            "ports": saved.ports if saved else [],
        }
    ]
    for i, network in enumerate(sorted(inst.vm.networks), start=1):
        networks.append(
            {
                "name": network,
                "mode": "bridge",
                "bridge": netcfg.bridge_name(project.name, network),
                "tap": netcfg.tap_name(project.name, name, network),
                "subnet": state.subnets.get(network),
                "address": row.addresses.get(network),
                "mac": saved.macs.get(f"nic{i}") if saved else None,
                "dhcp": dhcp[network],
                "dns_names": [name, f"{name}.{project.name}"],
            }
        )
    return networks


def _access(
    inst: Instance,
    paths: ProjectPaths,
    user: str,
    ssh_port: int | None,
    password: ConsolePassword | None,
    bus: str,
    unit: str,
) -> dict[str, Any]:
    """How to reach the VM: SSH, its console, its logs."""
    name, mine = inst.name, paths.vm(inst.name)
    return {
        "ssh": {
            "command": f"qemu-compose ssh {name}",
            "user": inst.vm.ssh.user or user,
            "host": "127.0.0.1",
            "port": ssh_port,
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
                ["journalctl", *(["--user"] if bus != "system" else []), "-u", unit]
            ),
        },
    }


def _console_password(paths: ProjectPaths) -> ConsolePassword | None:
    try:
        return read_console_password(paths.console_password)
    except (OSError, StateError):  # unreadable: inspect shows the rest
        return None


def _health(paths: VmPaths, row: VmRow, since: int) -> dict[str, Any] | None:
    """The supervisor's kept health of the QEMU that runs now, as docker's .State.Health."""
    if row.health is None:
        return None
    kept = read_health(paths)
    if kept is None or not kept.is_of(since):
        return {"status": row.health, "failing_streak": 0, "log": []}
    return {
        "status": kept.status.value,
        "failing_streak": kept.failing_streak,
        "log": [
            {
                "start": _iso(r.start),
                "end": _iso(r.end),
                "exit_code": r.exit_code,
                "output": r.output,
            }
            for r in kept.log
        ],
    }


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when))


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""


def _health_lines(health: dict[str, Any] | None) -> list[str]:
    if health is None:
        return []
    lines = ["", f"Health: {health['status']} (failing streak {health['failing_streak']})"]
    for probe in health["log"]:
        output = _first_line(probe["output"]) or "-"
        lines.append(f"  {probe['start']}  exit {probe['exit_code']:<4} {output}")
    return lines


def render_inspect(info: dict[str, Any]) -> str:
    """The dict of `inspect`, in sections, for a person."""
    out: list[str] = [f"VM: {info['name']}", f"Project: {info['project']}", "=" * 72]
    unit, config, disk = info["unit"], info["config"], info["disk"]
    _section(out, "Status", [
        ("State", info["status"]),
        ("QEMU", info["qemu_status"]),
        ("Started", info["started_at"]),
        ("Restarts", info["restarts"]),
        ("Ports", ", ".join(info["ports"]) or None),
        ("Faults", "; ".join(info.get("faults") or [])),
        ("Systemd unit", f"{unit['name']} ({unit['active_state']}/{unit['sub_state']})"),
        ("Main PID", unit["main_pid"]),
        ("Created", info["created_at"]),
    ])  # fmt: skip
    _section(out, "Configuration", [
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
    ])  # fmt: skip
    _section(out, "Disk", [
        ("Size", disk["size"]),
        ("Instance disk", disk["instance_disk"]),
        ("Base image", disk["base_image"]),
        ("Cloud-init seed", disk["seed"]),
    ])  # fmt: skip
    out += _health_lines(info["health"])
    out += ["", "Networks:", *_network_lines(info["networks"])]
    out += _definition_lines(info)
    ssh, console, logs = info["ssh"], info["console"], info["logs"]
    _section(out, "SSH", [("Connect", ssh["command"]), ("Port", ssh["port"]), ("Key", ssh["key"])])
    _section(out, "Console", [
        ("Attach", f"{console['attach']}  (Ctrl+] detaches)"),
        ("Socket", console["socket"]),
        ("Log", console["log"]),
        ("Login", console["login"]),
        ("Password", console["password"]),
    ])  # fmt: skip
    _section(out, "Logs", [("View", logs["command"]), ("Journal", logs["journal"])])
    return "\n".join(out) + "\n"


def _section(out: list[str], title: str, pairs: list[tuple[str, Any]]) -> None:
    """A titled section of the pairs that have a value (none: no section)."""
    shown = [(k, v) for k, v in pairs if v not in (None, "", [], {})]
    if shown:
        out.append("")
        out.append(f"{title}:")
        out.extend(f"  {key}: {value}" for key, value in shown)


_NETWORK_LABELS = {
    "bridge": "Bridge", "tap": "TAP", "subnet": "Subnet", "address": "IP address", "mac": "MAC",
    "dhcp": "DHCP/DNS", "ssh_port": "SSH port",
}  # fmt: skip


def _network_lines(networks: list[dict[str, Any]]) -> list[str]:
    out = []
    for net in networks:
        out.append(f"  - {net['name']} ({net['mode']}):")
        out.extend(
            f"      {label}: {net[key]}" for key, label in _NETWORK_LABELS.items() if net.get(key)
        )
        out.extend(f"      Port: {port}" for port in net.get("ports") or [])
        if net.get("dns_names"):
            out.append(f"      DNS names: {', '.join(net['dns_names'])}")
    return out


def _definition_lines(info: dict[str, Any]) -> list[str]:
    """Volumes, environment, provisioning, dependencies and healthcheck, where there are any."""
    out: list[str] = []
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
    return out
