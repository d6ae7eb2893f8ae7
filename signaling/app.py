"""The aiohttp applications: a root one for the site, and one sub-application per camera.

    /                  the wall (several cameras) or the default camera's page (one camera)
    /healthz           200 while every camera delivers pictures, else 503 (no token)
    /api/status        the default camera's figures, every camera's, the server's
    /api/cameras       the cameras' names and states (the wall's list)
    /ws, /snapshot.jpg, /stream.mjpg, /video, /tile.jpg     the default camera (today's routes)
    /cam/NAME/…        camera NAME: its page, /ws, /snapshot.jpg, /stream.mjpg, /video, /tile.jpg

Each camera's sub-application holds its :class:`Service` under ``Service.KEY`` (handlers read
``request.app[Service.KEY]``: in a sub-application that is the sub-application) and owns its
lifetime (source, encoders, peers). The root holds the :class:`Site` (configuration, the
per-address connection counts across cameras, the loop-lag monitor) and the security
middleware, which runs for every camera's routes too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from aiohttp import WSCloseCode, web

from webrtc.encoders import make_encoder_pool
from webrtc.jpeg import make_jpeg_pool
from webrtc.passthrough import StreamSource
from webrtc.peers import PeerManager
from webrtc.sources import Source, open_source
from webrtc.tiles import TileFeed

from .config import CameraConfig, Config
from .janus import feed_janus
from .metrics import add_metrics
from .monitor import LoopLagMonitor
from .pictures import legacy_video_handler, mjpeg_handler, snapshot_handler, tile_handler
from .security import ClientLimits, add_cors_headers, security_middleware
from .session import websocket_handler
from .state import Service, Site, trim_heap
from .whep import add_routes as add_whep_routes

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _page(name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        config = request.config_dict[Site.KEY].config
        return web.FileResponse(config.static_dir / name, headers={"Cache-Control": "no-cache"})

    return handler


async def _status(request: web.Request) -> web.Response:
    site = request.app[Site.KEY]
    if request.query.get("reset") == "lag":  # benchmarks measure one phase at a time
        site.loop_lag.reset()
    if request.query.get("trim") == "1":  # leak checks compare memory in use, not high water
        await asyncio.to_thread(trim_heap)
    return web.json_response(site.status())


async def _camera_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[Service.KEY].status())


async def _healthz(request: web.Request) -> web.Response:
    healthy, body = request.app[Site.KEY].health()
    return web.json_response(
        body, status=200 if healthy else 503, headers={"Cache-Control": "no-store"}
    )


async def _cameras(request: web.Request) -> web.Response:
    site = request.app[Site.KEY]
    return web.json_response(
        {
            "default": site.default.name,
            "cameras": [
                {"name": name, "delivering": service.health()["delivering"]}
                for name, service in site.cameras.items()
            ],
        },
        headers={"Cache-Control": "no-store"},
    )


@web.middleware
async def _camera_slash(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``/cam/NAME`` → ``NAME/``: the page's relative URLs need the trailing slash.

    A middleware, not a route: the sub-application's prefix takes ``/cam/NAME`` before any
    root route could. The redirect is relative, so it stays under a proxy's path prefix.
    """
    parts = request.path.split("/")
    if len(parts) == 3 and parts[1] == "cam" and parts[2] in request.app[Site.KEY].cameras:
        raise web.HTTPPermanentRedirect(location=f"{parts[2]}/")
    return await handler(request)


def add_camera_routes(app: web.Application) -> None:
    """A camera's media and signaling routes (each one line; relative to the camera's base)."""
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/snapshot.jpg", snapshot_handler)
    app.router.add_get("/stream.mjpg", mjpeg_handler)
    app.router.add_get("/video", legacy_video_handler)
    app.router.add_get("/tile.jpg", tile_handler)
    add_whep_routes(app)


def make_service(
    config: Config,
    camera: CameraConfig,
    source: Source,
    loop_lag: LoopLagMonitor,
    connections: Counter[str],
) -> Service:
    """The aggregate of one camera: its source, encoder pools, peers and viewers."""
    encoders = make_encoder_pool(
        source.frames, fps=source.fps, bitrate=camera.bitrate, h264_encoder=config.video_encoder,
        feed=source.feed if isinstance(source, StreamSource) else None,
    )  # fmt: skip
    return Service(
        config=config,
        camera=camera,
        source=source,
        encoders=encoders,
        jpeg=make_jpeg_pool(source.frames),
        peers=PeerManager(
            config.webrtc_settings(camera),
            encoders,
            source.frames,
            ladder_spec=camera.ladder or config.ladder,
            bitrate=camera.bitrate,
            source_fps=source.fps,
        ),
        tiles=TileFeed(source.frames),
        loop_lag=loop_lag,
        connections=connections,
    )


