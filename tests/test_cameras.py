"""Several cameras in one server: each its own routes, encoders and viewers; a failing one named
by /healthz and harmless to the others; limits and access control across all of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from signaling.app import create_app
from signaling.config import CameraConfig, Config
from signaling.security import route_path
from signaling.state import Site
from tests.aiortc_viewer import AiortcViewer
from tests.conftest import LOOPBACK_CONFIG
from tests.test_faults import FakeCamera
from webrtc.encoders import Codec
from webrtc.sources import CaptureSource, Source, SourceSpec, TestPatternSource

CAMERAS = (
    CameraConfig("yard", SourceSpec("test")),
    CameraConfig("door", SourceSpec("camera", "/dev/video74"), codecs=(Codec.H264,)),
)

Start = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Servers with several cameras, sources given by name; all closed after the test."""
    servers: list[TestServer] = []

    async def run(sources: dict[str, Source], **overrides: Any) -> TestServer:
        config = replace(LOOPBACK_CONFIG, cameras=CAMERAS, **overrides)
        server = TestServer(create_app(config, sources=sources), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return server

    yield run
    for server in servers:
        await server.close()


def _fake_door(camera: FakeCamera) -> CaptureSource:
    """The door camera through the capture-device double (320x240), not opened yet."""
    return CaptureSource(
        "camera", "/dev/video74", width=320, height=240, device_factory=camera.open
    )


def _width(jpeg: bytes) -> int:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return int(image.shape[1])


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, dict[str, str]]:
    async with http.get(url, allow_redirects=False) as response:
        return response.status, await response.read(), dict(response.headers)


async def _health(http: aiohttp.ClientSession, server: TestServer) -> tuple[int, dict[str, Any]]:
    async with http.get(server.make_url("/healthz")) as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def _until_health(
    http: aiohttp.ClientSession,
    server: TestServer,
    status: int,
    failing: list[str] | None = None,
    timeout: float = 15,
) -> dict[str, Any]:
    """/healthz once it answers ``status`` (and names exactly ``failing``, if given)."""
    async with asyncio.timeout(timeout):
        while True:
            got, body = await _health(http, server)
            if got == status and failing in (None, body["failing"]):
                return body
            await asyncio.sleep(0.1)  # polling the server's own account: no event to wait on


def test_route_path_strips_only_a_camera_prefix() -> None:
    """The middleware checks /cam/NAME/ws as /ws; other paths must stay what they are."""
    assert route_path("/cam/yard/ws") == "/ws"
    assert route_path("/cam/yard/") == "/"
    assert route_path("/cam/yard") == "/cam/yard"  # the redirect, not the page
    assert route_path("/cam/Bad!/ws") == "/cam/Bad!/ws"
    assert route_path("/ws") == "/ws"


async def test_each_camera_has_its_own_routes_size_and_codecs(start: Start) -> None:
    """/cam/NAME/ serves that camera only; the default (first) keeps today's root routes."""
    camera = FakeCamera()
    door = _fake_door(camera)
    door.open()
    server = await start({"yard": TestPatternSource(640, 480), "door": door})
    async with aiohttp.ClientSession() as http:
        status, body, _ = await _get(http, str(server.make_url("/cam/door/snapshot.jpg")))
        assert status == 200
        assert _width(body) == 320
        status, body, _ = await _get(http, str(server.make_url("/cam/yard/snapshot.jpg")))
        assert status == 200
        assert _width(body) == 640
        status, body, _ = await _get(http, str(server.make_url("/snapshot.jpg")))
        assert status == 200
        assert _width(body) == 640
        status, body, _ = await _get(http, str(server.make_url("/")))
        assert b"wall.js" in body  # several cameras: the wall
        status, body, _ = await _get(http, str(server.make_url("/cam/door/")))
        assert b"<peercam-view" in body
        status, body, _ = await _get(http, str(server.make_url("/cam/door/static/peercam-view.js")))
        assert status == 200  # the page's relative script URL resolves under its camera
        status, _, headers = await _get(http, str(server.make_url("/cam/door")))
        assert status == 308
        assert headers["Location"] == "door/"
        status, _, _ = await _get(http, str(server.make_url("/cam/nope/")))
        assert status == 404
        async with http.get(server.make_url("/api/status")) as response:
            status_json = await response.json()
        assert status_json["source"]["kind"] == "test"  # today's JSON: the default camera
        assert set(status_json["cameras"]) == {"yard", "door"}
        assert status_json["cameras"]["door"]["source"]["width"] == 320
        # Each camera's /ws offers its own codecs.
        async with http.ws_connect(str(server.make_url("/cam/door/ws"))) as ws:
            door_config = await ws.receive_json(timeout=5)
        async with http.ws_connect(str(server.make_url("/ws"))) as ws:
            yard_config = await ws.receive_json(timeout=5)
    assert door_config["codecs"] == ["h264"]
    assert yard_config["codecs"] == ["vp8", "h264"]
    site = server.app[Site.KEY]
    assert not site.cameras["yard"].encoders.running()  # nobody watches: no video encoder


