"""``/metrics``: Prometheus text format, read from the live objects at scrape time.

One :class:`~prometheus_client.CollectorRegistry` per application (never the library's global
one), holding the client's process collector and a :class:`PeercamCollector` that walks the
cameras it was given — ``(name, Service)`` pairs, re-read at every scrape so a server with
several cameras passes a live view of them — and reports what each one's source, encoders and
viewers already count. Nothing is counted twice: the only state kept here is what makes
counters monotonic while the workers and viewers that hold them come and go (:class:`_Kept`),
and the viewers' own reports (:class:`ViewerReports`), which exist nowhere else.

Scrapes run on the event loop (the handler calls the collector directly): the objects read
belong to the loop, and a scrape of a few cameras takes well under a millisecond.

Access: ``/metrics`` is guarded like ``/api/status`` (the token, by ``Authorization: Bearer``,
``?token=`` or the cookie): viewer counts and fallback reasons tell when a site is watched.
Prometheus passes it with ``authorization: {credentials_file: …}`` (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, get_args

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from webrtc.histogram import Histogram
from webrtc.sources import SourceState

from . import messages
from .janus import FeedState

if TYPE_CHECKING:
    from .state import Service

#: What viewers report, per mode: frames per second they see, and how old the picture is.
FPS_BUCKETS = (1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 29.0, 60.0)
AGE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class ViewerReports:
    """What the pages reported seeing (``viewer-stats`` messages), summed per mode."""

    def __init__(self) -> None:
        self.fps: dict[str, Histogram] = {}
        self.age: dict[str, Histogram] = {}
        self.freezes: Counter[str] = Counter()
        self.reports: Counter[str] = Counter()

    def record(self, mode: str, stats: messages.ViewerStats) -> None:
        self.reports[mode] += 1
        self.freezes[mode] += stats.freezes
        self.fps.setdefault(mode, Histogram(FPS_BUCKETS)).observe(stats.fps)
        if stats.picture_age_ms is not None:
            self.age.setdefault(mode, Histogram(AGE_BUCKETS)).observe(stats.picture_age_ms / 1000)


Vector = tuple[float, ...]


class _Kept:
    """Sums that stay monotonic while the objects counted come and go between scrapes.

    A series (``("default", "webrtc")``) is the sum over live objects (each named by a key,
    e.g. ``id(worker)``) of a vector of counts. An object seen before and gone now, or whose
    counts went down (its key was reused by a new one), leaves its last counts behind: what it
    did after the last scrape is lost, the total never goes back.
    """

    def __init__(self) -> None:
        self._seen: dict[Hashable, dict[Hashable, Vector]] = {}
        self._gone: dict[Hashable, Vector] = {}

    def total(
        self, series: Hashable, live: Iterable[tuple[Hashable, Vector]], width: int
    ) -> Vector:
        seen = self._seen.setdefault(series, {})
        now = dict(live)
        gone = self._gone.get(series, (0.0,) * width)
        for key, last in seen.items():
            current = now.get(key)
            if current is None or any(c < p for c, p in zip(current, last, strict=True)):
                gone = _add(gone, last)
        self._gone[series] = gone
        self._seen[series] = now
        total = gone
        for counts in now.values():
            total = _add(total, counts)
        return total


def _add(a: Vector, b: Vector) -> Vector:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _vector(h: Histogram) -> Vector:
    return (*map(float, h.counts), h.sum)


def _buckets(bounds: Sequence[float], vector: Vector) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from per-bucket counts (the last one is +Inf)."""
    out, running = [], 0.0
    for bound, count in zip([*map(str, bounds), "+Inf"], vector[:-1], strict=True):
        running += count
        out.append((bound, running))
    return out


