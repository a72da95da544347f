"""What every discovery mechanism provides to a node, and what a node tells it about itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol, runtime_checkable

Hint = Callable[[str], None]
"""Called with an endpoint (``tcp://host:port``) where a node may listen."""


@dataclasses.dataclass(frozen=True, slots=True)
class LocalNode:
    """The node a discovery mechanism works for (what it may announce)."""

    cluster: str
    node_id: str
    port: int
    name: str
    addresses: tuple[str, ...] = ()
    """Addresses to announce; empty means "those of the interfaces in use"."""


@runtime_checkable
class Discovery(Protocol):
    """A source of hints. ``start`` begins hinting (it must not block), ``close`` stops it."""

    async def start(self, hint: Hint, me: LocalNode) -> None:
        """Begin calling ``hint`` with endpoints; return once started."""

    async def close(self) -> None:
        """Stop hinting and release resources."""


class CombinedDiscovery:
    """Several mechanisms at once (mDNS plus seeds): every one hints."""

    def __init__(self, parts: list[Discovery]) -> None:
        self.parts = parts

    async def start(self, hint: Hint, me: LocalNode) -> None:
        """Start every part."""
        for part in self.parts:
            await part.start(hint, me)

    async def close(self) -> None:
        """Close every part."""
        for part in self.parts:
            await part.close()