async def test_a_webrtc_viewer_of_one_camera_starts_only_that_cameras_encoder(
    start: Start,
) -> None:
    """Encoders are per camera and start only while someone watches that camera."""
    camera = FakeCamera()
    door = _fake_door(camera)
    door.open()
    server = await start({"yard": TestPatternSource(), "door": door})
    viewer = AiortcViewer(str(server.make_url("/cam/door/ws")).replace("http", "ws", 1))
    try:
        await viewer.connect()
        await viewer.wait_frames(10, timeout=20)
        assert viewer.received.width == 320  # the door camera's pictures, not the yard's
        site = server.app[Site.KEY]
        assert site.cameras["door"].encoders.running()
        assert not site.cameras["yard"].encoders.running()
        assert len(site.cameras["door"].viewers) == 1
        assert not site.cameras["yard"].viewers
    finally:
        await viewer.close()


async def test_a_camera_failing_at_start_is_named_by_healthz_and_recovers_alone(
    start: Start,
) -> None:
    """An unplugged camera shows "no signal", /healthz says which, the other keeps serving;
    when it comes back, /healthz is 200 again by itself."""
    camera = FakeCamera()
    camera.plugged.clear()  # unplugged at boot: the source cannot be opened
    server = await start({"yard": TestPatternSource(), "door": _fake_door(camera)})
    async with aiohttp.ClientSession() as http:
        # The yard is "starting" for a moment (not delivering yet), then only the door fails.
        body = await _until_health(http, server, 503, ["door"])
        assert body["status"] == "failing"
        assert body["cameras"]["yard"]["delivering"] is True
        assert "/dev/video74" not in str(body)  # no descriptions: the probe needs no token
        status, _, headers = await _get(http, str(server.make_url("/cam/door/tile.jpg")))
        assert status == 200
        assert headers["X-Live"] == "0"
        status, _picture, headers = await _get(http, str(server.make_url("/cam/yard/tile.jpg")))
        assert status == 200
        assert headers["X-Live"] == "1"
        seq = int(headers["X-Seq"])
        status, _, headers = await _get(
            http, str(server.make_url(f"/cam/yard/tile.jpg?after={seq}"))
        )
        assert status == 200
        assert int(headers["X-Seq"]) > seq
        camera.plugged.set()
        body = await _until_health(http, server, 200)
        assert body == {
            "status": "ok",
            "failing": [],
            "cameras": body["cameras"],
        }
        assert all(c["delivering"] for c in body["cameras"].values())
        camera.plugged.clear()  # unplugged while running
        body = await _until_health(http, server, 503, ["door"])
        assert body["cameras"]["door"]["state"] == "reconnecting"


async def test_tiles_of_a_camera_share_one_small_encoder(start: Start) -> None:
    """A wall of N cameras costs N small encoders, however many walls watch."""
    camera = FakeCamera()
    door = _fake_door(camera)
    door.open()
    server = await start({"yard": TestPatternSource(640, 480), "door": door})
    async with aiohttp.ClientSession() as http:
        replies = await asyncio.gather(
            *(_get(http, str(server.make_url("/cam/yard/tile.jpg"))) for _ in range(8))
        )
        assert all(status == 200 for status, _, _ in replies)
        assert {_width(body) for _, body, _ in replies} == {320}
        status, _, _ = await _get(http, str(server.make_url("/cam/yard/tile.jpg?after=x")))
        assert status == 400
    site = server.app[Site.KEY]
    assert site.cameras["yard"].tiles.started == 1
    assert site.cameras["door"].tiles.started == 0  # nobody asked for the door's tiles
    assert not site.cameras["yard"].jpeg.running()  # tiles do not use the viewers' encoders


async def test_limits_and_access_control_count_across_cameras(start: Start) -> None:
    """Two cameras must not double what one client may hold, nor open a door without a token;
    /healthz is for monitoring probes, which carry no token."""
    camera = FakeCamera()
    door = _fake_door(camera)
    door.open()
    server = await start(
        {"yard": TestPatternSource(), "door": door},
        token="secret-token-123",
        max_per_address=2,
    )
    headers = {"Authorization": "Bearer secret-token-123"}
    async with aiohttp.ClientSession() as http:
        status, _, _ = await _get(http, str(server.make_url("/cam/door/snapshot.jpg")))
        assert status == 401
        async with http.ws_connect(str(server.make_url("/cam/door/ws"))) as ws:
            message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == 4401
        status, _, _ = await _get(http, str(server.make_url("/api/cameras")))
        assert status == 401
        body = await _until_health(http, server, 200)  # no token needed
        assert body["status"] == "ok"
        streams = [
            await http.get(server.make_url(path), headers=headers)
            for path in ("/cam/yard/stream.mjpg", "/cam/door/stream.mjpg")
        ]
        try:
            assert [s.status for s in streams] == [200, 200]
            async with http.get(server.make_url("/stream.mjpg"), headers=headers) as third:
                assert third.status == 429  # the cap is per client across every camera
        finally:
            for stream in streams:
                stream.close()
    site = server.app[Site.KEY]
    assert all(c.connections is site.connections for c in site.cameras.values())  # one count


def test_camera_configs_are_validated() -> None:
    """Names become URL paths and must be safe; two cameras cannot share one."""
    with pytest.raises(ValueError, match="camera name"):
        CameraConfig("Bad Name")
    with pytest.raises(ValueError, match="camera names must differ"):
        Config(cameras=(CameraConfig("a"), CameraConfig("a")))
    with pytest.raises(ValueError, match="--width"):
        CameraConfig("a", width=5)
    config = Config(
        cameras=(CameraConfig("a"), CameraConfig("b", bitrate=400_000)), bitrate=1_000_000
    )
    assert config.camera("a").bitrate == 1_000_000  # the server's where the camera has none
    assert config.camera("b").bitrate == 400_000
    assert config.default_camera.name == "a"
