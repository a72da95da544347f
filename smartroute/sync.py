"""A blocking facade over ``smartroute.Node`` for code that has no event loop.

Each ``smartroute.sync.Node`` runs an asyncio ``Node`` on a private event-loop thread; its
methods block until the loop has done the work. Handlers run on that thread: keep them short,
or hand the work to threads of your own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from .events import PeerInfo, Subscriber
from .modes import ReceiveMode
from .node import Handler
from .node import Node as AsyncNode
from .node import Subscription as AsyncSubscription
from .routing import Target

_T = TypeVar("_T")

__all__ = ["Node", "Subscription"]


class Subscription:
    """A local subscriber of a blocking node; ``close()`` unsubscribes it."""

    def __init__(self, node: Node, sub: AsyncSubscription) -> None:
        self._node = node
        self._sub = sub
        self.name = sub.name

    def close(self) -> None:
        """Unsubscribe everywhere."""
        self._node._run(self._sub.close())


class Node:
    """The blocking twin of ``smartroute.Node``: same options, same methods, no ``await``."""

    def __init__(self, cluster: str = "smartroute", **options: Any) -> None:
        self._node = AsyncNode(cluster, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"smartroute-{self._node.node_id[:8]}")
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _read(self, value: Any) -> Any:
        return value() if callable(value) else value

    # lifecycle

    def start(self) -> None:
        """Bind and start discovery; returns when the node is reachable."""
        self._run(self._node.start())

    def close(self) -> None:
        """Say BYE, stop the node and its thread. Idempotent."""
        if not self._thread.is_alive():
            return
        try:
            self._run(self._node.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # the API, as on smartroute.Node

    @property
    def node_id(self) -> str:
        """This node's id, as hex."""
        return self._node.node_id

    @property
    def endpoint(self) -> str:
        """The ``tcp://ip:port`` peers dial."""
        return self._node.endpoint

    @property
    def peers(self) -> list[PeerInfo]:
        """Peers alive or suspect."""
        peers: list[PeerInfo] = self._run(self._read(lambda: self._node.peers))
        return peers

    def subscribe(self, name: str, handler: Handler, meta: dict[str, Any] | None = None,
                  *, concurrency: int = 1) -> Subscription:
        """Receive messages sent to ``name``; ``handler`` runs on the node's thread."""
        sub = self._run(self._node.subscribe(name, handler, meta, concurrency=concurrency))
        return Subscription(self, sub)

    def send_to(self, body: object, mode: ReceiveMode = ReceiveMode.EQ, target: Target = None,
                *, sender: str | None = None) -> int:
        """See ``smartroute.Node.send_to``."""
        return self._run(self._node.send_to(body, mode, target, sender=sender))

    def request(self, target: Target, body: object, *, mode: ReceiveMode = ReceiveMode.ANY,
                timeout: float = 5.0) -> object:
        """See ``smartroute.Node.request``."""
        return self._run(self._node.request(target, body, mode=mode, timeout=timeout))

    def lookup(self, name: str) -> list[Subscriber]:
        """See ``smartroute.Node.lookup``."""
        found: list[Subscriber] = self._run(self._read(lambda: self._node.lookup(name)))
        return found

    def subscribers(self) -> list[Subscriber]:
        """See ``smartroute.Node.subscribers``."""
        found: list[Subscriber] = self._run(self._read(self._node.subscribers))
        return found

    def wait_for(self, name: str, count: int = 1, timeout: float = 5.0) -> list[Subscriber]:
        """See ``smartroute.Node.wait_for``."""
        return self._run(self._node.wait_for(name, count, timeout))

    def stats(self) -> dict[str, int]:
        """See ``smartroute.Node.stats``."""
        stats: dict[str, int] = self._run(self._read(self._node.stats))
        return stats
