"""What the running server holds: typed application state, no module-level objects."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from aiohttp import web

from webrtc.encoders import Codec, EncoderPool
from webrtc.jpeg import JpegPool
from webrtc.peers import PeerManager
from webrtc.sources import Source

from .config import Config
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
    jpeg_viewers: int = 0
    mjpeg_viewers: int = 0
    #: Why viewers fell back from WebRTC to JPEG, as they reported it.
    fallbacks: Counter[str] = field(default_factory=Counter)
    loop_lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    #: Open long-lived connections per remote address (the per-address cap).
    connections: Counter[str] = field(default_factory=Counter)

    def status(self) -> dict[str, object]:
        running = self.encoders.running()
        return {
            "source": self.source.status(),
            "viewers": len(self.viewers),
            "peers": [
                {
                    "viewerId": p.viewer_id,
                    "codec": str(p.codec) if p.codec else None,
                    "state": p.connection_state,
                    "framesSent": p.frames_sent,
                }
                for p in self.peers.peers()
            ],
            "encoders": {
                str(key): running[key].stats() | {"viewers": self.encoders.users(key)}
                for key in running
            },
            "encodersStarted": {
                str(codec): sum(n for key, n in self.encoders.started.items() if key.codec is codec)
                for codec in Codec
            },
            "jpeg": {
                "viewers": self.jpeg_viewers,
                "mjpegViewers": self.mjpeg_viewers,
                "legacyViewers": len(self.legacy_viewers),
                "encoders": {
                    str(key): {"users": self.jpeg.users(key), "encoded": encoder.encoded}
                    for key, encoder in self.jpeg.running().items()
                },
                "encodersStarted": sum(self.jpeg.started.values()),
            },
            "fallbacks": dict(self.fallbacks),
            "loopLagMs": self.loop_lag.summary(),
        }


Service.KEY = web.AppKey("peercam_service", Service)
