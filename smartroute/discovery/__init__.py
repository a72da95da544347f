"""Finding peers. Discovery only *hints* at endpoints; the mesh decides who is alive."""

from __future__ import annotations

from collections.abc import Sequence

from ..checked import Checked
from ..config import Timings
from ..errors import UsageError
from .base import CombinedDiscovery, Discovery, Hint, LocalNode
from .dns import DnsDiscovery, DnsName, is_dns, parse_dns
from .mdns import MdnsDiscovery
from .static import StaticDiscovery, parse_endpoint

__all__ = [
    "CombinedDiscovery", "Discovery", "DnsDiscovery", "DnsName", "Hint", "LocalNode",
    "MdnsDiscovery", "StaticDiscovery", "make_discovery", "parse_dns", "parse_endpoint",
]


def make_discovery(spec: Checked[str | Sequence[str] | Discovery], interfaces: list[str] | None,
                   timings: Timings) -> Discovery:
    """The discovery ``Node(discovery=spec)`` asks for: ``"mdns"``, a list of seed endpoints
    (which may include ``"mdns"`` and ``"dns:NAME:PORT"``) or a ``Discovery`` of your own."""
    if isinstance(spec, str):
        if spec == "mdns" or is_dns(spec):
            return make_discovery([spec], interfaces, timings)
        raise UsageError(f"discovery is 'mdns', a list of seed endpoints (which may include "
                         f"'mdns' and 'dns:NAME:PORT') or a Discovery, not {spec!r}")
    if isinstance(spec, Discovery):
        return spec
    if isinstance(spec, Sequence):
        names = [parse_dns(item) for item in spec if is_dns(item)]
        seeds = [seed for seed in spec if seed != "mdns" and not is_dns(seed)]
        parts: list[Discovery] = []
        if "mdns" in spec:
            parts.append(MdnsDiscovery(interfaces=interfaces))
        if names:
            parts.append(DnsDiscovery(names, interval_s=timings.dns_interval_s))
        if seeds or not parts:
            parts.append(StaticDiscovery(seeds, retry_s=timings.seed_retry_s))
        return parts[0] if len(parts) == 1 else CombinedDiscovery(parts)
    raise TypeError(f"discovery is 'mdns', a list of seed endpoints or a Discovery, "
                    f"not {type(spec).__name__}")
