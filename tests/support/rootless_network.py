"""Rootless mode walked through as an ordinary user; each prints what it saw as JSON.

``python -m tests.support.rootless_network network PID:USER:NET DIRECTORY``: one bridge
network made in the user's own namespace through the link agent; a client namespace inside
it on a veth gets its reserved address by DHCP and resolves the VMs' names from the
network's dnsmasq (``DIRECTORY``: the user's, for dnsmasq's files and the DHCP script).

``python -m tests.support.rootless_network keeper``: a keeper makes a namespace, brings its
loopback up, ends on SIGTERM; a second keeper adopts the namespace a process in it kept.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from netcfg import (
    BridgeNetwork,
    Host,
    attach_tap,
    ensure_network,
    keeper,
    mac_address,
    network_status,
    partition_drops,
    remove_network,
    set_partition_drops,
)
from netcfg.plumbing import open_agent
from netcfg.userns import Namespace


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


async def walk(namespace: Namespace, place: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    inside = [sys.executable, "-m", "netcfg", "enter", namespace.token(), "--"]
    network = BridgeNetwork(
        "rl", "lan", ipaddress.IPv4Network("10.78.0.0/24"), place / "lan", rootless=True
    )
    client_mac = mac_address("rl", "client", "lan")
    hosts = [
        Host("client", client_mac, ipaddress.IPv4Address("10.78.0.10")),
        Host("db", mac_address("rl", "db", "lan"), ipaddress.IPv4Address("10.78.0.11")),
    ]
    dnsmasq: list[subprocess.Popen[bytes]] = []

    async def start(argv: list[str], changed: bool) -> None:
        log = place / "dnsmasq.log"
        with log.open("a") as out:
            dnsmasq.append(subprocess.Popen([*inside, *argv], stderr=out))
        await trio.sleep(0.5)
        if dnsmasq[-1].poll() is not None:
            raise RuntimeError(f"dnsmasq ended: {log.read_text()}")

    async def stop() -> None:
        for process in dnsmasq:
            process.terminate()
            process.wait(timeout=10)

    client = subprocess.Popen([*inside, "unshare", "--net", "sleep", "600"])
    try:
        async with open_agent(namespace) as plumbing:
            await ensure_network(network, hosts, start, plumbing=plumbing)
            seen["dnsmasq_uid"] = _uid(dnsmasq[0].pid)
            tap = await attach_tap(network, "db", plumbing=plumbing)
            seen["status"] = {
                "bridge": (status := await network_status(network, plumbing=plumbing)).bridge,
                "bridge_exists": status.bridge_exists,
                "taps": list(status.taps),
            }
            await set_partition_drops("qct-rl", [(tap, "qct-other")], plumbing=plumbing)
            seen["drops"] = await partition_drops("qct-rl", plumbing=plumbing)

            # the client: a namespace of the user's inside theirs, on the bridge by a veth
            deadline = time.monotonic() + 10
            while _net(client.pid) == namespace.net:
                assert time.monotonic() < deadline, "no client namespace"
                await trio.sleep(0.02)
            enter = ["nsenter", f"--target={client.pid}", "--user", "--net"]
            enter.append("--preserve-credentials")
            made = sh(*inside, "ip", "link", "add", "qct-vs", "type", "veth", "peer", "name",
                      "qct-vc", "netns", str(client.pid))  # fmt: skip
            seen["veth"] = made.returncode, made.stderr
            sh(*inside, "ip", "link", "set", "qct-vs", "master", network.bridge, "up")
            sh(*enter, "ip", "link", "set", "lo", "up")
            sh(*enter, "ip", "link", "set", "qct-vc", "address", client_mac, "up")
            script = place / "udhcpc.sh"
            script.write_text(
                '#!/bin/sh\ncase "$1" in bound|renew)\n'
                '  ip addr add "$ip/$mask" dev "$interface"\n'
                f'  echo "$ip $dns $domain" > {place}/lease;;\nesac\n'
            )
            script.chmod(0o755)
            udhcpc = sh(*enter, "busybox", "udhcpc", "-i", "qct-vc", "-n", "-q", "-f", "-t",
                        "10", "-T", "1", "-s", str(script))  # fmt: skip
            seen["dhcp"] = udhcpc.returncode, udhcpc.stderr[-500:]
            lease = place / "lease"
            seen["lease"] = lease.read_text().split() if lease.exists() else None
            query = [*enter, sys.executable, "-m", "tests.support.dns", "10.78.0.1"]
            seen["names"] = {
                name: sh(*query, name).stdout.split()
                for name in ("db", "db.rl", "client.rl", "nothing.rl")
            }
            await remove_network(network, stop, plumbing=plumbing)
            seen["removed"] = not (await network_status(network, plumbing=plumbing)).bridge_exists
            seen["files_removed"] = not network.directory.exists()
    finally:
        client.kill()
        client.wait()
        await stop()
    return seen


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("Uid:")[1].split()[0])


def _net(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def keepers() -> dict[str, Any]:
    seen: dict[str, Any] = {}
    first = subprocess.Popen(keeper.argv())
    namespace = keeper.namespace_of(first.pid)
    seen["own"] = namespace.net != _net(os.getpid())
    enter = [sys.executable, "-m", "netcfg", "enter", namespace.token(), "--"]
    seen["lo"] = sh(*enter, "ip", "-br", "link", "show", "lo").stdout.split()[1]
    holder = subprocess.Popen([*enter, "sleep", "60"])  # (a dnsmasq, say)
    try:
        held = keeper.namespace_of(holder.pid, ready=False)
        first.terminate()
        seen["first_ended"] = first.wait(timeout=10)
        second = subprocess.Popen(keeper.argv(adopt=held))
        try:
            seen["adopted"] = keeper.namespace_of(second.pid).net == namespace.net
        finally:
            second.terminate()
            seen["second_ended"] = second.wait(timeout=10)
    finally:
        holder.kill()
        holder.wait()
    return seen


def main() -> None:
    if sys.argv[1] == "keeper":
        print(json.dumps(keepers()))
        return
    namespace = Namespace.parse(sys.argv[2])
    print(json.dumps(trio.run(walk, namespace, Path(sys.argv[3]))))


if __name__ == "__main__":
    main()
