"""Zero-configuration discovery over mDNS/DNS-SD (python-zeroconf's asyncio API).

Each node registers ``<node id>._smartroute._tcp.local.`` with TXT keys ``v`` (protocol
version), ``c`` (cluster) and ``p`` (port) - nothing secret - and browses the same type at
once. Registration skips the ~1 s of probing (the name is a random node id and cannot clash),
and a node that finds another says HELLO, which makes the link two-way whoever found whom.
Every find of our cluster becomes a hint to the mesh, which decides who is alive: mDNS records
outlive a crashed node by up to an hour, so "removed" is never taken as a death.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import zeroconf
from zeroconf import (
    BadTypeInNameException,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..logs import QuietLog
from ..wire import PROTOCOL_VERSION
from .base import Hint, LocalNode

_log = logging.getLogger("smartroute.discovery.mdns")

SERVICE_TYPE = "_smartroute._tcp.local."
"""The DNS-SD service type every smartroute node registers and browses."""

RESOLVE_TIMEOUT_MS = 3000
"""How long one resolution of a found service may take (python-zeroconf's own default)."""

MAX_TXT_VALUE_LENGTH = 255
"""A TXT value longer than this is garbage (DNS caps one TXT string at 255 bytes)."""

MAX_RESOLVING = 256
"""Most services resolved at once: a flood of spoofed announcements cannot spawn more tasks."""


class _Shared:
    """One AsyncZeroconf per event loop and interface set, shared by the nodes of a process."""

    instances: ClassVar[dict[tuple[int, tuple[str, ...] | None], tuple[AsyncZeroconf, int]]] = {}

    @classmethod
    def acquire(cls, interfaces: tuple[str, ...] | None) -> AsyncZeroconf:
        key = (id(asyncio.get_running_loop()), interfaces)
        found = cls.instances.get(key)
        if found is None:
            azc = AsyncZeroconf(interfaces=list(interfaces) if interfaces else InterfaceChoice.All,
                                ip_version=IPVersion.V4Only)
            cls.instances[key] = (azc, 1)
            return azc
        azc, users = found
        cls.instances[key] = (azc, users + 1)
        return azc

    @classmethod
    async def release(cls, azc: AsyncZeroconf) -> None:
        for key, (known, users) in list(cls.instances.items()):
            if known is azc:
                if users > 1:
                    cls.instances[key] = (known, users - 1)
                    return
                del cls.instances[key]
                await azc.async_close()
                return


class MdnsDiscovery:
    """Registers this node and hints every node of its cluster found on the LAN.

    ``interfaces``: the IPv4 addresses whose interfaces mDNS uses (default: all). A given
    ``zeroconf`` is used as is and left open at close; otherwise one is shared per process.
    """

    def __init__(self, *, interfaces: Sequence[str] | None = None,
                 zeroconf: AsyncZeroconf | None = None) -> None:
        self.interfaces = tuple(interfaces) if interfaces else None
        if self.interfaces:
            for address in self.interfaces:
                ipaddress.IPv4Address(address)  # ValueError for anything else
        self._given = zeroconf
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._register: asyncio.Task[None] | None = None
        self._resolving: set[asyncio.Task[None]] = set()
        self._me: LocalNode | None = None
        self._hint: Hint | None = None
        self._quiet = QuietLog(_log)
        self.found = 0
        """Services of our cluster found (each may have been found more than once)."""
        self.ignored = 0
        """Announcements ignored: another cluster or version, ourselves, garbage."""

    async def start(self, hint: Hint, me: LocalNode) -> None:
        """Browse at once and register in the background; returns without waiting for either."""
        self._hint, self._me = hint, me
        self._azc = self._given or _Shared.acquire(self.interfaces)
        addresses = self._addresses(me)
        self._info = ServiceInfo(
            SERVICE_TYPE, f"{me.node_id}.{SERVICE_TYPE}", port=me.port,
            properties={"v": str(PROTOCOL_VERSION), "c": me.cluster, "p": str(me.port)},
            server=f"{me.node_id}.local.", parsed_addresses=addresses,
        )
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, [SERVICE_TYPE],
                                            handlers=[self._on_change])
        self._register = asyncio.create_task(self._do_register(), name="smartroute-mdns-register")
        _log.info("%s: mDNS on %s, announcing %s port %d", me.node_id[:8],
                  ", ".join(self.interfaces) if self.interfaces else "all interfaces",
                  ", ".join(addresses), me.port)

    def _addresses(self, me: LocalNode) -> list[str]:
        if me.addresses:
            return list(me.addresses)
        if self.interfaces:
            return list(self.interfaces)
        # Public in zeroconf, but missing from its stub's exports.
        every = zeroconf.get_all_addresses()  # type: ignore[attr-defined]
        found = [a for a in every if not ipaddress.IPv4Address(a).is_loopback]
        return found or ["127.0.0.1"]

    async def _do_register(self) -> None:
        assert self._azc is not None and self._info is not None
        try:
            # No probing (RFC 6762 section 8.1): the instance name is a random 128-bit node id,
            # so it cannot clash, and probing would keep us invisible for ~1 s at every start
            # (measured: a cold start of 2 hosts converged in 1.12 s with it).
            waiter = await self._azc.async_register_service(self._info,
                                                            cooperating_responders=True)
            await waiter
        except (NonUniqueNameException, BadTypeInNameException, OSError) as exc:
            _log.warning("mDNS registration failed: %s (peers can still find us by HELLO)", exc)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        # "Removed" is only a hint, and a weak one: liveness belongs to the mesh.
        if state_change is ServiceStateChange.Removed:
            return
        me = self._me
        if me is None or name.startswith(me.node_id):
            return
        if len(self._resolving) >= MAX_RESOLVING:
            self._quiet.warning("resolving", "too many mDNS services to resolve; ignoring %s",
                                name[:80])
            return
        task = asyncio.ensure_future(self._resolve(service_type, name))
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        azc, me, hint = self._azc, self._me, self._hint
        assert azc is not None and me is not None and hint is not None
        info = AsyncServiceInfo(service_type, name)
        try:
            if not await info.async_request(azc.zeroconf, RESOLVE_TIMEOUT_MS):
                return
        except Exception as exc:  # zeroconf raises a variety on odd records: a hint lost only
            self._quiet.warning(f"resolve:{type(exc).__name__}", "cannot resolve %s: %s",
                                name[:80], exc)
            return
        endpoints = self._endpoints(info, me)
        if endpoints is None:
            self.ignored += 1
            return
        self.found += 1
        for endpoint in endpoints:
            hint(endpoint)

    def _endpoints(self, info: AsyncServiceInfo, me: LocalNode) -> list[str] | None:
        """The endpoints a found service of our cluster listens at; None to ignore it."""
        txt = _text_properties(info.properties)
        if txt is None or txt.get("c") != me.cluster or txt.get("v") != str(PROTOCOL_VERSION):
            return None
        port = info.port
        if port is None or not 0 < port < 65536:
            return None
        addresses = [a for a in info.parsed_addresses(IPVersion.V4Only)
                     if _is_usable(a)]
        return [f"tcp://{address}:{port}" for address in addresses] or None

    async def close(self) -> None:
        """Say goodbye (unregister), stop browsing, release zeroconf."""
        for task in list(self._resolving):
            task.cancel()
        if self._register is not None:
            self._register.cancel()
            await asyncio.gather(self._register, return_exceptions=True)
        azc = self._azc
        if azc is None:
            return
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._info is not None:
            try:
                await azc.async_unregister_service(self._info)
            except Exception as exc:  # never registered, or zeroconf already closing
                _log.debug("mDNS unregister: %s", exc)
        if self._given is None:
            await _Shared.release(azc)
        self._azc = None


def _text_properties(properties: dict[bytes, bytes | None] | Any) -> dict[str, str] | None:
    """TXT keys and values as text, or None when anything is not plain short UTF-8."""
    if not isinstance(properties, dict):
        return None
    out: dict[str, str] = {}
    for key, value in properties.items():
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            continue
        if len(value) > MAX_TXT_VALUE_LENGTH:
            return None
        try:
            out[key.decode()] = value.decode()
        except UnicodeDecodeError:
            return None
    return out


def _is_usable(address: str) -> bool:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return not (ip.is_multicast or ip.is_unspecified or ip.is_reserved)
