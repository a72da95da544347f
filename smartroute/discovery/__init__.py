"""Finding peers. Discovery only *hints* at endpoints; the mesh decides who is alive."""

from .base import CombinedDiscovery, Discovery, Hint, LocalNode
from .mdns import MdnsDiscovery
from .static import StaticDiscovery, parse_endpoint

__all__ = [
    "CombinedDiscovery", "Discovery", "Hint", "LocalNode", "MdnsDiscovery", "StaticDiscovery",
    "parse_endpoint",
]
