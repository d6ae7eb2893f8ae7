"""`/metrics`: Prometheus text a scraper can parse, with counters that move while people watch."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import prometheus_client
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from signaling import messages
from signaling.app import create_app
from signaling.config import CameraConfig
from signaling.metrics import REGISTRY_KEY, _Kept
from tests.aiortc_viewer import AiortcViewer
from tests.conftest import LOOPBACK_CONFIG, ServerFactory, eventually, service_of, ws_url
from tests.test_faults import HEIGHT, WIDTH, FakeCamera
from webrtc.sources import CaptureSource, SourceSpec, TestPatternSource

Labels = dict[str, str]


class Scrape:
    """One parsed scrape: every sample by name, queried by a subset of its labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def find(self, name: str, jpeg: bool | None = None, **labels: str) -> Iterator[Sample]:
        """Samples of ``name`` with these labels (``jpeg``: of JPEG or of video encoders)."""
        for s in self.samples:
            kind = jpeg is None or s.labels.get("encoder", "").startswith("jpeg/") == jpeg
            if s.name == name and kind and all(s.labels.get(k) == v for k, v in labels.items()):
                yield s

    def value(self, name: str, jpeg: bool | None = None, **labels: str) -> float:
        """The sum over matching samples (0 when none match)."""
        return sum(s.value for s in self.find(name, jpeg, **labels))

    def encoders(self, *, jpeg: bool) -> set[str]:
        """The encoders that have encoded something (running or not)."""
        samples = self.find("peercam_frames_encoded_total", jpeg)
        return {s.labels["encoder"] for s in samples if s.value > 0}


