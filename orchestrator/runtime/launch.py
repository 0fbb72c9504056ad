"""How one VM is launched, decided from its definition and the facts `up` found. Pure.

`vm_launch` turns an instance and its facts (ports claimed, TAPs made, the accelerator, the
project's key and password, the provision scripts' text) into everything the start needs:
QEMU's command line, the guest's cloud-init configuration (None: no OS to configure) and the
transient unit that runs it. It is golden-tested as `qemu_argv` is; the effects of a start
(disks, seed, TAPs, the start job, the state) stay in `up`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

import netcfg
import systemd_dbus
from netcfg import Forward
from netcfg.userns import ENVIRONMENT as NETNS_VARIABLE
from orchestrator.config.model import Vm
from orchestrator.config.quantities import parse_duration
from orchestrator.config.topology import Instance
from orchestrator.guest.accel import Accel
from orchestrator.guest.cloudinit import GuestConfig, Nic, instance_id
from orchestrator.guest.mounts import mount_layout
from orchestrator.guest.qemu_argv import (
    DirectBoot,
    Drive,
    RamFile,
    SharedRam,
    TapNic,
    Uefi,
    UserNic,
    VmLaunch,
    qemu_argv,
)
from orchestrator.state.files import VmState
from orchestrator.state.identity import Owner, state_variable
from orchestrator.state.paths import VmPaths, vm_unit
from orchestrator.supervisor.lifecycle import GIVE_UP_SIGNAL

from .access import guest_user


@dataclass(frozen=True, slots=True)
class LaunchFacts:
    """What a VM's launch depends on besides its definition."""

    project: str
    paths: VmPaths
    accel: Accel
    forwards: Sequence[Forward]  # SSH first, then the published ports
    taps: Mapping[str, str] = field(default_factory=dict)  # network -> TAP device
    volume_paths: Mapping[str, Path] = field(default_factory=dict)  # named volume -> image
    ssh_public_key: str = ""
    password_hash: str = ""
    provision: Sequence[str] = ()  # the steps' scripts, in order
    extra_user_data: Mapping[str, Any] | None = None
    hosts: Sequence[tuple[str, str]] = ()  # (address, VM) of those on its bridge networks
    dns: Mapping[str, str] = field(default_factory=dict)  # network -> its DNS (the gateway)
    qemu: str = "/usr/bin/qemu-system-x86_64"
    python: str = "/usr/bin/python3"  # runs qmp.stopvm, the unit's graceful ExecStop
    project_dir: str = ""  # recorded on the unit: whose VM it is (see state.identity)
    user: str | None = None  # the guest account its disk was made with; None: as the file says
    incoming: bool = False  # it starts from a saved state (see _unit: systemd does not restart it)
    ram: SharedRam | RamFile | None = None  # a warm template's source, or a clone: see VmLaunch
    uefi: Uefi | None = None  # firmware: uefi (OVMF and the VM's variables)
    netns: str | None = None  # rootless: the user's namespace (its token), where its TAPs are
    tap_helper: str | None = None  # and the helper that hands them to QEMU


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    guest: GuestConfig | None  # what the seed ISO says; None: no OS, no seed
    unit: systemd_dbus.TransientUnit
    macs: dict[str, str]  # netdev -> MAC


def qemu_binary() -> str:
    """The QEMU that starts the VMs: the one on PATH, else Debian's."""
    return shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


def grace_period(vm: Vm | None, override: float | None = None) -> float:
    """Seconds a VM gets to power off; none for firmware-only VMs (nothing there to hear it)."""
    if vm is not None and not vm.has_os:
        return 0.0
    if override is not None:
        return override
    return parse_duration(vm.stop_grace_period) if vm is not None else 60.0


def mac_of(project: str, inst: Instance, network: str) -> str:
    """The MAC of a VM's NIC on ``network`` ("" for its user-mode NIC): fixed, else derived."""
    fixed = inst.vm.networks[network].mac_address if network else None
    return fixed or netcfg.mac_address(project, inst.name, network or "user")


