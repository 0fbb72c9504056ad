"""One bridge network of a project, made real or removed: bridge, NAT, dnsmasq, TAPs.

``ensure_network`` is idempotent: run it on every ``up``. dnsmasq is started by a function
the caller passes (the runtime runs it as a systemd unit; netcfg knows nothing of systemd).
VMs join and leave with ``set_hosts``, which dnsmasq picks up without a restart.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
import pwd
import shutil
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import msgspec
import trio

from . import dnsmasq, links, names
from .dnsmasq import DnsmasqNetwork, Host
from .errors import PlumbingError
from .ipam import gateway
from .registry import write_whole

# start_dnsmasq(argv, config_changed): start dnsmasq with argv if it is not running, or
# restart it if config_changed.
StartDnsmasq = Callable[[list[str], bool], Awaitable[None]]
StopDnsmasq = Callable[[], Awaitable[None]]


class BridgeNetwork(msgspec.Struct, frozen=True):
    project: str
    name: str
    subnet: ipaddress.IPv4Network
    directory: Path  # dnsmasq's files for this network
    nat: bool = False
    upstream: Sequence[str] = ()

    @property
    def bridge(self) -> str:
        return names.bridge_name(self.project, self.name)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return gateway(self.subnet)

    def dnsmasq(self) -> DnsmasqNetwork:
        user, group = _unprivileged()
        return DnsmasqNetwork(
            bridge=self.bridge,
            subnet=self.subnet,
            gateway=self.gateway,
            domain=self.project,
            directory=self.directory,
            upstream=tuple(self.upstream),
            router=self.nat,
            user=user,
            group=group,
        )


def _unprivileged() -> tuple[str, str | None]:
    """Who dnsmasq runs as once its sockets are bound (user, group): as root, an unprivileged
    user of its own (Debian's ``dnsmasq``, else ``nobody``); otherwise the user it was
    started as."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name, None
    group = "nogroup" if _group_exists("nogroup") else None
    for user in ("dnsmasq", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user, group
    return "nobody", group


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def readable_dir(path: Path) -> None:
    """``path`` and its missing parents, 0755 whatever the umask: dnsmasq reads them once it
    has dropped its privileges (only names and addresses are there, nothing secret)."""
    missing = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        directory.mkdir(mode=0o755, exist_ok=True)
        directory.chmod(0o755)


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    write_whole(path, text.encode(), mode=0o644)
    return True


def set_hosts(network: BridgeNetwork, hosts: Sequence[Host]) -> None:
    """Make the reservations and names dnsmasq serves exactly ``hosts`` (one file per VM)."""
    config = network.dnsmasq()
    wanted = {h.name: h for h in hosts}
    for directory, render in (
        (config.dhcp_hosts_dir, dnsmasq.dhcp_host_line),
        (config.hosts_dir, lambda h: dnsmasq.hosts_line(h, config.domain)),
    ):
        readable_dir(directory)
        for stale in directory.iterdir():
            if stale.name not in wanted:
                stale.unlink()
        for name, host in wanted.items():
            _write_if_changed(directory / name, render(host))


async def ensure_network(
    network: BridgeNetwork,
    hosts: Sequence[Host],
    start_dnsmasq: StartDnsmasq,
    *,
    netns: str | None = None,
) -> None:
    """Bridge up with its gateway address, NAT as asked, dnsmasq serving ``hosts``."""
    links.require_net_admin()
    address = ipaddress.IPv4Interface(f"{network.gateway}/{network.subnet.prefixlen}")
    await trio.to_thread.run_sync(
        lambda: links.ensure_bridge(
            network.bridge, address, names.bridge_alias(network.project, network.name), netns=netns
        )
    )
    if network.nat:
        await trio.to_thread.run_sync(
            lambda: links.enable_nat(network.bridge, network.subnet, netns=netns)
        )
    else:
        with contextlib.suppress(PlumbingError):  # no table: nothing to undo
            await trio.to_thread.run_sync(lambda: links.disable_nat(network.bridge, netns=netns))
    config = network.dnsmasq()
    readable_dir(network.directory)
    set_hosts(network, hosts)
    changed = _write_if_changed(config.config_file, dnsmasq.render_config(config))
    await start_dnsmasq(dnsmasq.argv(config), changed)


async def attach_tap(
    network: BridgeNetwork, vm: str, *, owner_uid: int | None = None, netns: str | None = None
) -> str:
    """The VM's TAP on this network, created if needed; returns its name."""
    links.require_net_admin()
    tap = names.tap_name(network.project, vm, network.name)
    uid = os.getuid() if owner_uid is None else owner_uid
    alias = names.tap_alias(network.project, vm, network.name)
    await trio.to_thread.run_sync(
        lambda: links.ensure_tap(tap, network.bridge, alias, owner_uid=uid, netns=netns)
    )
    return tap


async def detach_tap(network: BridgeNetwork, vm: str, *, netns: str | None = None) -> bool:
    tap = names.tap_name(network.project, vm, network.name)
    return await trio.to_thread.run_sync(lambda: links.delete_link(tap, netns=netns))


async def remove_network(
    network: BridgeNetwork, stop_dnsmasq: StopDnsmasq, *, netns: str | None = None
) -> None:
    """Stop dnsmasq, remove NAT, the network's TAPs and its bridge, delete its files."""
    await stop_dnsmasq()
    with contextlib.suppress(PlumbingError):
        await trio.to_thread.run_sync(lambda: links.disable_nat(network.bridge, netns=netns))
    for tap in await trio.to_thread.run_sync(lambda: tap_names(network, netns=netns)):
        await trio.to_thread.run_sync(partial(links.delete_link, tap, netns=netns))
    await trio.to_thread.run_sync(lambda: links.delete_link(network.bridge, netns=netns))
    shutil.rmtree(network.directory, ignore_errors=True)


def tap_names(network: BridgeNetwork, *, netns: str | None = None) -> list[str]:
    """The TAPs of this network that exist now (found by their alias)."""
    prefix = f"qemu-compose {network.project}/"
    found = links.links_by_alias(prefix, netns=netns)
    return sorted(
        n
        for n, alias in found.items()
        if alias.endswith(f"/{network.name}") and alias.count("/") == 2
    )


class NetworkStatus(msgspec.Struct, frozen=True):
    """What `network ls` shows of one network."""

    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    bridge_exists: bool
    taps: tuple[str, ...]


async def network_status(network: BridgeNetwork, *, netns: str | None = None) -> NetworkStatus:
    def read() -> NetworkStatus:
        return NetworkStatus(
            name=network.name,
            bridge=network.bridge,
            subnet=network.subnet,
            bridge_exists=links.link_exists(network.bridge, netns=netns),
            taps=tuple(tap_names(network, netns=netns)),
        )

    return await trio.to_thread.run_sync(read)


async def link_present(name: str, *, netns: str | None = None) -> bool:
    return await trio.to_thread.run_sync(partial(links.link_exists, name, netns=netns))


async def host_subnets(
    *, exclude: Sequence[str] = (), netns: str | None = None
) -> list[ipaddress.IPv4Network]:
    """IPv4 subnets on this host's interfaces, but those of the links named in ``exclude``."""
    return await trio.to_thread.run_sync(partial(links.host_subnets, exclude=exclude, netns=netns))


async def set_partition_drops(
    table: str, drops: Sequence[tuple[str, str]], *, netns: str | None = None
) -> None:
    """The project's partitions: frames from the first TAP of each pair to the second dropped
    on the bridges (``table``, bridge family; removed when there is nothing to drop)."""
    links.require_net_admin()
    await trio.to_thread.run_sync(partial(links.set_drops, table, list(drops), netns=netns))


async def partition_drops(table: str, *, netns: str | None = None) -> list[tuple[str, str]] | None:
    """What ``table`` drops now (None: no such table)."""
    return await trio.to_thread.run_sync(partial(links.drops_of, table, netns=netns))
