"""Finding peers. Discovery only *hints* at endpoints; the mesh decides who is alive."""

from .base import Discovery, Hint
from .static import StaticDiscovery, parse_endpoint

__all__ = ["Discovery", "Hint", "StaticDiscovery", "parse_endpoint"]
