"""What the VMs of an `up` need before any starts: images, named volumes, bridge networks."""

from __future__ import annotations

import ipaddress
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

import netcfg
import systemd_dbus
from netcfg.plumbing import HOST, Links
from orchestrator.config.quantities import parse_size
from orchestrator.config.topology import Instance, instances
from orchestrator.guest.disks import create_volume
from orchestrator.guest.images import fetch, is_remote, record_use
from orchestrator.progress import Event, Reporter, Stage, Status, Transfer
from orchestrator.state.identity import SUBNET_VARIABLE, Owner, project_dir
from orchestrator.state.paths import dnsmasq_unit

from .observe import UnitTakenError
from .plan import ImageStep, StepKind, VolumeStep
from .session import Session


async def prepare_images(session: Session, steps: Sequence[ImageStep]) -> dict[str, Path]:
    """Every image of the plan, fetched (in parallel) or found, and verified against its
    checksum: {source: local path}."""
    images: dict[str, Path] = {}
    report = session.report

    async def one(source: str, checksum: str | None) -> None:
        report("", Stage.IMAGE, Status.WORKING, source)
        progress = _in_percent(report, source)
        images[source] = await fetch(source, checksum=checksum, report=progress)
        if is_remote(source):  # for `image ls` (last used) and `image prune` (who uses it)
            record_use(images[source], source, state_dir=session.project.state_dir)
        report("", Stage.IMAGE, Status.DONE, str(images[source]))

    async with trio.open_nursery() as nursery:
        for step in steps:
            nursery.start_soon(one, step.source, step.checksum)
    return images


def _in_percent(report: Reporter, source: str) -> Reporter:
    """A download's Transfer events as steps of `up`: the share done, at most once a second."""
    last = 0.0

    def step(event: Event) -> None:
        nonlocal last
        if isinstance(event, Transfer) and event.total and time.monotonic() - last > 1:
            last = time.monotonic()
            share = 100 * event.done // event.total
            report("", Stage.IMAGE, Status.WORKING, f"{source} {share}%")

    return Reporter(step)


async def prepare_volumes(session: Session, steps: Sequence[VolumeStep]) -> None:
    """The named volumes the plan creates, made (ext4, without root)."""
    for step in steps:
        if step.kind is StepKind.CREATE:
            session.report("", Stage.VOLUME, Status.WORKING, step.name)
            await create_volume(session.paths.volume(step.name), parse_size(step.size), step.name)
            session.report("", Stage.VOLUME, Status.DONE, f"{step.name} ({step.size})")


async def prepare_networks(
    session: Session, used: Sequence[str]
) -> dict[str, netcfg.BridgeNetwork]:
    """The bridge networks named: subnets and addresses allocated (kept across runs), bridge
    and NAT made, dnsmasq running with every member's reservation."""
    if not used:
        return {}
    rootless = session.network_mode == "rootless"
    if not rootless:
        netcfg.require_net_admin()
    links = await session.links()
    subnets = await _allocate_subnets(session, used, links)
    everyone = instances(session.project.model)  # addresses for all VMs of a network
    macs = netcfg.assign_macs(
        session.project.name, [(i.name, n) for i in everyone for n in i.vm.networks]
    )
    networks = {}
    for name in used:
        hosts = _hosts(
            session, name, subnets[name], [i for i in everyone if name in i.vm.networks], macs
        )
        spec = session.project.model.networks[name]
        network = netcfg.BridgeNetwork(
            project=session.project.name,
            name=name,
            subnet=subnets[name],
            directory=session.paths.network_dir(name),
            nat=spec.nat,
            upstream=tuple(spec.upstream_dns),
            rootless=rootless,
        )
        networks[name] = network
        session.report("", Stage.NETWORK, Status.WORKING, f"{name} {subnets[name]}")
        starter = _dnsmasq_starter(session, name, subnets[name])
        await netcfg.ensure_network(network, hosts, starter, plumbing=links)
        session.report(
            "", Stage.NETWORK, Status.DONE, f"{name} {subnets[name]} on {network.bridge}"
        )
    session.store.save()
    return networks


