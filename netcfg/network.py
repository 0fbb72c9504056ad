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
from pathlib import Path

import msgspec

from . import agent, dnsmasq, names
from .dnsmasq import DnsmasqNetwork, Host
from .errors import PlumbingError
from .ipam import gateway
from .plumbing import HOST, Links
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
    # in the user's own namespace (plumbing: an agent), which has no way out: there VMs
    # reach the outside through their user-mode NIC, ``nat`` or not
    rootless: bool = False

    @property
    def bridge(self) -> str:
        return names.bridge_name(self.project, self.name)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return gateway(self.subnet)

    def dnsmasq(self) -> DnsmasqNetwork:
        # in the user's namespace dnsmasq is its root, the user: it may change to no other
        # user, nor set its groups (an unprivileged user namespace denies setgroups)
        user, group = ("root", "") if self.rootless else _unprivileged()
        return DnsmasqNetwork(
            bridge=self.bridge,
            subnet=self.subnet,
            gateway=self.gateway,
            domain=self.project,
            directory=self.directory,
            upstream=tuple(self.upstream),
            router=self.nat and not self.rootless,
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
    plumbing: Links = HOST,
) -> None:
    """Bridge up with its gateway address, NAT as asked, dnsmasq serving ``hosts``."""
    address = ipaddress.IPv4Interface(f"{network.gateway}/{network.subnet.prefixlen}")
    alias = names.bridge_alias(network.project, network.name)
    await plumbing.run(agent.EnsureBridge(network.bridge, str(address), alias))
    if network.nat and not network.rootless:
        await plumbing.run(agent.EnableNat(network.bridge, str(network.subnet)))
    else:
        with contextlib.suppress(PlumbingError):  # no table: nothing to undo
            await plumbing.run(agent.DisableNat(network.bridge))
    config = network.dnsmasq()
    readable_dir(network.directory)
    set_hosts(network, hosts)
    changed = _write_if_changed(config.config_file, dnsmasq.render_config(config))
    await start_dnsmasq(dnsmasq.argv(config), changed)


async def attach_tap(
    network: BridgeNetwork, vm: str, *, owner_uid: int | None = None, plumbing: Links = HOST
) -> str:
    """The VM's TAP on this network, created if needed, owned by ``owner_uid`` (default: this
    user; in the user's namespace, its root, which is the user); returns its name."""
    tap = names.tap_name(network.project, vm, network.name)
    uid = owner_uid if owner_uid is not None else 0 if network.rootless else os.getuid()
    alias = names.tap_alias(network.project, vm, network.name)
    await plumbing.run(agent.EnsureTap(tap, network.bridge, alias, uid))
    return tap


async def detach_tap(network: BridgeNetwork, vm: str, *, plumbing: Links = HOST) -> bool:
    tap = names.tap_name(network.project, vm, network.name)
    return bool(await plumbing.run(agent.DeleteLink(tap)))


async def remove_network(
    network: BridgeNetwork, stop_dnsmasq: StopDnsmasq, *, plumbing: Links = HOST
) -> None:
    """Stop dnsmasq, remove NAT, the network's TAPs and its bridge, delete its files."""
    await stop_dnsmasq()
    with contextlib.suppress(PlumbingError):
        await plumbing.run(agent.DisableNat(network.bridge))
    for tap in await tap_names(network, plumbing=plumbing):
        await plumbing.run(agent.DeleteLink(tap))
    await plumbing.run(agent.DeleteLink(network.bridge))
    shutil.rmtree(network.directory, ignore_errors=True)


async def tap_names(network: BridgeNetwork, *, plumbing: Links = HOST) -> list[str]:
    """The TAPs of this network that exist now (found by their alias)."""
    prefix = f"qemu-compose {network.project}/"
    found: dict[str, str] = await plumbing.run(agent.LinksByAlias(prefix))
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


async def network_status(network: BridgeNetwork, *, plumbing: Links = HOST) -> NetworkStatus:
    return NetworkStatus(
        name=network.name,
        bridge=network.bridge,
        subnet=network.subnet,
        bridge_exists=bool(await plumbing.run(agent.LinkExists(network.bridge))),
        taps=tuple(await tap_names(network, plumbing=plumbing)),
    )


async def link_present(name: str, *, plumbing: Links = HOST) -> bool:
    return bool(await plumbing.run(agent.LinkExists(name)))


async def host_subnets(
    *, exclude: Sequence[str] = (), plumbing: Links = HOST
) -> list[ipaddress.IPv4Network]:
    """IPv4 subnets on this host's interfaces, but those of the links named in ``exclude``."""
    found = await plumbing.run(agent.Subnets(list(exclude)))
    return [ipaddress.IPv4Network(n) for n in found]


async def set_partition_drops(
    table: str, drops: Sequence[tuple[str, str]], *, plumbing: Links = HOST
) -> None:
    """The project's partitions: frames from the first TAP of each pair to the second dropped
    on the bridges (``table``, bridge family; removed when there is nothing to drop)."""
    await plumbing.run(agent.SetDrops(table, list(drops)))


async def partition_drops(table: str, *, plumbing: Links = HOST) -> list[tuple[str, str]] | None:
    """What ``table`` drops now (None: no such table)."""
    found = await plumbing.run(agent.DropsOf(table))
    return None if found is None else [(a, b) for a, b in found]
