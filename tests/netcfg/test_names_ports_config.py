"""Interface names, MACs, host ports, QEMU's user netdev and dnsmasq's configuration."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from netcfg import (
    Claims,
    DnsmasqNetwork,
    Forward,
    Host,
    PortInUseError,
    Registry,
    assign_macs,
    bridge_name,
    choose_port,
    mac_address,
    port_is_free,
    render_config,
    tap_name,
    user_netdev,
)
from netcfg.dnsmasq import argv, dhcp_host_line, hosts_line


def test_interface_names_fit_and_are_stable_and_distinct() -> None:
    names = {
        bridge_name("demo", "lan"),
        bridge_name("demo", "wan"),
        bridge_name("other", "lan"),
        tap_name("demo", "web", "lan"),
        tap_name("demo", "web", "wan"),
        tap_name("demo", "db", "lan"),
        tap_name("a" * 48, "b" * 48, "c" * 48),
    }
    assert len(names) == 7
    assert all(len(n) <= 15 for n in names)
    assert bridge_name("demo", "lan") == bridge_name("demo", "lan")
    assert bridge_name("demo", "lan").startswith("qcb-")
    assert tap_name("demo", "web", "lan").startswith("qct-")


def test_macs_are_locally_administered_unicast_and_stable() -> None:
    mac = mac_address("demo", "web", "lan")
    assert mac == mac_address("demo", "web", "lan")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10  # locally administered
    assert not first & 0b01  # unicast
    assert len(mac.split(":")) == 6


def test_assign_macs_is_independent_of_order() -> None:
    nics = [(f"vm{i}", "lan") for i in range(3000)]
    macs = assign_macs("demo", nics)
    assert len(set(macs.values())) == 3000
    assert macs == assign_macs("demo", reversed(nics))


def test_assign_macs_resolves_collisions() -> None:
    def clashing(project: str, vm: str, network: str, salt: int) -> str:
        return mac_address(project, "same", network, salt)  # every VM hashes alike

    macs = assign_macs("demo", [("a", "lan"), ("b", "lan"), ("c", "lan")], clashing)
    assert len(set(macs.values())) == 3
    assert macs[("a", "lan")] == mac_address("demo", "same", "lan", 0)
    assert macs[("c", "lan")] == mac_address("demo", "same", "lan", 2)


def test_choose_port_honours_explicit_and_scans_from_the_base() -> None:
    busy = {2222, 2223}
    assert choose_port("web", None, is_free=lambda p: p not in busy) == 2224
    assert choose_port("web", None, taken={2224}, is_free=lambda p: p not in busy) == 2225
    assert choose_port("web", 8080, is_free=lambda p: True) == 8080
    with pytest.raises(PortInUseError, match="VM 'web': host port 2222/tcp is already in use"):
        choose_port("web", 2222, is_free=lambda p: p not in busy)
    with pytest.raises(PortInUseError, match="allocated to another VM"):
        choose_port("web", 9000, taken={9000}, is_free=lambda p: True)


def test_port_is_free_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(PortInUseError, match=f"host port {port}/tcp"):
            choose_port("db", port)
    assert port_is_free(port)


def test_user_netdev() -> None:
    assert user_netdev("nic0", [Forward(2222, 22), Forward(5353, 53, "0.0.0.0", "udp")]) == (
        "user,id=nic0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:0.0.0.0:5353-:53"
    )
    with pytest.raises(ValueError, match="invalid forward"):
        user_netdev("nic0", [Forward(1, 2, "1.2.3.4,smb=/")])


def test_dnsmasq_config(tmp_path: Path) -> None:
    net = DnsmasqNetwork(
        bridge="qcb-0123456789",
        subnet=ipaddress.IPv4Network("10.7.0.0/24"),
        gateway=ipaddress.IPv4Address("10.7.0.1"),
        domain="demo",
        directory=tmp_path,
        upstream=("10.7.0.53",),
    )
    config = render_config(net)
    assert config.splitlines()[1:] == [
        "interface=qcb-0123456789",
        "bind-dynamic",
        "except-interface=lo",
        "no-hosts",
        "no-resolv",
        "no-poll",
        "domain-needed",
        "bogus-priv",
        "domain=demo",
        "local=/demo/",
        "expand-hosts",
        "dhcp-range=10.7.0.0,static,255.255.255.0,infinite",
        "dhcp-option=option:dns-server,10.7.0.1",
        "dhcp-option=option:domain-search,demo",
        "leasefile-ro",
        f"dhcp-hostsdir={tmp_path}/dhcp-hosts",
        f"hostsdir={tmp_path}/hosts",
        "dhcp-authoritative",
        "pid-file=",
        "user=nobody",
        "log-facility=-",
        "dhcp-option=option:router",
        "server=10.7.0.53",
    ]
    host = Host("web", "52:54:00:aa:bb:cc", ipaddress.IPv4Address("10.7.0.10"))
    assert dhcp_host_line(host) == "52:54:00:aa:bb:cc,10.7.0.10,web\n"
    assert hosts_line(host, "demo") == "10.7.0.10 web.demo web\n"
    assert argv(net) == ["dnsmasq", "--keep-in-foreground", f"--conf-file={tmp_path}/dnsmasq.conf"]


def test_dnsmasq_accepts_the_config(tmp_path: Path) -> None:
    """dnsmasq itself parses what we render (--test checks the configuration and exits)."""
    import shutil
    import subprocess

    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed")
    net = DnsmasqNetwork(
        bridge="qcb-0123456789",
        subnet=ipaddress.IPv4Network("10.7.0.0/24"),
        gateway=ipaddress.IPv4Address("10.7.0.1"),
        domain="demo",
        directory=tmp_path,
        router=True,
    )
    for sub in ("dhcp-hosts", "hosts"):
        (tmp_path / sub).mkdir()
    net.config_file.write_text(render_config(net))
    result = subprocess.run([*argv(net), "--test"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "syntax check OK" in result.stderr


def test_registry_claims_are_shared_and_persisted(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "claims.json")
    with registry.claims() as claims:
        claims.subnets["one/lan"] = "172.16.0.0/24"
        claims.ports["one/web"] = [2222]
        claims.subnets["two/lan"] = "172.16.1.0/24"
    with Registry(tmp_path / "claims.json").claims() as claims:
        assert claims.subnets_of_others("one") == ["172.16.1.0/24"]
        assert claims.ports_of_others("two", "db") == {2222}
        assert claims.ports_of_others("one", "web") == set()
        claims.forget_project("one")
    with registry.claims() as claims:
        assert claims == Claims(subnets={"two/lan": "172.16.1.0/24"}, ports={})
    assert (tmp_path / "claims.json").stat().st_mode & 0o777 == 0o600


def test_a_port_whose_connection_lingers_in_time_wait_is_free_as_qemu_sees_it() -> None:
    """A VM just stopped: its SSH port's last connection, closed by the guest's side first,
    lingers in TIME_WAIT on the port; QEMU (SO_REUSEADDR) can listen on it again."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libslirp's listeners
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the listener's side closes first: TIME_WAIT is on its port
        client.recv(1)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind(("127.0.0.1", port))  # without SO_REUSEADDR
    assert port_is_free(port)