async def scrape(server: TestServer, token: str | None = None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.make_url("/metrics"), headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return Scrape(await response.text())


async def _jpeg_pictures(ws: aiohttp.ClientWebSocketResponse, count: int) -> None:
    for _ in range(count):
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        await ws.send_json({"type": "ack"})


async def test_counters_move_and_the_viewer_gauge_matches_while_viewers_watch(
    server: TestServer,
) -> None:
    """The numbers a monitoring system alerts on, read while a WebRTC and a JPEG viewer watch."""
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(5, timeout=15)
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as jpeg:
            await jpeg.receive_json(timeout=10)
            await jpeg.send_json({"type": "jpeg", "quality": 60})
            await _jpeg_pictures(jpeg, 3)
            service = service_of(server)
            await eventually(
                lambda: any(p.stats()["state"] == "connected" for p in service.peers.peers())
            )
            first = await scrape(server)
            await viewer.wait_frames(viewer.received.frames + 10, timeout=15)
            await _jpeg_pictures(jpeg, 10)
            second = await scrape(server)

            # Under load a viewer may change rung between scrapes (the ladder, the JPEG credit
            # rungs): encoders are summed by kind, and each viewer's rung is one that runs.
            video, jpegs = second.encoders(jpeg=False), second.encoders(jpeg=True)
            (webrtc_viewer,) = second.find("peercam_viewers", camera="default", mode="webrtc")
            assert webrtc_viewer.value == 1
            assert webrtc_viewer.labels["codec"] == "vp8"
            assert webrtc_viewer.labels["rung"] in video, (webrtc_viewer, video)
            (jpeg_viewer,) = second.find("peercam_viewers", mode="jpeg")
            assert jpeg_viewer.value == 1
            assert f"jpeg/{jpeg_viewer.labels['rung']}" in jpegs, (jpeg_viewer, jpegs)
            assert second.value("peercam_viewers", mode="mjpeg") == 0
            for name, labels, kind in [
                ("peercam_frames_captured_total", {"camera": "default"}, None),
                ("peercam_frames_sent_total", {"mode": "webrtc"}, None),
                ("peercam_frames_sent_total", {"mode": "jpeg"}, None),
                ("peercam_frames_encoded_total", {}, False),
                ("peercam_frames_encoded_total", {}, True),
                ("peercam_encode_seconds_count", {}, False),
                ("peercam_encode_seconds_count", {}, True),
            ]:
                before = first.value(name, jpeg=kind, **labels)
                after = second.value(name, jpeg=kind, **labels)
                assert after > before > 0, (name, labels, kind, before, after)
            assert second.value("peercam_frames_sent_total", mode="jpeg") >= 13
            for encoder in video | jpegs:
                count = second.value("peercam_encode_seconds_count", encoder=encoder)
                inf = second.value("peercam_encode_seconds_bucket", encoder=encoder, le="+Inf")
                assert inf == count
                assert second.value("peercam_encode_seconds_sum", encoder=encoder) > 0
                assert second.value("peercam_encoders_started_total", encoder=encoder) >= 1
            assert second.value("peercam_source_state", state="live") == 1
            assert second.value("peercam_source_state", state="reconnecting") == 0
            assert second.value("peercam_source_reconnects_total") == 0
            lag = list(second.find("peercam_event_loop_lag_seconds"))
            assert {s.labels["quantile"] for s in lag} == {"0.5", "0.99", "1"}
            assert all(0 <= s.value < 5 for s in lag)
            assert second.value("peercam_asyncio_tasks") > 0
            assert second.value("process_resident_memory_bytes") > 10e6
            assert second.value("process_open_fds") > 0

            # What the viewer says it sees: counted per mode; a bad report is refused.
            await jpeg.send_json({"type": "viewer-stats", "fps": 0.5, "freezes": 2})
            await jpeg.send_json({"type": "viewer-stats", "fps": -1, "freezes": 0})
            while (reply := await jpeg.receive(timeout=10)).type == aiohttp.WSMsgType.BINARY:
                pass  # pictures in flight
            error = reply.json()
            assert (error["type"], error["code"], error["inReplyTo"]) == (
                "error", "invalid-field", "viewer-stats",
            )  # fmt: skip
            assert viewer.ws is not None
            await viewer.ws.send_json(
                {"type": "viewer-stats", "fps": 29.5, "freezes": 0, "pictureAgeMs": 80}
            )
            reports = service.viewer_reports.reports
            await eventually(lambda: reports["jpeg"] == 1 and reports["webrtc"] == 1)
            third = await scrape(server)
            assert third.value("peercam_viewer_freezes_total", mode="jpeg") == 2
            assert third.value("peercam_viewer_freezes_total", mode="webrtc") == 0
            assert third.value("peercam_viewer_fps_bucket", mode="jpeg", le="1.0") == 1
            assert third.value("peercam_viewer_fps_bucket", mode="webrtc", le="25.0") == 0
            assert third.value("peercam_viewer_fps_bucket", mode="webrtc", le="29.0") == 0
            assert third.value("peercam_viewer_fps_bucket", mode="webrtc", le="60.0") == 1
            assert third.value("peercam_viewer_picture_age_seconds_sum", mode="webrtc") == 0.08
            assert third.value("peercam_viewer_picture_age_seconds_count", mode="jpeg") == 0
        sent_jpeg = third.value("peercam_frames_sent_total", mode="jpeg")
        await eventually(lambda: not service.jpeg_streams)
    finally:
        await viewer.close()
    await eventually(lambda: not service.peers.peers())
    gone = await scrape(server)
    assert gone.value("peercam_viewers", mode="webrtc") == 0
    assert gone.value("peercam_viewers", mode="jpeg") == 0
    # Counters never go back when the viewers and encoders that held them are gone.
    assert gone.value("peercam_frames_sent_total", mode="jpeg") >= sent_jpeg
    assert gone.value("peercam_frames_sent_total", mode="webrtc") >= second.value(
        "peercam_frames_sent_total", mode="webrtc"
    )
    for encoder in video | jpegs:  # stopped with their last viewer: their counts stay
        counted = second.value("peercam_frames_encoded_total", encoder=encoder)
        assert gone.value("peercam_frames_encoded_total", encoder=encoder) >= counted


async def test_metrics_need_the_token_like_the_status(make_server: ServerFactory) -> None:
    """Viewer counts tell when a site is watched: a scraper must hold the token."""
    server = await make_server(token="metrics-secret")
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/metrics")) as response:
            assert response.status == 401
        async with http.get(server.make_url("/metrics?token=wrong")) as response:
            assert response.status == 401
    scraped = await scrape(server, token="metrics-secret")
    assert scraped.value("peercam_source_state", camera="default", state="live") in (0, 1)


async def test_each_app_has_its_own_registry(make_server: ServerFactory) -> None:
    """Two servers in one process never mix their numbers, nor use the library's global one."""
    one, two = await make_server(), await make_server()
    assert one.app[REGISTRY_KEY] is not two.app[REGISTRY_KEY]
    service_of(one).fallbacks["no-codec"] += 3
    assert (await scrape(one)).value("peercam_fallbacks_total", reason="no-codec") == 3
    assert (await scrape(two)).value("peercam_fallbacks_total", reason="no-codec") == 0
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("peercam") for name in global_names)


