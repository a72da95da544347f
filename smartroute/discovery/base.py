"""What every discovery mechanism provides to a node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

Hint = Callable[[str], None]
"""Called with an endpoint (``tcp://host:port``) where a node may listen."""


@runtime_checkable
class Discovery(Protocol):
    """A source of hints. ``start`` begins hinting (it must not block), ``close`` stops it."""

    async def start(self, hint: Hint) -> None:
        """Begin calling ``hint`` with endpoints; return once started."""

    async def close(self) -> None:
        """Stop hinting and release resources."""
