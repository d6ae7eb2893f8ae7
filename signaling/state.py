"""What the running server holds: typed application state, no module-level objects."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import psutil
from aiohttp import web

from webrtc.encoders import Codec, EncoderPool
from webrtc.jpeg import JpegPool
from webrtc.passthrough import StreamSource
from webrtc.peers import PeerManager
from webrtc.sources import Source
from webrtc.tiles import TileFeed

from .config import CameraConfig, Config

if TYPE_CHECKING:
    from .janus import JanusFeed
    from .pictures import JpegStream
from .metrics import ViewerReports
from .monitor import LoopLagMonitor


@dataclass
class Service:
    """One camera: its source, its shared encoders and every viewer of it.

    Each camera's sub-application (``/cam/NAME/``) holds its own under ``KEY``; the root
    application holds the default camera's too, for today's root routes.
    """

    KEY: ClassVar[web.AppKey[Service]]

    config: Config
    camera: CameraConfig
    source: Source
    encoders: EncoderPool
    jpeg: JpegPool
    peers: PeerManager
    tiles: TileFeed
    viewers: set[web.WebSocketResponse] = field(default_factory=set)
    legacy_viewers: set[web.WebSocketResponse] = field(default_factory=set)
    #: JPEG-mode viewers on /ws (each owned by its session, which adds and removes it).
    jpeg_streams: set[JpegStream] = field(default_factory=set)
    mjpeg_viewers: int = 0
    #: Why viewers fell back from WebRTC to JPEG, as they reported it.
    fallbacks: Counter[str] = field(default_factory=Counter)
    #: The server's (one for all cameras, owned by the root application).
    loop_lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    #: Open long-lived connections per client: the site's one counter, shared by every camera
    #: (``Site.connections``), so the per-address cap counts across cameras.
    connections: Counter[str] = field(default_factory=Counter)
    #: Outputs to Janus (``--janus``), while the app runs (signaling/janus.py owns them).
    janus: list[JanusFeed] = field(default_factory=list)
    #: What viewers reported seeing (viewer-stats messages), for /metrics.
    viewer_reports: ViewerReports = field(default_factory=ViewerReports)

    @property
    def name(self) -> str:
        return self.camera.name

    def health(self) -> dict[str, object]:
        """Whether the camera delivers pictures now, without anything secret (no source
        description, no error text: an RTSP URL may carry a password)."""
        newest = self.source.frames.get()
        age = None if newest is None else time.monotonic() - newest[1].monotonic
        fps = self.source.fps or 1.0
        delivering = (
            self.source.state == "live"
            and age is not None
            and newest is not None
            and newest[1].live
            and age < max(HEALTH_MIN_AGE, 10 / fps)
        )
        return {
            "delivering": delivering,
            "state": self.source.state,
            "frameAgeSeconds": None if age is None else round(age, 2),
        }

    def status(self) -> dict[str, object]:
        """This camera's figures (the server's own, process and loop lag, are added by the
        status route)."""
        running = self.encoders.running()
        return {
            "name": self.camera.name,
            "source": self.source.status(),
            "viewers": len(self.viewers),
            "peers": [p.stats() for p in self.peers.peers()],
            "ladder": self._ladder_status(),
            "udpPorts": str(ports) if (ports := self.peers.settings.udp_ports) else None,
            "encoders": {
                str(key): running[key].stats() | {"viewers": self.encoders.users(key)}
                for key in running
            },
            "video": self._video_status(),
            "passthroughStarted": self.encoders.passthrough_started,
            "encodersStarted": {
                str(codec): sum(n for key, n in self.encoders.started.items() if key.codec is codec)
                for codec in Codec
            },
            "jpeg": {
                "viewers": len(self.jpeg_streams),
                "streams": [stream.stats() for stream in self.jpeg_streams],
                "mjpegViewers": self.mjpeg_viewers,
                "legacyViewers": len(self.legacy_viewers),
                "encoders": {
                    str(key): {"users": self.jpeg.users(key), "encoded": encoder.encoded}
                    for key, encoder in self.jpeg.running().items()
                },
                "encodersStarted": sum(self.jpeg.started.values()),
            },
            "tiles": self.tiles.stats(),
            "janus": [feed.stats() for feed in self.janus],
            "fallbacks": dict(self.fallbacks),
            "health": self.health(),
        }

    def _video_status(self) -> dict[str, object]:
        """Whether the source's H.264 goes to viewers as it is, why not, and what encodes."""
        source = self.source
        passing = isinstance(source, StreamSource) and source.passes_through
        if isinstance(source, StreamSource):
            reason = source.reason
        elif not self.config.passthrough:
            reason = "--passthrough off"
        else:
            reason = f"{source.kind} source: pictures, not H.264"
        return {
            "passthrough": passing,
            "passthroughReason": None if passing else reason,
            "encoder": self.config.video_encoder,
            "h264TopRung": "passthrough" if passing else self.config.video_encoder,
        }

    def _ladder_status(self) -> list[str]:
        newest = self.source.frames.get()
        if newest is None:
            return []
        return [str(r) for r in self.peers.ladder_for(newest[1].width, newest[1].height).rungs]


Service.KEY = web.AppKey("peercam_service", Service)

#: A picture older than this many seconds (or ten frame intervals) means "not delivering".
HEALTH_MIN_AGE = 3.0


@dataclass
class Site:
    """What the root application holds for all cameras: the configuration, every camera by
    name (the default first), the connection counts the per-address cap reads (across
    cameras), and the event-loop lag monitor."""

    KEY: ClassVar[web.AppKey[Site]]

    config: Config
    cameras: dict[str, Service]
    loop_lag: LoopLagMonitor
    #: Open long-lived connections per remote address (the per-address cap); every camera's
    #: ``Service.connections`` is this one counter.
    connections: Counter[str] = field(default_factory=Counter)

    @property
    def default(self) -> Service:
        return next(iter(self.cameras.values()))

    def health(self) -> tuple[bool, dict[str, object]]:
        """(every camera delivers, the /healthz body)."""
        cameras = {name: service.health() for name, service in self.cameras.items()}
        failing = [name for name, health in cameras.items() if not health["delivering"]]
        body: dict[str, object] = {
            "status": "failing" if failing else "ok",
            "failing": failing,
            "cameras": cameras,
        }
        return not failing, body

    def status(self) -> dict[str, object]:
        """/api/status: the default camera's figures as before, every camera by name, and
        the server's own."""
        return self.default.status() | {
            "cameras": {name: service.status() for name, service in self.cameras.items()},
            "loopLagMs": self.loop_lag.summary(),
            "process": _process_status(),
        }


Site.KEY = web.AppKey("peercam_site", Site)


def trim_heap() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``), so RSS shows what is in
    use rather than the allocator's high-water mark. Blocking: call off the event loop."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _process_status() -> dict[str, float | int]:
    """Tasks, open files and memory of this process: what a leak would show first."""
    process = psutil.Process()
    with process.oneshot():
        rss = process.memory_info().rss
        try:
            fds = process.num_fds()
        except (psutil.Error, AttributeError):  # AttributeError: not on this platform
            fds = -1
    return {"tasks": len(asyncio.all_tasks()), "fds": fds, "rssMb": round(rss / 2**20, 1)}
