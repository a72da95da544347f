"""Moving bytes between nodes: the ZeroMQ mesh (one ROUTER inbox, one DEALER per link)."""

from .zeromq import Inbox, Links

__all__ = ["Inbox", "Links"]