def vm_launch(inst: Instance, facts: LaunchFacts) -> Launch:
    vm, name, paths = inst.vm, inst.name, facts.paths
    layout = mount_layout(vm.volumes, facts.volume_paths)
    nics: list[UserNic | TapNic] = [
        UserNic("nic0", mac_of(facts.project, inst, ""), tuple(facts.forwards))
    ]
    guest_nics = [Nic(nics[0].mac, "user")]
    for i, network in enumerate(sorted(vm.networks), start=1):
        mac = mac_of(facts.project, inst, network)
        nics.append(TapNic(f"nic{i}", mac, facts.taps[network], facts.tap_helper))
        guest_nics.append(Nic(nics[-1].mac, "bridge", facts.dns.get(network, "")))
    root = Drive("root", str(paths.disk), "qcow2", "root", bootindex=0) if vm.image else None
    guest = seed = None
    if vm.has_os:
        guest = GuestConfig(
            hostname=vm.hostname or name,
            domain=facts.project,
            user=facts.user or guest_user(vm),
            ssh_public_key=facts.ssh_public_key,
            password_hash=facts.password_hash,
            instance_id=instance_id(facts.project, name),
            mounts=layout.mounts,
            environment=vm.environment,
            provision=facts.provision,
            nics=guest_nics,
            extra_user_data=facts.extra_user_data,
            hosts=facts.hosts,
        )
        seed = Drive("seed", str(paths.seed), "raw", "cidata", read_only=True)
    boot = DirectBoot(vm.boot.kernel, vm.boot.initrd, vm.boot.cmdline) if vm.boot else None
    argv = qemu_argv(
        VmLaunch(
            name=name,
            accel=facts.accel,
            cpus=vm.cpu,
            memory_mib=vm.memory,
            machine=vm.machine,
            console_socket=str(paths.console_socket),
            console_log=str(paths.console_log),
            qmp_supervision=str(paths.qmp_socket),
            qmp_control=str(paths.qmp_control_socket),
            pidfile=str(paths.pidfile),
            drives=tuple(d for d in (root, seed) if d is not None) + layout.drives,
            shares=layout.shares,
            nics=tuple(nics),
            boot=boot,
            qemu=facts.qemu,
            restart_in_place=vm.restart_policy.supervised,  # the supervisor restarts the guest
            incoming=facts.incoming,
            generation_id=vm.warm,
            ram=facts.ram,
            uefi=facts.uefi,
        )
    )
    return Launch(
        argv=argv,
        guest=guest,
        unit=_unit(inst, facts, argv),
        macs={n.netdev: n.mac for n in nics},
    )


def _unit(inst: Instance, facts: LaunchFacts, argv: list[str]) -> systemd_dbus.TransientUnit:
    vm, paths = inst.vm, facts.paths
    grace = grace_period(vm)
    # systemd's own policy is for QEMU crashing; the guest's ends are the supervisor's
    policy = vm.restart_policy
    restart: Literal["no", "on-failure"] = "on-failure" if policy.supervised else "no"
    if facts.incoming:  # started again, it would wait for a state nobody gives it: the guest's
        restart = "no"  # own ends are still the supervisor's; a crashed QEMU waits for `up`
    extra = []
    if restart != "no":  # the supervisor's giving up is final
        extra.append(
            systemd_dbus.ExtraProperty("RestartPreventExitStatus", "(aiai)", ([], [GIVE_UP_SIGNAL]))
        )
    if policy.max_restarts is not None:
        extra.append(systemd_dbus.ExtraProperty("StartLimitBurst", "u", policy.max_restarts))
    stop = [facts.python, "-m", "qmp.stopvm", str(paths.qmp_control_socket)]
    owner = Owner("vm", facts.project, inst.name, facts.project_dir or None)
    return systemd_dbus.TransientUnit(
        vm_unit(facts.project, inst.name),
        argv,
        environment={NETNS_VARIABLE: facts.netns} if facts.netns else {},
        description=owner.describe(),
        working_directory=str(paths.directory),
        exec_stop=[*stop, "--grace", f"{grace:g}"],
        kill_mode="mixed",
        timeout_stop=grace + 15,
        collect_mode="inactive",  # a failed VM stays listed, failed, until reset
        restart=restart,
        restart_sec=2.0 if restart != "no" else None,
        extra=extra,
    )


def recorded(unit: systemd_dbus.TransientUnit, state: VmState) -> systemd_dbus.TransientUnit:
    """The unit, carrying in its Environment what the state file says of its VM: a lost
    state file is rebuilt from the running units."""
    name, _, value = state_variable(state).partition("=")
    return msgspec.structs.replace(unit, environment={**unit.environment, name: value})
