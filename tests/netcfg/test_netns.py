"""netcfg for real, inside network namespaces the test makes and removes.

Namespace "server" holds the bridge, the TAPs and dnsmasq; namespace "client" is a host on
the bridge through a veth pair, with the MAC we reserved for it: it must get its reserved
address by DHCP and resolve another VM's name through dnsmasq. Only private addresses,
only inside namespaces we made: nothing leaves the machine.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from netcfg import (
    BridgeNetwork,
    Host,
    NeedsNetAdminError,
    attach_tap,
    detach_tap,
    ensure_network,
    has_net_admin,
    host_subnets,
    link_present,
    mac_address,
    network_status,
    partition_drops,
    partition_table,
    remove_network,
    set_hosts,
    set_partition_drops,
)
from netcfg.plumbing import HostLinks

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("dnsmasq") is None or shutil.which("busybox") is None,
    reason="needs root, dnsmasq and busybox (udhcpc)",
)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture
def readable() -> Iterator[Path]:
    """A directory any user can enter (pytest's tmp_path is private to root): dnsmasq reads
    its files there after dropping to an unprivileged user."""
    path = Path(tempfile.mkdtemp(prefix="qc-net-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    server, client = f"qcn-{tag}", f"qcc-{tag}"
    sh("ip", "netns", "add", server)
    sh("ip", "netns", "add", client)
    sh("ip", "-n", server, "link", "set", "lo", "up")
    sh("ip", "-n", client, "link", "set", "lo", "up")
    yield server, client
    sh("ip", "netns", "del", client, check=False)
    sh("ip", "netns", "del", server, check=False)


class Dnsmasq:
    """Starts dnsmasq in a namespace, as the runtime's systemd unit would on the host."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self, argv: list[str], config_changed: bool) -> None:
        if self.process is not None and self.process.poll() is None and not config_changed:
            return
        await self.stop()
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.starts += 1
        await trio.sleep(0.3)
        assert self.process.poll() is None, "dnsmasq exited at once"

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


async def test_bridge_dhcp_reservation_and_dns(
    namespaces: tuple[str, str], tmp_path: Path, readable: Path
) -> None:
    server, client = namespaces
    network = BridgeNetwork(
        project="demo",
        name="lan",
        subnet=ipaddress.IPv4Network("10.231.7.0/24"),
        directory=readable / "networks" / "lan",  # made by ensure_network, readable to dnsmasq
    )
    client_mac = mac_address("demo", "client", "lan")
    hosts = [
        Host("client", client_mac, ipaddress.IPv4Address("10.231.7.10")),
        Host("web", mac_address("demo", "web", "lan"), ipaddress.IPv4Address("10.231.7.11")),
    ]
    dns = Dnsmasq(server)
    try:
        await ensure_network(network, hosts, dns.start, plumbing=HostLinks(server))
        await ensure_network(network, hosts, dns.start, plumbing=HostLinks(server))  # idempotent
        assert dns.starts == 1  # the same config: no restart
        assert dns.process is not None  # it dropped root once it had bound its sockets
        uid = int(Path(f"/proc/{dns.process.pid}/status").read_text().split("Uid:")[1].split()[0])
        assert uid != 0
        assert stat.S_IMODE(network.directory.stat().st_mode) == 0o755
        assert await link_present(network.bridge, plumbing=HostLinks(server))
        addr = sh("ip", "-n", server, "-br", "addr", "show", network.bridge).stdout
        assert "10.231.7.1/24" in addr
        alias = sh("ip", "-n", server, "link", "show", network.bridge).stdout
        assert "alias qemu-compose demo/lan" in alias

        # a TAP for a VM, owned by a user, on the bridge
        tap = await attach_tap(network, "web", owner_uid=1000, plumbing=HostLinks(server))
        details = sh("ip", "-n", server, "-d", "link", "show", tap).stdout
        assert f"master {network.bridge}" in details
        try:
            owner = pwd.getpwuid(1000).pw_name  # ip prints the name where there is one
        except KeyError:
            owner = "1000"
        assert f"tun type tap pi off vnet_hdr on persist on user {owner} " in details
        assert "alias qemu-compose demo/web/lan" in details
        assert (await network_status(network, plumbing=HostLinks(server))).taps == (tap,)
        subnets = await host_subnets(plumbing=HostLinks(server))
        assert ipaddress.IPv4Network("10.231.7.0/24") in subnets
        assert ipaddress.IPv4Network("10.231.7.0/24") not in await host_subnets(
            exclude=[network.bridge], plumbing=HostLinks(server)
        )

        # the client: a veth whose MAC we reserved, in its own namespace
        sh(
            "ip",
            "link",
            "add",
            "qcv-c",
            "netns",
            client,
            "type",
            "veth",
            "peer",
            "name",
            "qcv-s",
            "netns",
            server,
        )
        sh("ip", "-n", client, "link", "set", "qcv-c", "address", client_mac, "up")
        sh("ip", "-n", server, "link", "set", "qcv-s", "master", network.bridge, "up")
        script = tmp_path / "udhcpc.sh"
        script.write_text(
            '#!/bin/sh\ncase "$1" in bound|renew)\n'
            '  ip addr add "$ip/$mask" dev "$interface"\n'
            f'  echo "$ip $dns $domain" > {tmp_path}/lease;;\nesac\n'
        )
        script.chmod(0o755)
        udhcpc = ["busybox", "udhcpc", "-i", "qcv-c", "-n", "-q", "-f", "-t", "10", "-T", "1"]
        lease = sh("ip", "netns", "exec", client, *udhcpc, "-s", str(script))
        assert lease.returncode == 0
        assert (tmp_path / "lease").read_text().split() == ["10.231.7.10", "10.231.7.1", "demo"]

        def resolve(name: str) -> list[str]:
            out = sh("ip", "netns", "exec", client, sys.executable, "-m", "tests.support.dns",
                     "10.231.7.1", name)  # fmt: skip
            return out.stdout.split()

        assert resolve("web") == ["NOERROR", "10.231.7.11"]
        assert resolve("web.demo") == ["NOERROR", "10.231.7.11"]
        assert resolve("client.demo") == ["NOERROR", "10.231.7.10"]
        assert resolve("nothing.demo")[0] == "NXDOMAIN"
        assert resolve("example.org")[0] in ("REFUSED", "NXDOMAIN", "SERVFAIL")  # not forwarded

        # a VM joins: dnsmasq learns its name without a restart
        set_hosts(
            network,
            [
                *hosts,
                Host("db", mac_address("demo", "db", "lan"), ipaddress.IPv4Address("10.231.7.12")),
            ],
        )
        with trio.fail_after(10):
            while resolve("db") != ["NOERROR", "10.231.7.12"]:
                await trio.sleep(0.1)
        assert dns.starts == 1

        assert await detach_tap(network, "web", plumbing=HostLinks(server))
        assert not await link_present(tap, plumbing=HostLinks(server))
        await attach_tap(network, "web", plumbing=HostLinks(server))
        await remove_network(network, dns.stop, plumbing=HostLinks(server))
        assert not await link_present(network.bridge, plumbing=HostLinks(server))
        assert not await link_present(tap, plumbing=HostLinks(server))
        assert not network.directory.exists()
        assert dns.process is not None
        assert dns.process.poll() is not None
    finally:
        await dns.stop()


async def test_nat_rules_in_a_namespace(namespaces: tuple[str, str], tmp_path: Path) -> None:
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    server, _ = namespaces
    network = BridgeNetwork(
        project="demo", name="out", subnet=ipaddress.IPv4Network("10.231.8.0/24"),
        directory=tmp_path / "out", nat=True,
    )  # fmt: skip
    dns = Dnsmasq(server)
    try:
        await ensure_network(network, [], dns.start, plumbing=HostLinks(server))
        rules = sh("ip", "netns", "exec", server, "nft", "list", "ruleset").stdout
        assert f'ip saddr 10.231.8.0/24 oifname != "{network.bridge}" masquerade' in rules
        assert "dhcp-option=option:router,10.231.8.1" in network.dnsmasq().config_file.read_text()
        await ensure_network(network, [], dns.start, plumbing=HostLinks(server))  # idempotent
        assert (
            sh("ip", "netns", "exec", server, "nft", "list", "ruleset").stdout.count("masquerade")
            == 1
        )
        await remove_network(network, dns.stop, plumbing=HostLinks(server))
        assert (
            "masquerade" not in sh("ip", "netns", "exec", server, "nft", "list", "ruleset").stdout
        )
    finally:
        await dns.stop()


def test_without_cap_net_admin_nothing_is_touched(tmp_path: Path) -> None:
    """setpriv drops the capability: the error names the fix, and no link is made."""
    assert has_net_admin()
    child = (
        "import trio, ipaddress, pathlib\n"
        "from netcfg import BridgeNetwork, ensure_network, has_net_admin, NeedsNetAdminError\n"
        "assert not has_net_admin()\n"
        "subnet = ipaddress.IPv4Network('10.231.9.0/24')\n"
        "net = BridgeNetwork('demo', 'nocap', subnet, pathlib.Path('x'))\n"
        "async def start(argv, changed): raise AssertionError('dnsmasq must not start')\n"
        "try:\n"
        "    trio.run(ensure_network, net, [], start)\n"
        "except NeedsNetAdminError as err:\n"
        "    print(err)\n"
    )
    result = sh("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                sys.executable, "-c", child)  # fmt: skip
    assert "need the CAP_NET_ADMIN capability" in result.stdout
    assert "sudo qemu-compose up" in result.stdout
    assert "setcap cap_net_admin+ep" in result.stdout
    assert not Path("x").exists()
    assert issubclass(NeedsNetAdminError, Exception)


def _ping(netns: str, address: str) -> bool:
    """One quick ping from inside ``netns`` (busybox: iputils need not be installed)."""
    return sh("ip", "netns", "exec", netns, "busybox", "ping", "-c", "1", "-W", "1", address,
              check=False).returncode == 0  # fmt: skip


def _received(netns: str) -> int:
    counter = "/sys/class/net/eth0/statistics/rx_packets"
    return int(sh("ip", "netns", "exec", netns, "cat", counter).stdout)


async def test_partition_drops_between_bridge_ports_one_way_and_healed(
    namespaces: tuple[str, str],
) -> None:
    """Two hosts on a bridge (veth ports, as TAPs are): the project's bridge-family table
    drops what one port forwards to the other, in one direction or both, and nothing else."""
    server, client = namespaces
    other = f"{client}-b"
    sh("ip", "netns", "add", other)
    try:
        sh("ip", "-n", server, "link", "add", "br-t", "type", "bridge")
        sh("ip", "-n", server, "link", "set", "br-t", "up")
        for i, (ns, port) in enumerate([(client, "pa"), (other, "pb")], start=1):
            sh("ip", "-n", server, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", ns)  # fmt: skip
            sh("ip", "-n", server, "link", "set", port, "master", "br-t", "up")
            sh("ip", "-n", ns, "addr", "add", f"10.231.9.{i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        table = partition_table("demo")
        assert _ping(client, "10.231.9.2")

        await set_partition_drops(table, [("pa", "pb"), ("pb", "pa")], plumbing=HostLinks(server))
        assert await partition_drops(table, plumbing=HostLinks(server)) == [
            ("pa", "pb"),
            ("pb", "pa"),
        ]
        assert not _ping(client, "10.231.9.2")
        assert not _ping(other, "10.231.9.1")

        # one way: a's frames to b are dropped; b's ping of a gets no reply either (the
        # reply goes a -> b), but b's frames do reach a: a's counters say so
        await set_partition_drops(table, [("pa", "pb")], plumbing=HostLinks(server))
        before = _received(client)
        assert not _ping(other, "10.231.9.1")
        after = _received(client)
        assert after > before

        await set_partition_drops(table, [], plumbing=HostLinks(server))  # healed: no table left
        assert await partition_drops(table, plumbing=HostLinks(server)) is None
        assert _ping(client, "10.231.9.2")
        await set_partition_drops(
            table, [], plumbing=HostLinks(server)
        )  # healing twice is no error
    finally:
        sh("ip", "netns", "del", other, check=False)
