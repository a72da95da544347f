"""smartroute: a brokerless routing mesh for Python services.

Start a ``Node`` in every process; nodes find each other, form a full mesh of ZeroMQ links,
replicate which subscriber names live where, and deliver ``send_to`` in one hop.
"""

import logging as _logging

# First, before any core module: chooses the compiled build or the pure one, for all of them.
from ._compiled import build, compiled
from .config import Limits, Timings
from .discovery import Discovery, StaticDiscovery
from .errors import (
    LinkFull,
    NodeClosed,
    NoSubscriber,
    PeerLost,
    RemoteError,
    RequestError,
    RequestTimeout,
    SmartRouteError,
    UsageError,
    WaitTimeout,
)
from .events import (
    PeerDown,
    PeerInfo,
    PeerUp,
    Subscriber,
    SubscriberDown,
    SubscriberUp,
    SubscriberUpdated,
)
from .messages import Message, message
from .modes import ReceiveMode
from .node import EventStream, Node, Subscription

_logging.getLogger("smartroute").addHandler(_logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "Discovery",
    "EventStream",
    "Limits",
    "LinkFull",
    "Message",
    "NoSubscriber",
    "Node",
    "NodeClosed",
    "PeerDown",
    "PeerInfo",
    "PeerLost",
    "PeerUp",
    "ReceiveMode",
    "RemoteError",
    "RequestError",
    "RequestTimeout",
    "SmartRouteError",
    "StaticDiscovery",
    "Subscriber",
    "SubscriberDown",
    "SubscriberUp",
    "SubscriberUpdated",
    "Subscription",
    "Timings",
    "UsageError",
    "WaitTimeout",
    "__version__",
    "build",
    "compiled",
    "message",
]