def create_camera_app(service: Service, site: Site, limits: ClientLimits) -> web.Application:
    """The sub-application of one camera, mounted at ``/cam/NAME``; it owns the camera.

    It also holds the site's :class:`Site` and :class:`ClientLimits` (the same objects as the
    root's), so a handler reading ``request.app[...]`` finds them in a sub-application too.
    """
    app = web.Application()
    app[Service.KEY] = service
    app[Site.KEY] = site
    app[ClientLimits.KEY] = limits
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/api/status", _camera_status)
    add_camera_routes(app)
    # The page's own relative URLs (static/peercam-view.js) resolve under the camera's base.
    app.router.add_static("/static/", service.config.static_dir, append_version=False)
    app.cleanup_ctx.append(_camera_lifetime)
    app.on_shutdown.append(_close_sockets)
    return app


def open_sources(
    config: Config, cameras: Sequence[CameraConfig] | None = None
) -> dict[str, Source]:
    """Every camera's source (or those of ``cameras``), made now (blocking: devices are
    probed; call before serving).

    A camera that cannot be opened yet is returned anyway: it shows "no signal" and retries on
    its own thread. Only a spec that can never work fails (at parsing, in ``SourceSpec``).
    They are opened in parallel: an RTSP server that does not answer can take FFmpeg's whole
    timeout, and must not delay the other cameras by as much.
    """
    chosen = list(config.cameras if cameras is None else cameras)

    def open_one(camera: CameraConfig) -> Source:
        return open_source(
            camera.source, width=camera.width, height=camera.height, fps=camera.fps,
            passthrough=config.passthrough, input_format=config.input_format, retry=True,
        )  # fmt: skip

    with ThreadPoolExecutor(max(1, len(chosen)), thread_name_prefix="peercam-open") as pool:
        return dict(zip((c.name for c in chosen), pool.map(open_one, chosen), strict=True))


def create_app(
    config: Config,
    *,
    source: Source | None = None,
    sources: Mapping[str, Source] | None = None,
) -> web.Application:
    """Build the server for ``config``.

    ``sources`` gives cameras' sources by name (tests, ``server.main`` after opening them);
    ``source`` the default camera's. The others are opened here, which blocks (devices are
    probed): pass them from async code, or build the app before the loop runs.
    """
    given = dict(sources or {})
    if source is not None:
        given[config.cameras[0].name] = source
    missing = [c for c in config.cameras if c.name not in given]
    if missing:
        given |= open_sources(config, missing)
    loop_lag = LoopLagMonitor()
    connections: Counter[str] = Counter()
    services = {
        camera.name: make_service(
            config, config.camera(camera.name), given[camera.name], loop_lag, connections
        )
        for camera in config.cameras
    }
    site = Site(config=config, cameras=services, loop_lag=loop_lag, connections=connections)
    client_limits = ClientLimits(config.snapshot_rate, len(services))
    app = web.Application(middlewares=[_camera_slash, security_middleware])
    app[Site.KEY] = site
    app[Service.KEY] = site.default
    app[ClientLimits.KEY] = client_limits
    several = len(services) > 1
    app.router.add_get("/", _page("wall.html" if several else "index.html"))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/status", _status)
    app.router.add_get("/api/cameras", _cameras)
    add_metrics(app, site.cameras.items())  # every camera, read at each scrape
    add_camera_routes(app)  # the default camera's, at today's paths
    app.router.add_get("/capture", _page("capture.html"))
    app.router.add_get("/check", _page("check.html"))
    app.router.add_static("/static/", config.static_dir, append_version=False)
    for name, service in services.items():
        app.add_subapp(f"/cam/{name}", create_camera_app(service, site, client_limits))
    # On the root only: aiohttp sends it for every application a request passed through.
    app.on_response_prepare.append(add_cors_headers)
    app.cleanup_ctx.append(_site_lifetime)
    return app


async def _site_lifetime(app: web.Application) -> AsyncIterator[None]:
    site = app[Site.KEY]
    site.loop_lag.start()
    yield
    await site.loop_lag.aclose()


async def _camera_lifetime(app: web.Application) -> AsyncIterator[None]:
    service = app[Service.KEY]
    service.source.start()
    logger.info("camera %s: serving %s", service.name, service.source.description)
    async with feed_janus(service):
        yield
    await service.peers.aclose()
    await service.tiles.aclose()
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
