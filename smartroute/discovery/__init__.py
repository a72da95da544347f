"""Finding peers. Discovery only *hints* at endpoints; the mesh decides who is alive."""

from .base import CombinedDiscovery, Discovery, Hint, LocalNode
from .dns import DnsDiscovery, DnsName, parse_dns
from .mdns import MdnsDiscovery
from .static import StaticDiscovery, parse_endpoint

__all__ = [
    "CombinedDiscovery", "Discovery", "DnsDiscovery", "DnsName", "Hint", "LocalNode",
    "MdnsDiscovery", "StaticDiscovery", "parse_dns", "parse_endpoint",
]
