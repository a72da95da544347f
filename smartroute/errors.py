"""The one exception tree of smartroute, split by who is to blame.

``SmartRouteError`` is the root. API misuse raises ``UsageError`` (also a ``ValueError``) or a
plain ``TypeError``; a peer's bad bytes raise ``RemoteProtocolError``, which the node catches,
counts and logs and never lets into user code; request outcomes are ``NoSubscriber``,
``RequestTimeout`` and ``RemoteError``.
"""

from __future__ import annotations


class SmartRouteError(Exception):
    """Root of every error smartroute raises."""


class UsageError(SmartRouteError, ValueError):
    """The caller passed a bad argument (empty name, unknown mode, missing target...)."""


class NodeClosed(SmartRouteError):
    """The node is not running: it was never started or it has been closed."""


class WaitTimeout(SmartRouteError, TimeoutError):
    """``Node.wait_for`` gave up: not enough subscribers of the name became known in time."""


class LinkFull(SmartRouteError):
    """``send_to`` or ``request`` waited ``send_timeout_s`` for room on the link to a peer that
    does not keep up (slow or frozen) and sent nothing; ``node_id`` names the peer."""

    def __init__(self, message: str, *, node_id: str = "") -> None:
        super().__init__(message)
        self.node_id = node_id


class RemoteProtocolError(SmartRouteError):
    """A peer sent bytes that are not a valid frame; dropped and counted, never raised to users."""


class RequestError(SmartRouteError):
    """Base of the outcomes of ``Node.request`` that are not a reply."""


class NoSubscriber(RequestError):
    """No subscriber matched the request's target in this node's view of the table."""


class RequestTimeout(RequestError, TimeoutError):
    """No reply arrived before the request's timeout."""


class PeerLost(RequestError):
    """Every node the request went to left (BYE) or was declared dead before answering;
    ``node_id`` names the last of them. The request may or may not have been handled there."""

    def __init__(self, message: str, *, node_id: str = "") -> None:
        super().__init__(message)
        self.node_id = node_id


class RemoteError(RequestError):
    """The handler that took the request raised; ``str(err)`` carries its message."""

    def __init__(self, message: str, *, node_id: str = "", error_type: str = "") -> None:
        super().__init__(message)
        self.node_id = node_id
        self.error_type = error_type
