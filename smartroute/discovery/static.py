"""Static discovery: a fixed list of seed endpoints, hinted again while they are not connected."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from ..endpoints import format_endpoint, parse_endpoint
from .base import Hint, LocalNode

__all__ = ["StaticDiscovery", "parse_endpoint"]

_log = logging.getLogger("smartroute.discovery")


class StaticDiscovery:
    """Hints each seed at start and every ``retry_s`` after (the protocol ignores known ones)."""

    def __init__(self, seeds: list[str], *, retry_s: float) -> None:
        for seed in seeds:
            parse_endpoint(seed)
        self.seeds = list(seeds)
        self.retry_s = retry_s
        self._task: asyncio.Task[None] | None = None

    async def start(self, hint: Hint, me: LocalNode) -> None:
        """Resolve host names once, then hint every seed periodically."""
        resolved = [await self._resolve(seed) for seed in self.seeds]
        self._task = asyncio.create_task(self._run(resolved, hint), name="smartroute-seeds")

    async def _resolve(self, seed: str) -> str:
        host, port = parse_endpoint(seed)
        try:
            ipaddress.ip_address(host)
            return format_endpoint(host, port)
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            _log.warning("cannot resolve seed %s: %s (will try it as written)", seed, exc)
            return seed
        return format_endpoint(str(infos[0][4][0]), port)

    async def _run(self, seeds: list[str], hint: Hint) -> None:
        while True:
            for seed in seeds:
                hint(seed)
            await asyncio.sleep(self.retry_s)

    async def close(self) -> None:
        """Stop hinting."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
