"""The errors of netcfg: one root, a subclass per kind of failure, each with its data."""

from __future__ import annotations


class NetcfgError(Exception):
    """Root of every error this package raises."""


class AddressExhaustedError(NetcfgError):
    """No free subnet in the pool, or no free address in a subnet."""


class SubnetConflictError(NetcfgError):
    """An explicit subnet overlaps one already in use on this host."""

    def __init__(self, network: str, subnet: str, other: str) -> None:
        super().__init__(f"network {network!r}: subnet {subnet} overlaps {other}")
        self.network = network
        self.subnet = subnet
        self.other = other


class AddressConflictError(NetcfgError):
    """A fixed address is outside its subnet, reserved, or taken by another VM."""


class PortInUseError(NetcfgError):
    """A host port asked for explicitly is taken."""

    def __init__(self, vm: str, port: int, proto: str, holder: str) -> None:
        super().__init__(f"VM {vm!r}: host port {port}/{proto} is already in use ({holder})")
        self.vm = vm
        self.port = port
        self.proto = proto
        self.holder = holder


class NeedsNetAdminError(NetcfgError):
    """Bridge networking needs CAP_NET_ADMIN, which this process lacks."""

    def __init__(self, fix: str) -> None:
        super().__init__(
            "bridge networks need the CAP_NET_ADMIN capability to create bridges and TAP "
            f"devices, and this process does not have it: {fix}"
        )
        self.fix = fix


class PlumbingError(NetcfgError):
    """The kernel refused a link or address change."""