async def test_an_unplugged_camera_shows_in_source_state_and_reconnects() -> None:
    camera = FakeCamera()
    source = CaptureSource(
        "camera", "/dev/video74", width=WIDTH, height=HEIGHT, device_factory=camera.open
    )
    source.open()
    server = TestServer(create_app(LOOPBACK_CONFIG, source=source), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        assert (await scrape(server)).value("peercam_source_state", state="live") == 1
        camera.plugged.clear()
        await eventually(lambda: source.state == "reconnecting")
        down = await scrape(server)
        assert down.value("peercam_source_state", state="reconnecting") == 1
        assert down.value("peercam_source_state", state="live") == 0
        assert down.value("peercam_source_reconnects_total", camera="default") == 1
        camera.plugged.set()
        await eventually(lambda: source.state == "live")
        assert (await scrape(server)).value("peercam_source_reconnects_total") == 1
    finally:
        await server.close()


def test_kept_sums_survive_objects_that_leave_or_reuse_a_key() -> None:
    """A counter summed over viewers must not drop when one leaves, nor when an id is reused."""
    kept = _Kept()
    assert kept.total("s", [("a", (5.0,)), ("b", (2.0,))], 1) == (7.0,)
    assert kept.total("s", [("a", (6.0,))], 1) == (8.0,)  # b left with its 2
    assert kept.total("s", [("a", (1.0,))], 1) == (9.0,)  # a new object under a's key
    assert kept.total("s", [], 1) == (9.0,)
    assert kept.total("other", [], 2) == (0.0, 0.0)


def _stats(**fields: Any) -> str:
    return json.dumps({"type": "viewer-stats", **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"fps": 30, "freezes": 0}, messages.ViewerStats(30.0, 0, None)),
        ({"fps": 12.5, "freezes": 3, "pictureAgeMs": 41.5}, messages.ViewerStats(12.5, 3, 41.5)),
        ({"fps": 0, "freezes": 0, "pictureAgeMs": -3}, messages.ViewerStats(0.0, 0, 0.0)),
        ({"fps": 30, "freezes": 0, "pictureAgeMs": None}, messages.ViewerStats(30.0, 0, None)),
    ],
)
def test_viewer_stats_parse(fields: dict[str, Any], expected: messages.ViewerStats) -> None:
    assert messages.parse_message(_stats(**fields)) == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"freezes": 0},
        {"fps": 30},
        {"fps": "30", "freezes": 0},
        {"fps": True, "freezes": 0},
        {"fps": math.inf, "freezes": 0},
        {"fps": math.nan, "freezes": 0},
        {"fps": 241, "freezes": 0},
        {"fps": 30, "freezes": -1},
        {"fps": 30, "freezes": 1.5},
        {"fps": 30, "freezes": 1001},
        {"fps": 30, "freezes": 0, "pictureAgeMs": -5000},
        {"fps": 30, "freezes": 0, "pictureAgeMs": 1e12},
        {"fps": 30, "freezes": 0, "pictureAgeMs": "80"},
    ],
)
def test_viewer_stats_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(messages.ProtocolError) as refused:
        messages.parse_message(_stats(**fields))
    assert refused.value.in_reply_to == "viewer-stats"
    assert refused.value.code == "invalid-field"


async def test_viewer_stats_before_any_video_is_refused(server: TestServer) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        await ws.receive_json(timeout=10)
        await ws.send_json({"type": "viewer-stats", "fps": 30, "freezes": 0})
        error = await ws.receive_json(timeout=10)
        assert (error["code"], error["inReplyTo"]) == ("unexpected", "viewer-stats")
    assert not service_of(server).viewer_reports.reports


