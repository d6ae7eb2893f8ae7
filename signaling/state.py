"""What the running server holds: typed application state, no module-level objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from aiohttp import web

from webrtc.encoders import EncoderPool
from webrtc.peers import PeerManager
from webrtc.sources import Source

from .config import Config


@dataclass
class Service:
    """The source, its shared encoders and every viewer of one server."""

    KEY: ClassVar[web.AppKey[Service]]

    config: Config
    source: Source
    encoders: EncoderPool
    peers: PeerManager
    viewers: set[web.WebSocketResponse] = field(default_factory=set)

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
                str(codec): running[codec].stats() | {"viewers": self.encoders.users(codec)}
                for codec in running
            },
            "encodersStarted": {str(c): n for c, n in self.encoders.started.items()},
        }


Service.KEY = web.AppKey("peercam_service", Service)
