"""The public surface is exactly what the README documents."""

from __future__ import annotations

import logging

import smartroute

DOCUMENTED = {
    "Discovery", "EventStream", "Limits", "LinkFull", "Message", "NoSubscriber", "Node",
    "NodeClosed",
    "PeerDown", "PeerInfo", "PeerLost", "PeerUp", "ReceiveMode", "RemoteError", "RequestError",
    "RequestTimeout", "SmartRouteError", "StaticDiscovery", "Subscriber", "SubscriberDown",
    "SubscriberUp", "SubscriberUpdated", "Subscription", "Timings", "UsageError", "WaitTimeout",
    "__version__", "build", "compiled", "message",
}


def test_all_is_the_documented_surface() -> None:
    assert set(smartroute.__all__) == DOCUMENTED
    for name in smartroute.__all__:
        assert hasattr(smartroute, name), name


def test_every_error_derives_from_the_one_root() -> None:
    for name in ("LinkFull", "NoSubscriber", "NodeClosed", "PeerLost", "RemoteError",
                 "RequestError", "RequestTimeout", "UsageError", "WaitTimeout"):
        assert issubclass(getattr(smartroute, name), smartroute.SmartRouteError), name
    assert issubclass(smartroute.UsageError, ValueError)
    assert issubclass(smartroute.RequestTimeout, TimeoutError)
    assert issubclass(smartroute.WaitTimeout, TimeoutError)


def test_the_package_logger_is_silent_by_default() -> None:
    handlers = logging.getLogger("smartroute").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
