"""Picture endpoints: JPEG over the viewer's WebSocket, MJPEG, snapshots, and the original
system's ``/video`` protocol. Every one reads the shared JPEG encoders; none queues pictures.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web

from webrtc.jpeg import BOUNDARY, JpegEncoder, JpegKey, JpegPool, next_picture
from webrtc.latest import LatestClosed
from webrtc.tasks import cancel_and_wait

from .state import Service

logger = logging.getLogger(__name__)

MAX_CREDIT = 2  # pictures in flight per JPEG viewer: one drawing, one on the way
SNAPSHOT_TIMEOUT = 5.0
LEGACY_MAX_MESSAGE = 4096


class JpegStream:
    """Sends one viewer the newest JPEG whenever it has credit; acks give credit back.

    A viewer that stops acknowledging is sent nothing more and holds no picture: the shared
    encoder's :class:`Latest` keeps only the newest one for everybody.
    """

    def __init__(
        self, ws: web.WebSocketResponse, pool: JpegPool, key: JpegKey, max_fps: float | None
    ) -> None:
        self._ws = ws
        self._pool = pool
        self._key = key
        self._interval = 1.0 / max_fps if max_fps else 0.0
        self._credit = MAX_CREDIT
        self._credit_changed = asyncio.Event()
        self._encoder: JpegEncoder | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> None:
        self._encoder = self._pool.acquire(self._key)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def ack(self) -> None:
        self._credit = min(MAX_CREDIT, self._credit + 1)
        self._credit_changed.set()

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        if self._encoder is not None:
            self._pool.release(self._key, self._encoder)
            self._encoder = None

    async def _run(self) -> None:
        assert self._encoder is not None
        pictures = self._encoder.pictures
        after = 0
        last_sent = 0.0
        try:
            while not self._ws.closed:
                while self._credit <= 0:
                    self._credit_changed.clear()
                    await self._credit_changed.wait()
                if self._interval:
                    # The viewer's own frame-rate cap: pacing, not synchronisation.
                    delay = last_sent + self._interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                after, picture = await pictures.next(after)
                await self._ws.send_bytes(picture.message)
                last_sent = time.monotonic()
                self._credit -= 1
                self.sent += 1
        except (LatestClosed, ConnectionError):
            pass  # the source stopped, or the viewer went away: the handler cleans up


def key_from_query(request: web.Request, default_quality: int) -> JpegKey:
    """``?quality=`` and ``?width=`` of a picture endpoint, validated.

    Raises:
        web.HTTPBadRequest: a value is not a number in range; the body says which.
    """
    values: dict[str, int] = {}
    for name, low, high in (("quality", 1, 100), ("width", 16, 7680)):
        text = request.query.get(name)
        if text is None:
            continue
        if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
            raise web.HTTPBadRequest(text=f"{name} must be an integer from {low} to {high}\n")
        values[name] = int(text)
    return JpegKey.normalized(values.get("quality", default_quality), values.get("width"))


async def snapshot_handler(request: web.Request) -> web.StreamResponse:
    service = request.app[Service.KEY]
    key = key_from_query(request, service.config.jpeg_quality)
    try:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT):
            picture = await next_picture(service.jpeg, key)
    except (TimeoutError, LatestClosed):
        raise web.HTTPServiceUnavailable(text="the source delivers no picture\n") from None
    return web.Response(
        body=picture.data,
        content_type="image/jpeg",
        headers={"Cache-Control": "no-store", "X-Capture-Time": f"{picture.capture_time:.3f}"},
    )


async def mjpeg_handler(request: web.Request) -> web.StreamResponse:
    service = request.app[Service.KEY]
    key = key_from_query(request, service.config.jpeg_quality)
    response = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
        }
    )
    await response.prepare(request)
    encoder = service.jpeg.acquire(key)
    service.mjpeg_viewers += 1
    try:
        after = 0
        while True:
            after, picture = await encoder.pictures.next(after)
            # write() waits while this client's socket buffer is full: a slow client is
            # paced alone and takes the newest picture next, never a backlog.
            await response.write(picture.mjpeg_part())
    except (LatestClosed, ConnectionError):
        pass
    finally:
        service.mjpeg_viewers -= 1
        service.jpeg.release(key, encoder)
    return response


async def legacy_video_handler(request: web.Request) -> web.StreamResponse:
    """The original board's protocol: any message → ``{"img": "data:image/jpeg;base64,…"}``.

    Unlike the original, requests that come faster than frames are merged: each request is
    answered with the next picture newer than the last one this client got, so a client
    asking every 10 ms builds no backlog and starves nobody.
    """
    service = request.app[Service.KEY]
    ws = web.WebSocketResponse(max_msg_size=LEGACY_MAX_MESSAGE, heartbeat=20.0, compress=False)
    await ws.prepare(request)
    key = JpegKey.normalized(service.config.jpeg_quality, None)
    encoder = service.jpeg.acquire(key)
    wanted = asyncio.Event()

    async def answer() -> None:
        after = 0
        try:
            while True:
                await wanted.wait()
                wanted.clear()
                after, picture = await encoder.pictures.next(after)
                await ws.send_str(picture.data_url_message())
        except (LatestClosed, ConnectionError):
            await ws.close()

    sender = asyncio.get_running_loop().create_task(answer())
    service.legacy_viewers.add(ws)
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                wanted.set()
    finally:
        service.legacy_viewers.discard(ws)
        await cancel_and_wait(sender)
        service.jpeg.release(key, encoder)
    return ws
