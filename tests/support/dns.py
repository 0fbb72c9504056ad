"""A minimal DNS client for tests: one A query over UDP, the answer's code and addresses.

Run in a network namespace as ``python -m tests.support.dns SERVER NAME``: prints the rcode
and the addresses, one per line.
"""

from __future__ import annotations

import random
import socket
import struct
import sys

RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}


def query_a(server: str, name: str, timeout: float = 3.0) -> tuple[str, list[str]]:
    ident = random.randrange(1 << 16)  # a query id, not a secret
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # recursion desired
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = header + qname + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, 53))
        reply = sock.recv(4096)
    rid, flags, _qd, ancount, _ns, _ar = struct.unpack("!HHHHHH", reply[:12])
    assert rid == ident
    offset = 12 + len(qname) + 4
    addresses = []
    for _ in range(ancount):
        if reply[offset] & 0xC0 == 0xC0:  # a compressed name
            offset += 2
        else:
            while reply[offset]:
                offset += reply[offset] + 1
            offset += 1
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", reply[offset : offset + 10])
        offset += 10
        if rtype == 1:
            addresses.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return RCODES.get(flags & 0xF, str(flags & 0xF)), addresses


if __name__ == "__main__":
    code, found = query_a(sys.argv[1], sys.argv[2])
    print(code)
    for address in found:
        print(address)