async def _allocate_subnets(
    session: Session, used: Sequence[str], links: Links
) -> dict[str, ipaddress.IPv4Network]:
    """A subnet for each network: the one it had, the file's, or a free /24 that neither the
    host's interfaces (nor, rootless, the user's namespace's) nor another project use;
    claimed across projects, kept in the state."""
    model, state, project = session.project.model, session.state, session.project.name
    own_bridges = [netcfg.bridge_name(project, n) for n in model.networks]
    host = await netcfg.host_subnets(exclude=own_bridges)  # (reading needs no privilege)
    if links is not HOST:
        host += await netcfg.host_subnets(exclude=own_bridges, plumbing=links)
    with netcfg.Registry().claims() as claims:
        avoid = host + [ipaddress.IPv4Network(s) for s in claims.subnets_of_others(project)]
        previous = {n: ipaddress.IPv4Network(s) for n, s in state.subnets.items()}
        subnets = netcfg.allocate_subnets(
            [netcfg.SubnetRequest(n, model.networks[n].subnet) for n in used],
            previous=previous,
            avoid=avoid,
        )
        for name, subnet in subnets.items():
            claims.subnets[f"{project}/{name}"] = str(subnet)
            state.subnets[name] = str(subnet)
    return subnets


def _hosts(
    session: Session,
    network: str,
    subnet: ipaddress.IPv4Network,
    members: Sequence[Instance],
    macs: Mapping[tuple[str, str], str],
) -> list[netcfg.Host]:
    """The DHCP reservations of a network's members (addresses kept across runs)."""
    state = session.state
    previous = {vm: ipaddress.IPv4Address(a) for vm, a in state.addresses.get(network, {}).items()}
    addresses = netcfg.assign_addresses(
        subnet, [(i.name, i.vm.networks[network].ipv4_address) for i in members], previous=previous
    )
    state.addresses[network] = {vm: str(a) for vm, a in addresses.items()}
    return [
        netcfg.Host(
            i.name, i.vm.networks[network].mac_address or macs[(i.name, network)], addresses[i.name]
        )
        for i in members
    ]


def _dnsmasq_starter(
    session: Session, network: str, subnet: ipaddress.IPv4Network
) -> netcfg.network.StartDnsmasq:
    unit = dnsmasq_unit(session.project.name, network)
    manager = session.manager
    earlier = session.units.networks.get(network)  # maybe under an earlier version's name

    async def start(argv: list[str], changed: bool) -> None:
        status = await manager.status(unit)
        other = session.taken(status, "dnsmasq", network)
        if other is not None:  # checked first: another's active dnsmasq is no DHCP of ours
            raise UnitTakenError(f"{unit} is taken by {other}; rename the network or the project")
        if status.is_active and not changed:
            return
        for old in dict.fromkeys([unit, *([earlier.name] if earlier else [])]):
            old_status = status if old == unit else await manager.status(old)
            if old_status.exists:
                await manager.stop(old)
                if old_status.is_failed:
                    await manager.reset_failed(old)
        binary = shutil.which(argv[0]) or f"/usr/sbin/{argv[0]}"
        command = [binary, *argv[1:]]
        if session.namespace is not None:  # rootless: in the user's namespace
            command = [sys.executable, "-m", "netcfg", "enter", session.namespace.token(), "--",
                       *command]  # fmt: skip
        await manager.start(
            systemd_dbus.TransientUnit(
                unit,
                command,
                description=Owner(
                    "dnsmasq", session.project.name, network, project_dir(session.project)
                ).describe(),
                environment={SUBNET_VARIABLE: str(subnet)},  # for a state file that is lost
            ),
            settle=0.5,
        )

    return start
