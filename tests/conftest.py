"""Fixtures: a real peercam server on loopback with the test pattern as its source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
from aiohttp.test_utils import TestServer

from signaling.app import create_app
from signaling.config import Config
from signaling.state import Service
from webrtc.sources import TestPatternSource

# Every test client is 127.0.0.1: the per-address cap is tested on its own (test_security).
# The ``playwright`` and ``browser`` fixtures of the browser tests; the network lab's
# ``viewer_net`` and ``make_viewer_net``.
pytest_plugins = ["tests.browser", "tests.netlab"]

# Per-client limits are tested on their own (test_hostile_http), from another address.
LOOPBACK_CONFIG = Config(ice_addresses=("127.0.0.1",), max_per_address=1000, snapshot_rate=1000)

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start peercam servers on 127.0.0.1 (ephemeral ports); all are closed after the test.

    ``host=`` binds elsewhere (``"0.0.0.0"``: also reachable from the network lab's viewer
    namespaces); every other keyword overrides a field of the loopback :class:`Config`.
    """
    servers: list[TestServer] = []

    async def start(**overrides: object) -> TestServer:
        source_args = overrides.pop("pattern", {})
        host = str(overrides.pop("host", "127.0.0.1"))
        if host != "127.0.0.1" and "allow_hosts" not in overrides:
            # Without a token peercam answers loopback Host names only: the lab's viewers use
            # the veth addresses, and clients of a 0.0.0.0 server may name it so.
            ice = overrides.get("ice_addresses", ())
            assert isinstance(ice, tuple)
            overrides["allow_hosts"] = (*(a for a in ice if a != "127.0.0.1"), host)
        config = replace(LOOPBACK_CONFIG, **overrides)  # type: ignore[arg-type]
        app = create_app(config, source=TestPatternSource(**source_args))  # type: ignore[arg-type]
        server = TestServer(app, host=host, port=0)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def server(make_server: ServerFactory) -> TestServer:
    return await make_server()


async def eventually(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll server state until ``predicate()`` holds; the bound is generous, not a timing
    claim. For state with no event to wait on (counts that drop when a peer is cleaned up)."""
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)  # polling another component's state: no event exists


def service_of(server: TestServer) -> Service:
    return server.app[Service.KEY]


def ws_url(server: TestServer) -> str:
    return str(server.make_url("/ws")).replace("http://", "ws://")