@pytest.mark.browser
async def test_the_page_reports_what_it_sees(server: TestServer, browser: Browser) -> None:
    """peercam-view.js sends viewer-stats every few seconds while it plays: over WebRTC, and
    in JPEG mode (a browser without RTCPeerConnection) with the picture's age as well."""
    webrtc, jpeg = await browser.new_context(), await browser.new_context()
    try:
        await jpeg.add_init_script("delete window.RTCPeerConnection;")
        for context in (webrtc, jpeg):
            await (await context.new_page()).goto(str(server.make_url("/")))
        reports = service_of(server).viewer_reports
        await eventually(lambda: min(reports.reports["webrtc"], reports.reports["jpeg"]), 30)
        scraped = await scrape(server)
        # Both pages watch (on a loaded machine the WebRTC one may have fallen back to JPEG).
        assert (
            scraped.value("peercam_viewers", mode="webrtc")
            + scraped.value("peercam_viewers", mode="jpeg")
            == 2
        ), scraped.text
        for mode in ("webrtc", "jpeg"):
            assert scraped.value("peercam_viewer_reports_total", mode=mode) >= 1
            fps = reports.fps[mode]
            assert fps.sum > 0, (mode, fps.counts)  # pictures were drawn (the pattern: 30 fps)
        assert "webrtc" not in reports.age  # a WebRTC picture carries no capture time
        age = reports.age["jpeg"]
        assert 0 <= age.sum / age.count < 5  # same machine, same clock: loosely bounded
        assert scraped.value("peercam_viewer_picture_age_seconds_count", mode="jpeg") >= 1
    finally:
        await webrtc.close()
        await jpeg.close()


async def test_status_process_figures_agree_with_the_process_collector(server: TestServer) -> None:
    """/api/status (psutil) and /metrics (prometheus-client) read the same process."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.make_url("/api/status")) as response,
    ):
        process = (await response.json())["process"]
    scraped = await scrape(server)
    rss = scraped.value("process_resident_memory_bytes")
    assert abs(process["rssMb"] * 2**20 - rss) < 0.2 * rss, (process, rss)
    assert abs(process["fds"] - scraped.value("process_open_fds")) <= 8, process
    assert process["tasks"] > 0


async def test_every_camera_has_its_own_series() -> None:
    """Several cameras: one scrape of the root names each, and a viewer of one camera, or
    one camera failing, shows under that camera only."""
    cameras = (
        CameraConfig("yard", SourceSpec("test")),
        CameraConfig("door", SourceSpec("camera", "/dev/video74")),
    )
    door_camera = FakeCamera()
    door_camera.plugged.clear()  # unplugged from the start: "no signal", retried
    door = CaptureSource(
        "camera", "/dev/video74", width=WIDTH, height=HEIGHT, device_factory=door_camera.open
    )
    config = replace(LOOPBACK_CONFIG, cameras=cameras)
    sources = {"yard": TestPatternSource(), "door": door}
    server = TestServer(create_app(config, sources=sources), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        url = str(server.make_url("/cam/yard/ws")).replace("http://", "ws://")
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.receive_json(timeout=10)
            await ws.send_json({"type": "jpeg"})
            await _jpeg_pictures(ws, 3)
            await eventually(lambda: door.state == "reconnecting")
            scraped = await scrape(server)
        assert scraped.value("peercam_viewers", camera="yard", mode="jpeg") == 1
        assert scraped.value("peercam_viewers", camera="door", mode="jpeg") == 0
        assert scraped.value("peercam_frames_sent_total", camera="yard", mode="jpeg") >= 3
        assert scraped.value("peercam_frames_sent_total", camera="door", mode="jpeg") == 0
        assert scraped.value("peercam_source_state", camera="yard", state="live") == 1
        assert scraped.value("peercam_source_state", camera="door", state="reconnecting") == 1
        assert scraped.value("peercam_source_reconnects_total", camera="door") == 1
        assert scraped.value("peercam_source_reconnects_total", camera="yard") == 0
        # The root serves it, no camera does.
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.make_url("/cam/yard/metrics")) as response,
        ):
            assert response.status == 404
    finally:
        await server.close()
