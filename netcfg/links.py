"""Bridges, TAP devices and NAT, over netlink (pyroute2) and nft. Blocking calls, all quick.

Call these from a worker thread (``network`` does): pyroute2 0.9 runs an asyncio loop of its
own inside every call, which cannot be made inside a trio task once trio-asyncio is loaded.

Every function takes ``netns``: the network namespace to act in (None: the process's own),
which is how the tests keep everything they create away from the host. Creating links needs
CAP_NET_ADMIN; ``require_net_admin`` says so, with the fix, before anything is touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyroute2 import IPRoute

from .errors import NeedsNetAdminError, PlumbingError

CAP_NET_ADMIN = 12


def has_net_admin(status_file: Path = Path("/proc/self/status")) -> bool:
    for line in status_file.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def require_net_admin() -> None:
    if has_net_admin():
        return
    python = os.path.realpath(sys.executable)
    raise NeedsNetAdminError(
        "run it as root (`sudo qemu-compose up`), or give this virtualenv's Python the "
        f"capability (`sudo setcap cap_net_admin+ep {python}`: every program it runs gets "
        "it); VMs without networks: use user-mode networking, which needs no privilege"
    )


@contextlib.contextmanager
def _netlink(netns: str | None) -> Iterator[IPRoute]:
    from pyroute2 import IPRoute, NetNS  # imported here: ~130 ms, which `ps` need not pay

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _netlink_error() -> type[Exception]:
    from pyroute2.netlink.exceptions import NetlinkError

    error: type[Exception] = NetlinkError
    return error


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_exists(name: str, *, netns: str | None = None) -> bool:
    with _netlink(netns) as ipr:
        return _index(ipr, name) is not None


def ensure_bridge(
    name: str, address: ipaddress.IPv4Interface, alias: str, *, netns: str | None = None
) -> bool:
    """Make the bridge exist, with this address, up; True if anything had to change."""
    changed = False
    try:
        with _netlink(netns) as ipr:
            index = _index(ipr, name)
            if index is None:
                ipr.link("add", ifname=name, kind="bridge")
                index = _index(ipr, name)
                changed = True
            assert index is not None
            have = {
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=index, family=2)
            }
            if (str(address.ip), address.network.prefixlen) not in have:
                ipr.addr(
                    "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
                )
                changed = True
            ipr.link("set", index=index, state="up", ifalias=alias)
    except _netlink_error() as err:
        raise PlumbingError(f"bridge {name}: {err}") from err
    return changed


def ensure_tap(
    name: str, bridge: str, alias: str, *, owner_uid: int, netns: str | None = None
) -> bool:
    """A persistent TAP owned by ``owner_uid`` (so QEMU can open it unprivileged), on the bridge."""
    changed = False
    try:
        with _netlink(netns) as ipr:
            master = _index(ipr, bridge)
            if master is None:
                raise PlumbingError(f"TAP {name}: the bridge {bridge} does not exist")
            index = _index(ipr, name)
            if index is None:
                ipr.link(
                    "add",
                    ifname=name,
                    kind="tuntap",
                    mode="tap",
                    uid=owner_uid,
                    ifr={"no_pi": True, "vnet_hdr": True},
                )
                index = _index(ipr, name)
                changed = True
            assert index is not None
            ipr.link("set", index=index, master=master, state="up", ifalias=alias)
    except _netlink_error() as err:
        raise PlumbingError(f"TAP {name}: {err}") from err
    return changed


def delete_link(name: str, *, netns: str | None = None) -> bool:
    """Remove a link if it exists; True if it did."""
    try:
        with _netlink(netns) as ipr:
            index = _index(ipr, name)
            if index is None:
                return False
            ipr.link("del", index=index)
            return True
    except _netlink_error() as err:
        raise PlumbingError(f"{name}: {err}") from err


def links_by_alias(prefix: str, *, netns: str | None = None) -> dict[str, str]:
    """{name: alias} of the links whose alias starts with ``prefix``."""
    with _netlink(netns) as ipr:
        found = {}
        for link in ipr.get_links():
            alias = link.get_attr("IFLA_IFALIAS")
            if alias and alias.startswith(prefix):
                found[link.get_attr("IFLA_IFNAME")] = alias
        return found


def host_subnets(
    *, exclude: Iterable[str] = (), netns: str | None = None
) -> list[ipaddress.IPv4Network]:
    """IPv4 subnets on this host's interfaces (but those named in ``exclude``)."""
    skip = set(exclude)
    found = []
    with _netlink(netns) as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr(family=2):
            if names.get(addr["index"]) in skip:
                continue
            found.append(
                ipaddress.IPv4Network(
                    f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False
                )
            )
    return found


def _nft(script: str, netns: str | None) -> None:
    argv = ["nft", "-f", "-"]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    result = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PlumbingError(f"nft: {result.stderr.strip()}")


def nat_table(bridge: str) -> str:
    return f"qemu-compose-{bridge}"


def enable_nat(bridge: str, subnet: ipaddress.IPv4Network, *, netns: str | None = None) -> None:
    """Masquerade the network's traffic leaving through other interfaces; forward it."""
    table = nat_table(bridge)
    _nft(
        f"table ip {table}\ndelete table ip {table}\n"
        f"table ip {table} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat;\n"
        f'    ip saddr {subnet} oifname != "{bridge}" masquerade\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter;\n"
        f'    iifname "{bridge}" accept\n'
        f'    oifname "{bridge}" ct state established,related accept\n'
        "  }\n"
        "}\n",
        netns,
    )
    forwarding = ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]
    if netns:
        forwarding = ["ip", "netns", "exec", netns, *forwarding]
    subprocess.run(forwarding, check=True, capture_output=True)


def disable_nat(bridge: str, *, netns: str | None = None) -> None:
    table = nat_table(bridge)
    _nft(f"table ip {table}\ndelete table ip {table}\n", netns)


def set_drops(table: str, drops: Iterable[tuple[str, str]], *, netns: str | None = None) -> None:
    """Make ``table`` (bridge family) drop every frame a bridge forwards from the first TAP of
    a pair to the second, and nothing else; no pairs: no table. One nft transaction: the old
    rules and the new are never both, nor neither, in force."""
    script = f"table bridge {table}\ndelete table bridge {table}\n"
    rules = "".join(f'    iifname "{a}" oifname "{b}" drop\n' for a, b in drops)
    if rules:
        script += (
            f"table bridge {table} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"{rules}"
            "  }\n"
            "}\n"
        )
    _nft(script, netns)


def drops_of(table: str, *, netns: str | None = None) -> list[tuple[str, str]] | None:
    """The (from, to) TAP pairs ``table`` drops now; None when there is no such table."""
    argv = ["nft", "-j", "list", "table", "bridge", table]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    pairs = []
    for item in json.loads(result.stdout).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        names = {}
        for match in rule.get("expr", []):
            key = match.get("match", {}).get("left", {}).get("meta", {}).get("key")
            if key in ("iifname", "oifname"):
                names[key] = match["match"]["right"]
        if len(names) == 2:
            pairs.append((names["iifname"], names["oifname"]))
    return pairs
