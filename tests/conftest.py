"""Fixtures shared by the process tests: start agents, and stop every one of them by PID."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from examples.chat_gateway.client import ChatClient
from examples.chat_gateway.processes import GatewayProcess
from smartroute.testing.cluster import AgentProcess
from smartroute.testing.lan import Lan, lan_available

Spawn = Callable[..., AgentProcess]


@pytest.fixture
def lan_factory() -> Iterator[Callable[[int], Lan]]:
    """Build simulated LANs (network namespaces; skipped with the reason when that is not
    possible here); every one is removed at the end."""
    reason = lan_available()
    if reason is not None:
        pytest.skip(reason)
    lans: list[Lan] = []

    def make(hosts: int) -> Lan:
        lan = Lan(hosts)
        lans.append(lan)
        return lan

    yield make
    for lan in lans:
        lan.close()


@pytest.fixture
def spawn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Spawn]:
    """Start node processes on loopback; all are SIGKILLed at the end whatever happens.

    On failure, the tail of each node's log is printed to help the reader.
    """
    agents: list[AgentProcess] = []

    def start(**kwargs: Any) -> AgentProcess:
        log = tmp_path / f"node{len(agents)}.log"
        agent = AgentProcess(log_path=log, **kwargs)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.kill()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for agent in agents:
            if agent.log_path and agent.log_path.exists():
                tail = agent.log_path.read_text(errors="replace").splitlines()[-40:]
                print(f"--- {agent!r} log tail ---", *tail, sep="\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# Hypothesis: reproducible in CI (the same examples every run), random on developer machines.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


Connect = Callable[..., Awaitable[ChatClient]]
"""``await connect(gateway, name=None, *, ws=False, **options)``: a chat client."""


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open clients, over TCP or with ``ws=True`` a WebSocket (registered when given a name);
    all are closed at the end."""
    clients: list[ChatClient] = []

    async def open_client(gateway: GatewayProcess, name: str | None = None, *, ws: bool = False,
                          **options: Any) -> ChatClient:
        if ws:
            # Imported only here: the WebSocket client needs the chat extra (websockets).
            from examples.chat_gateway.client import WebSocketChatClient  # noqa: PLC0415
            assert gateway.ws_url is not None
            client: ChatClient = await WebSocketChatClient.connect_ws(gateway.ws_url, **options)
        else:
            client = await ChatClient.connect(gateway.host, gateway.port, **options)
        clients.append(client)
        if name is not None:
            answer = await client.request("register", name=name)
            assert answer["type"] == "registered", answer
        return client

    yield open_client
    for client in clients:
        await client.close()
