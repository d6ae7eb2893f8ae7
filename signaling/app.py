"""The aiohttp application: routes, and the lifetime of the source, encoders and peers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import WSCloseCode, web

from webrtc.encoders import make_encoder_pool
from webrtc.jpeg import make_jpeg_pool
from webrtc.peers import PeerManager
from webrtc.sources import Source, open_source

from .config import Config
from .janus import feed_janus
from .pictures import legacy_video_handler, mjpeg_handler, snapshot_handler
from .security import ClientLimits, add_cors_headers, security_middleware
from .session import websocket_handler
from .state import Service, trim_heap

logger = logging.getLogger(__name__)


def _page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        config = request.app[Service.KEY].config
        return web.FileResponse(config.static_dir / name, headers={"Cache-Control": "no-cache"})

    return handler


async def _status(request: web.Request) -> web.Response:
    service = request.app[Service.KEY]
    if request.query.get("reset") == "lag":  # benchmarks measure one phase at a time
        service.loop_lag.reset()
    if request.query.get("trim") == "1":  # leak checks compare memory in use, not high water
        await asyncio.to_thread(trim_heap)
    return web.json_response(service.status())


def create_app(config: Config, *, source: Source | None = None) -> web.Application:
    """Build the server for ``config``; ``source`` replaces the configured one (tests).

    Opening the configured source blocks (it probes devices), so pass ``source`` from async
    code, or build the app before the loop runs, as ``server.main`` does.
    """
    if source is None:
        source = open_source(
            config.source, width=config.width, height=config.height, fps=config.fps
        )
    encoders = make_encoder_pool(source.frames, fps=source.fps, bitrate=config.bitrate)
    service = Service(
        config=config,
        source=source,
        encoders=encoders,
        jpeg=make_jpeg_pool(source.frames),
        peers=PeerManager(
            config.webrtc_settings(),
            encoders,
            source.frames,
            ladder_spec=config.ladder,
            bitrate=config.bitrate,
            source_fps=source.fps,
        ),
    )
    app = web.Application(middlewares=[security_middleware])
    app[Service.KEY] = service
    app[ClientLimits.KEY] = ClientLimits(config.snapshot_rate)
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/api/status", _status)
    app.router.add_get("/snapshot.jpg", snapshot_handler)
    app.router.add_get("/stream.mjpg", mjpeg_handler)
    app.router.add_get("/video", legacy_video_handler)
    app.router.add_get("/capture", _page("capture.html"))
    app.router.add_get("/check", _page("check.html"))
    app.router.add_static("/static/", config.static_dir, append_version=False)
    app.on_response_prepare.append(add_cors_headers)
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_close_sockets)
    return app


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    service = app[Service.KEY]
    service.source.start()
    service.loop_lag.start()
    logger.info("serving %s", service.source.description)
    async with feed_janus(service):
        yield
    await service.loop_lag.aclose()
    await service.peers.aclose()
    await service.encoders.aclose()
    await service.jpeg.aclose()
    await asyncio.to_thread(service.source.stop)


async def _close_sockets(app: web.Application) -> None:
    service = app[Service.KEY]
    await asyncio.gather(
        *(
            ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
            for ws in [*service.viewers, *service.legacy_viewers]
        ),
        return_exceptions=True,
    )
    # Ends the MJPEG responses (their pictures stream closes) so shutdown does not wait on them.
    await service.jpeg.aclose()
