"""Addresses and plumbing: subnets, MACs, ports, bridges/TAPs, dnsmasq configuration.

Knows nothing of compose files; what runs dnsmasq is passed in by the caller.
"""

from .dnsmasq import DnsmasqNetwork, Host, render_config
from .errors import (
    AddressConflictError,
    AddressExhaustedError,
    NeedsNetAdminError,
    NetcfgError,
    PlumbingError,
    PortInUseError,
    SubnetConflictError,
)
from .ipam import AUTO_POOL, SubnetRequest, allocate_subnets, assign_addresses, gateway
from .links import has_net_admin, require_net_admin
from .names import assign_macs, bridge_name, mac_address, partition_table, tap_name
from .network import (
    BridgeNetwork,
    NetworkStatus,
    attach_tap,
    detach_tap,
    ensure_network,
    host_subnets,
    link_present,
    network_status,
    partition_drops,
    remove_network,
    set_hosts,
    set_partition_drops,
)
from .ports import Forward, choose_port, choose_port_in, port_is_free, user_netdev
from .registry import Claims, Registry

__all__ = [
    "AUTO_POOL",
    "AddressConflictError",
    "AddressExhaustedError",
    "BridgeNetwork",
    "Claims",
    "DnsmasqNetwork",
    "Forward",
    "Host",
    "NeedsNetAdminError",
    "NetcfgError",
    "NetworkStatus",
    "PlumbingError",
    "PortInUseError",
    "Registry",
    "SubnetConflictError",
    "SubnetRequest",
    "allocate_subnets",
    "assign_addresses",
    "assign_macs",
    "attach_tap",
    "bridge_name",
    "choose_port",
    "choose_port_in",
    "detach_tap",
    "ensure_network",
    "gateway",
    "has_net_admin",
    "host_subnets",
    "link_present",
    "mac_address",
    "network_status",
    "partition_drops",
    "partition_table",
    "port_is_free",
    "remove_network",
    "render_config",
    "require_net_admin",
    "set_hosts",
    "set_partition_drops",
    "tap_name",
    "user_netdev",
]
