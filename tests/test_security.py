"""Access control, origins, CORS and connection limits."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from signaling.security import normalize_origin
from tests.aiortc_viewer import AiortcViewer, assert_serves_a_viewer
from tests.conftest import ServerFactory, eventually, service_of, ws_url

TOKEN = "s3cret-test-token"
PROTECTED = ["/", "/capture", "/check", "/api/status", "/snapshot.jpg", "/stream.mjpg"]


@pytest.fixture
async def guarded(make_server: ServerFactory) -> TestServer:
    return await make_server(token=TOKEN)


async def _status_of(http: aiohttp.ClientSession, url: Any, **kwargs: Any) -> int:
    async with http.get(url, allow_redirects=False, **kwargs) as response:
        return response.status


@pytest.mark.parametrize("path", PROTECTED)
async def test_every_endpoint_refuses_a_request_without_the_token(
    guarded: TestServer, path: str
) -> None:
    """A private camera shows nothing, and says why, to whoever lacks the token."""
    async with aiohttp.ClientSession() as http:
        async with http.get(guarded.make_url(path)) as response:
            assert response.status == 401
            assert "token" in await response.text()
        assert await _status_of(http, guarded.make_url(path), params={"token": "wrong"}) == 401


@pytest.mark.parametrize("path", ["/ws", "/video"])
async def test_websockets_without_the_token_are_closed_with_a_reason(
    guarded: TestServer, path: str
) -> None:
    """The page can only read a close reason, so a refused socket must carry one."""
    url = str(guarded.make_url(path)).replace("http", "ws", 1)
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4401)
        assert "unauthorized" in (msg.extra or "")
    assert len(service_of(guarded).viewers) == 0


async def test_the_token_is_accepted_from_query_header_and_cookie(guarded: TestServer) -> None:
    """URLs for VLC, a header for scripts, a cookie for the page: all open the door."""
    url = guarded.make_url("/snapshot.jpg")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert await _status_of(http, url, params={"token": TOKEN}) == 200
        assert await _status_of(http, url, headers={"Authorization": f"Bearer {TOKEN}"}) == 200
        assert await _status_of(http, url) == 401
        async with http.get(guarded.make_url("/"), params={"token": TOKEN, "codec": "h264"},
                            allow_redirects=False) as response:  # fmt: skip
            assert response.status == 303
            # Relative: the redirect stays under a reverse proxy's path prefix.
            assert response.headers["Location"] == "./?codec=h264"
        assert await _status_of(http, url) == 200  # the cookie from the redirect
        assert await _status_of(http, guarded.make_url("/static/peercam-view.js")) == 200


async def test_a_viewer_with_the_token_gets_video(guarded: TestServer) -> None:
    """Access control must not get in the way of the real thing."""
    viewer = AiortcViewer(ws_url(guarded) + f"?token={TOKEN}", decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(10, timeout=15)
    finally:
        await viewer.close()


async def test_foreign_origins_are_refused_and_allowed_ones_get_cors(
    make_server: ServerFactory,
) -> None:
    """Another site's page must not watch the camera through the viewer's browser."""
    server = await make_server(allow_origins=("https://embed.example",))
    url = ws_url(server)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, origin="https://evil.example") as refused:
            msg = await refused.receive(timeout=10)  # the close, with nothing before it
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4403)
            assert "https://evil.example" in (msg.extra or "")
            assert "--allow-origin" in (msg.extra or "")
        async with http.ws_connect(url, origin="https://embed.example") as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "config"
        async with http.ws_connect(url, origin=str(server.make_url("/")).rstrip("/")) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "config"
        snapshot = server.make_url("/snapshot.jpg")
        async with http.get(snapshot, headers={"Origin": "https://embed.example"}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "https://embed.example"
        async with http.get(snapshot, headers={"Origin": "https://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


def test_allow_origin_values_are_checked() -> None:
    """A path or a typo in --allow-origin is an error at start, not a silent no-match."""
    assert normalize_origin("HTTPS://Example.org/") == "https://example.org"
    with pytest.raises(ValueError, match="scheme://host"):
        normalize_origin("example.org")
    with pytest.raises(ValueError, match="scheme://host"):
        normalize_origin("https://example.org/viewer")


async def test_one_address_cannot_take_every_connection(make_server: ServerFactory) -> None:
    """A per-address cap keeps one misbehaving client from starving everyone else."""
    server = await make_server(max_per_address=2)
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(ws_url(server))
        second = await http.ws_connect(ws_url(server))
        try:
            async with http.ws_connect(ws_url(server)) as third:
                msg = await third.receive(timeout=10)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
                assert "too many connections" in (msg.extra or "")
            async with http.get(server.make_url("/stream.mjpg")) as mjpeg:
                assert mjpeg.status == 429
        finally:
            await first.close()
            await second.close()
        await eventually(lambda: not service_of(server).connections)
        async with http.ws_connect(ws_url(server)) as again:
            assert (await again.receive_json(timeout=10))["type"] == "config"


async def test_a_flooding_client_is_rate_limited_then_closed(server: TestServer) -> None:
    """Signaling floods get typed errors, then a policy close; the server carries on."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        await ws.receive_json(timeout=10)
        for _ in range(600):
            await ws.send_str('{"type":"bye-bye"}')
        codes: list[str] = []
        async with asyncio.timeout(20):
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                codes.append(msg.json()["code"])
        assert "unknown-type" in codes
        assert "rate-limited" in codes
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
    await assert_serves_a_viewer(ws_url(server), 5)
