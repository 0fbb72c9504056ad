"""The link agent of rootless mode: a process in the user's namespace that makes the links
there (``links``' functions, run for a caller outside), one JSON request per line on stdin,
one answer per line on stdout.

    {"op": "ensure_bridge", "args": {"name": ..., "address": "10.9.0.1/24", "alias": ...}}
    -> {"ok": true}  |  {"error": "bridge qc-...: ..."}

Only the operations below exist; their arguments are typed and checked (msgspec) before any
is used. The agent joins the namespace itself (``userns.enter``) before it imports pyroute2,
which starts threads; ``Agent`` runs it and talks to it from trio.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from . import userns
from .errors import PlumbingError


class EnsureBridge(msgspec.Struct, tag="ensure_bridge", tag_field="op", forbid_unknown_fields=True):
    name: str
    address: str
    alias: str


class EnsureTap(msgspec.Struct, tag="ensure_tap", tag_field="op", forbid_unknown_fields=True):
    name: str
    bridge: str
    alias: str
    owner_uid: int = 0  # root of the namespace: the user outside


class DeleteLink(msgspec.Struct, tag="delete_link", tag_field="op", forbid_unknown_fields=True):
    name: str


class LinkExists(msgspec.Struct, tag="link_exists", tag_field="op", forbid_unknown_fields=True):
    name: str


class LinksByAlias(
    msgspec.Struct, tag="links_by_alias", tag_field="op", forbid_unknown_fields=True
):
    prefix: str


class SetDrops(msgspec.Struct, tag="set_drops", tag_field="op", forbid_unknown_fields=True):
    table: str
    drops: list[tuple[str, str]]


class DropsOf(msgspec.Struct, tag="drops_of", tag_field="op", forbid_unknown_fields=True):
    table: str


class Subnets(msgspec.Struct, tag="subnets", tag_field="op", forbid_unknown_fields=True):
    exclude: list[str] = []


class EnableNat(msgspec.Struct, tag="enable_nat", tag_field="op", forbid_unknown_fields=True):
    bridge: str
    subnet: str


class DisableNat(msgspec.Struct, tag="disable_nat", tag_field="op", forbid_unknown_fields=True):
    bridge: str


Request = (
    EnsureBridge
    | EnsureTap
    | DeleteLink
    | LinkExists
    | LinksByAlias
    | SetDrops
    | DropsOf
    | Subnets
    | EnableNat
    | DisableNat
)
CHANGES = (EnsureBridge, EnsureTap, DeleteLink, SetDrops, EnableNat, DisableNat)


def execute(request: Request, netns: str | None = None) -> Any:
    """Do what ``request`` asks, here (or in the named namespace ``netns``); a JSON-ready
    result."""
    from . import links  # (after joining: pyroute2 is imported by links' calls)

    match request:
        case EnsureBridge(name, address, alias):
            return links.ensure_bridge(name, ipaddress.IPv4Interface(address), alias, netns=netns)
        case EnsureTap(name, bridge, alias, owner_uid):
            return links.ensure_tap(name, bridge, alias, owner_uid=owner_uid, netns=netns)
        case DeleteLink(name):
            return links.delete_link(name, netns=netns)
        case LinkExists(name):
            return links.link_exists(name, netns=netns)
        case LinksByAlias(prefix):
            return links.links_by_alias(prefix, netns=netns)
        case SetDrops(table, drops):
            links.set_drops(table, drops, netns=netns)
            return None
        case DropsOf(table):
            return links.drops_of(table, netns=netns)
        case Subnets(exclude):
            return [str(n) for n in links.host_subnets(exclude=exclude, netns=netns)]
        case EnableNat(bridge, subnet):
            links.enable_nat(bridge, ipaddress.IPv4Network(subnet), netns=netns)
            return None
        case DisableNat(bridge):
            links.disable_nat(bridge, netns=netns)
            return None
    raise AssertionError(request)


def serve(lines: Iterable[bytes], write: Callable[[bytes], Any]) -> None:
    """Answer each request line in turn, until the input ends."""
    decoder = msgspec.json.Decoder(Request)
    for line in lines:
        if not line.strip():
            continue
        try:
            answer: dict[str, Any] = {"ok": execute(decoder.decode(line))}
        except (PlumbingError, msgspec.ValidationError, msgspec.DecodeError, ValueError) as err:
            answer = {"error": str(err)}
        write(msgspec.json.encode(answer) + b"\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m netcfg agent PID:USER-INODE:NET-INODE", file=sys.stderr)
        return 2
    try:
        userns.enter(userns.Namespace.parse(args[0]))
    except PlumbingError as err:
        print(f"qemu-compose link agent: {err}", file=sys.stderr)
        return 1

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    serve(sys.stdin.buffer, write)
    return 0