class PeercamCollector(Collector):
    """Every camera's viewers, frames, encoders, fallbacks, source and viewers' reports."""

    def __init__(self, cameras: Iterable[tuple[str, Service]]) -> None:
        self._cameras = cameras
        self._kept = _Kept()

    def collect(self) -> Iterator[Metric]:
        cameras = list(self._cameras)
        viewers = GaugeMetricFamily(
            "peercam_viewers",
            "Viewers watching now (WebRTC: connected peers)",
            labels=["camera", "mode", "codec", "rung"],
        )
        captured = CounterMetricFamily(
            "peercam_frames_captured",
            "Frames the source published (no-signal pictures included)",
            labels=["camera"],
        )
        encoded = CounterMetricFamily(
            "peercam_frames_encoded",
            "Frames encoded, per shared encoder",
            labels=["camera", "encoder"],
        )
        sent = CounterMetricFamily(
            "peercam_frames_sent", "Frames sent to viewers", labels=["camera", "mode"]
        )
        encode_time = HistogramMetricFamily(
            "peercam_encode_seconds",
            "Time to encode one frame, per shared encoder",
            labels=["camera", "encoder"],
        )
        started = CounterMetricFamily(
            "peercam_encoders_started", "Shared encoders started", labels=["camera", "encoder"]
        )
        fallbacks = CounterMetricFamily(
            "peercam_fallbacks",
            "Viewers that fell back from WebRTC to JPEG, by the reason they gave",
            labels=["camera", "reason"],
        )
        state = GaugeMetricFamily(
            "peercam_source_state", "1 for the source's current state", labels=["camera", "state"]
        )
        reconnects = CounterMetricFamily(
            "peercam_source_reconnects",
            "Times the source was lost and reopening began",
            labels=["camera"],
        )
        fps = HistogramMetricFamily(
            "peercam_viewer_fps", "Frame rate viewers report seeing", labels=["camera", "mode"]
        )
        age = HistogramMetricFamily(
            "peercam_viewer_picture_age_seconds",
            "Capture-to-display age of the picture viewers report (where they can measure it)",
            labels=["camera", "mode"],
        )
        freezes = CounterMetricFamily(
            "peercam_viewer_freezes",
            "Pictures that froze for 2 s or more, as viewers report them",
            labels=["camera", "mode"],
        )
        reports = CounterMetricFamily(
            "peercam_viewer_reports", "viewer-stats reports received", labels=["camera", "mode"]
        )
        janus_state = GaugeMetricFamily(
            "peercam_janus_state", "1 for each Janus output's current state",
            labels=["camera", "janus", "state"],
        )  # fmt: skip
        janus_packets = CounterMetricFamily(
            "peercam_janus_packets", "RTP packets sent to each Janus", labels=["camera", "janus"]
        )
        janus_keyframes = CounterMetricFamily(
            "peercam_janus_keyframe_requests",
            "PLI/FIR each Janus forwarded from its viewers",
            labels=["camera", "janus"],
        )
        for name, service in cameras:
            for feed in service.janus:
                for value in FeedState:
                    janus_state.add_metric([name, feed.url, value], float(feed.state is value))
                janus_packets.add_metric([name, feed.url], feed.counters.packets)
                janus_keyframes.add_metric([name, feed.url], feed.counters.keyframe_requests)
            self._viewers(viewers, name, service)
            self._frames(captured, sent, name, service)
            self._encoders(encoded, encode_time, started, name, service)
            for reason, count in sorted(service.fallbacks.items()):
                fallbacks.add_metric([name, reason], count)
            for value in get_args(SourceState):
                state.add_metric([name, value], float(service.source.state == value))
            reconnects.add_metric([name], service.source.reconnects)
            self._reports(fps, age, freezes, reports, name, service.viewer_reports)
        yield from (viewers, captured, encoded, sent, encode_time, started, fallbacks)
        yield from (state, reconnects, fps, age, freezes, reports)
        yield from (janus_state, janus_packets, janus_keyframes)
        yield from self._loop(cameras)

    @staticmethod
    def _viewers(family: GaugeMetricFamily, name: str, service: Service) -> None:
        counts: Counter[tuple[str, str, str]] = Counter()
        for peer in service.peers.peers():
            stats = peer.stats()
            if stats["state"] == "connected":
                rung = stats.get("rung") or "per-viewer"
                counts["webrtc", str(stats["codec"]), str(rung)] += 1
        for stream in service.jpeg_streams:
            counts["jpeg", "jpeg", str(stream.key)] += 1
        counts["mjpeg", "jpeg", ""] += service.mjpeg_viewers
        counts["legacy", "jpeg", ""] += len(service.legacy_viewers)
        for (mode, codec, rung), n in sorted(counts.items()):
            family.add_metric([name, mode, codec, rung], n)

    def _frames(
        self, captured: CounterMetricFamily, sent: CounterMetricFamily, name: str, service: Service
    ) -> None:
        frames = service.source.status()["frames"]
        captured.add_metric([name], float(frames) if isinstance(frames, int) else 0.0)
        webrtc = ((p.viewer_id, (float(p.frames_sent),)) for p in service.peers.peers())
        jpeg = ((id(s), (float(s.sent),)) for s in service.jpeg_streams)
        for mode, live in (("webrtc", webrtc), ("jpeg", jpeg)):
            (total,) = self._kept.total(("sent", name, mode), live, 1)
            sent.add_metric([name, mode], total)

    def _encoders(
        self,
        encoded: CounterMetricFamily,
        encode_time: HistogramMetricFamily,
        started: CounterMetricFamily,
        name: str,
        service: Service,
    ) -> None:
        workers: dict[str, list[tuple[int, float, Histogram]]] = {}
        for video_key, video in service.encoders.running().items():
            workers.setdefault(str(video_key), []).append(
                (id(video), float(video.frames_encoded), video.step_seconds)
            )
        for jpeg_key, jpeg in service.jpeg.running().items():
            workers.setdefault(f"jpeg/{jpeg_key}", []).append(
                (id(jpeg), float(jpeg.encoded), jpeg.step_seconds)
            )
        # Every encoder ever started keeps its series (its counts stay after it stops).
        names = {str(k) for k in service.encoders.started} | {
            f"jpeg/{k}" for k in service.jpeg.started
        }
        for key in sorted(names | set(workers)):
            live = workers.get(key, [])
            (count,) = self._kept.total(("encoded", name, key), ((i, (n,)) for i, n, _ in live), 1)
            encoded.add_metric([name, key], count)
            width = len(_ENCODE_BOUNDS) + 2
            vector = self._kept.total(
                ("encode-time", name, key), ((i, _vector(h)) for i, _, h in live), width
            )
            encode_time.add_metric([name, key], _buckets(_ENCODE_BOUNDS, vector), vector[-1])
        for video_key, n in service.encoders.started.items():
            started.add_metric([name, str(video_key)], n)
        for jpeg_key, n in service.jpeg.started.items():
            started.add_metric([name, f"jpeg/{jpeg_key}"], n)

    @staticmethod
    def _reports(
        fps: HistogramMetricFamily,
        age: HistogramMetricFamily,
        freezes: CounterMetricFamily,
        reports: CounterMetricFamily,
        name: str,
        viewer_reports: ViewerReports,
    ) -> None:
        for mode, h in sorted(viewer_reports.fps.items()):
            fps.add_metric([name, mode], _buckets(h.bounds, _vector(h)), h.sum)
        for mode, h in sorted(viewer_reports.age.items()):
            age.add_metric([name, mode], _buckets(h.bounds, _vector(h)), h.sum)
        for mode, n in sorted(viewer_reports.freezes.items()):
            freezes.add_metric([name, mode], n)
        for mode, n in sorted(viewer_reports.reports.items()):
            reports.add_metric([name, mode], n)

    @staticmethod
    def _loop(cameras: Sequence[tuple[str, Service]]) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "peercam_event_loop_lag_seconds",
            "How late the event loop ran a 50 ms timer over the last minute",
            labels=["quantile"],
        )
        if cameras:  # one loop for every camera: its monitor is the first camera's
            summary = cameras[0][1].loop_lag.summary()
            for quantile, key in (("0.5", "p50"), ("0.99", "p99"), ("1", "max")):
                lag.add_metric([quantile], float(summary[key]) / 1000)
        yield lag
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # no running loop: a scrape outside the server (never in it)
            return
        yield GaugeMetricFamily("peercam_asyncio_tasks", "Tasks on the event loop", value=tasks)


_ENCODE_BOUNDS = Histogram().bounds

#: This application's registry (its own: never prometheus_client's global one).
REGISTRY_KEY = web.AppKey("peercam_metrics", CollectorRegistry)


def add_metrics(app: web.Application, cameras: Iterable[tuple[str, Service]]) -> None:
    """Give ``app`` a ``/metrics`` route over ``cameras`` (re-iterated at every scrape)."""
    registry = CollectorRegistry()
    registry.register(PeercamCollector(cameras))
    ProcessCollector(registry=registry)  # process_* (memory, CPU, open files): the library's
    app[REGISTRY_KEY] = registry
    app.router.add_get("/metrics", _metrics_handler)


async def _metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
    )
