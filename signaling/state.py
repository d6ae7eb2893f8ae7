"""What the running server holds: typed application state, no module-level objects."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from aiohttp import web

from webrtc.encoders import Codec, EncoderPool
from webrtc.jpeg import JpegPool
from webrtc.peers import PeerManager
from webrtc.sources import Source

from .config import Config

if TYPE_CHECKING:
    from .janus import JanusFeed
    from .pictures import JpegStream
from .monitor import LoopLagMonitor


@dataclass
class Service:
    """The source, its shared encoders and every viewer of one server."""

    KEY: ClassVar[web.AppKey[Service]]

    config: Config
    source: Source
    encoders: EncoderPool
    jpeg: JpegPool
    peers: PeerManager
    viewers: set[web.WebSocketResponse] = field(default_factory=set)
    legacy_viewers: set[web.WebSocketResponse] = field(default_factory=set)
    #: JPEG-mode viewers on /ws (each owned by its session, which adds and removes it).
    jpeg_streams: set[JpegStream] = field(default_factory=set)
    mjpeg_viewers: int = 0
    #: Why viewers fell back from WebRTC to JPEG, as they reported it.
    fallbacks: Counter[str] = field(default_factory=Counter)
    loop_lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    #: Open long-lived connections per remote address (the per-address cap).
    connections: Counter[str] = field(default_factory=Counter)
    #: Outputs to Janus (``--janus``), while the app runs (signaling/janus.py owns them).
    janus: list[JanusFeed] = field(default_factory=list)

    def status(self) -> dict[str, object]:
        running = self.encoders.running()
        return {
            "source": self.source.status(),
            "viewers": len(self.viewers),
            "peers": [p.stats() for p in self.peers.peers()],
            "ladder": self._ladder_status(),
            "udpPorts": str(ports) if (ports := self.peers.settings.udp_ports) else None,
            "encoders": {
                str(key): running[key].stats() | {"viewers": self.encoders.users(key)}
                for key in running
            },
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
            "janus": [feed.stats() for feed in self.janus],
            "fallbacks": dict(self.fallbacks),
            "loopLagMs": self.loop_lag.summary(),
            "process": _process_status(),
        }

    def _ladder_status(self) -> list[str]:
        newest = self.source.frames.get()
        if newest is None:
            return []
        return [str(r) for r in self.peers.ladder_for(newest[1].width, newest[1].height).rungs]


Service.KEY = web.AppKey("peercam_service", Service)


def trim_heap() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``), so RSS shows what is in
    use rather than the allocator's high-water mark. Blocking: call off the event loop."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _process_status() -> dict[str, float | int]:
    """Tasks, open files and memory of this process: what a leak would show first."""
    rss_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    return {"tasks": len(asyncio.all_tasks()), "fds": fds, "rssMb": round(rss_kb / 1024, 1)}
