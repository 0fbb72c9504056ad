"""Addresses and plumbing: subnets, MACs, ports, bridges/TAPs, dnsmasq configuration.

Knows nothing of compose files.
"""
