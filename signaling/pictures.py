"""Picture endpoints: JPEG over the viewer's WebSocket, MJPEG, snapshots, and the original
system's ``/video`` protocol. Every one reads the shared JPEG encoders; none queues pictures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WSMsgType, web

from webrtc.jpeg import BOUNDARY, JpegEncoder, JpegKey, JpegPool, jpeg_rungs, next_picture
from webrtc.latest import LatestClosed
from webrtc.tasks import cancel_and_wait

from . import messages
from .limits import COUNTED_FRAMES, TokenBucket
from .state import Service

logger = logging.getLogger(__name__)

MAX_CREDIT = 2  # pictures in flight per JPEG viewer: one drawing, one on the way
#: JPEG rung adaptation: judged over windows of this many seconds; fewer than this fraction of
#: the source's pictures while waiting for credit most of the time is a slow link.
JPEG_WINDOW = 1.0
SLOW_FRACTION = 0.6
JPEG_UP_WAIT = 4.0
JPEG_UP_WAIT_MAX = 60.0
SNAPSHOT_TIMEOUT = 5.0
STALL_TIMEOUT = 10.0  # seconds a consumer may take nothing (Config.stall_timeout)
LEGACY_MAX_MESSAGE = 4096
#: /video requests per second (the original page asks every 10 ms; merged, see below), the
#: burst allowed, and how many refused requests close the socket as abusive.
LEGACY_RATE, LEGACY_BURST, LEGACY_MAX_REFUSED = 100.0, 200.0, 400


class JpegStream:
    """Sends one viewer the newest JPEG whenever it has credit; acks give credit back.

    A viewer that stops acknowledging is sent nothing more and holds no picture: the shared
    encoder's :class:`Latest` keeps only the newest one for everybody.

    It adapts to the viewer's link: when credit comes back so slowly that fewer than
    ``SLOW_FRACTION`` of the source's pictures get through, it steps down one JPEG rung
    (lower quality, then a smaller size; all shared, see :func:`webrtc.jpeg.jpeg_rungs`); when
    pictures flow at the source's rate without waiting for credit, it tries one rung up after a
    wait that doubles each time the step up had to be undone. The stream owns its encoder lease.
    """

    def __init__(
        self, ws: web.WebSocketResponse, pool: JpegPool, key: JpegKey, max_fps: float | None,
        *, source_fps: float = 30.0, stall_timeout: float = STALL_TIMEOUT,
    ) -> None:  # fmt: skip
        self._ws = ws
        self._stall_timeout = stall_timeout
        self._pool = pool
        self._rungs = jpeg_rungs(key)
        self._rung = 0
        self._interval = 1.0 / max_fps if max_fps else 0.0
        self._wanted_fps = min(source_fps, max_fps or source_fps)
        self._credit = MAX_CREDIT
        self._credit_changed = asyncio.Event()
        self._encoder: JpegEncoder | None = None
        self._after = 0
        self._task: asyncio.Task[None] | None = None
        self._window_start = time.monotonic()
        self._window_sent = 0
        self._window_waited = 0.0
        self._changed_at = self._window_start
        self._up_wait = JPEG_UP_WAIT
        self._stepped_up = False
        self.sent = 0
        self.switches = 0

    @property
    def key(self) -> JpegKey:
        return self._rungs[self._rung]

    def stats(self) -> dict[str, object]:
        return {"rung": str(self.key), "rungIndex": self._rung, "sent": self.sent}

    def start(self) -> None:
        self._encoder = self._pool.acquire(self.key)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def ack(self) -> None:
        self._credit = min(MAX_CREDIT, self._credit + 1)
        self._credit_changed.set()

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        if self._encoder is not None:
            self._pool.release(self._encoder.key, self._encoder)
            self._encoder = None

    def _judge(self, now: float) -> None:
        """Once a window: step down when the link cannot keep up, up when it idles."""
        elapsed = now - self._window_start
        if elapsed < JPEG_WINDOW:
            return
        fps = self._window_sent / elapsed
        waited = self._window_waited / elapsed
        self._window_start, self._window_sent, self._window_waited = now, 0, 0.0
        target = self._rung
        if fps < SLOW_FRACTION * self._wanted_fps and waited > 0.5:
            if self._rung + 1 < len(self._rungs):
                target = self._rung + 1
                if self._stepped_up and now - self._changed_at < 2 * JPEG_WINDOW + 0.5:
                    self._up_wait = min(JPEG_UP_WAIT_MAX, self._up_wait * 2)
                self._stepped_up = False
        elif waited < 0.1 and self._rung > 0 and now - self._changed_at >= self._up_wait:
            target = self._rung - 1
            self._stepped_up = True
        elif self._stepped_up and now - self._changed_at >= 3 * JPEG_WINDOW:
            self._stepped_up = False
            self._up_wait = JPEG_UP_WAIT  # the step up held
        if target != self._rung:
            self._switch(target, now)

    def _switch(self, rung: int, now: float) -> None:
        old = self._encoder
        self._rung = rung
        self._encoder = self._pool.acquire(self.key)
        if old is not None:
            self._pool.release(old.key, old)
        self._after = 0  # the new rung's pictures are numbered on their own
        self._changed_at = now
        self.switches += 1
        logger.debug("JPEG viewer moved to %s", self.key)

    async def _run(self) -> None:
        assert self._encoder is not None
        last_sent = 0.0
        try:
            while not self._ws.closed:
                waited_from = time.monotonic()
                # A viewer that acks nothing for the stall timeout is dropped: it must not
                # keep an encoder and a viewer slot busy for nobody.
                async with asyncio.timeout(self._stall_timeout):
                    while self._credit <= 0:
                        self._credit_changed.clear()
                        await self._credit_changed.wait()
                now = time.monotonic()
                self._window_waited += now - waited_from
                self._judge(now)
                if self._interval:
                    # The viewer's own frame-rate cap: pacing, not synchronisation.
                    delay = last_sent + self._interval - now
                    if delay > 0:
                        await asyncio.sleep(delay)
                encoder = self._encoder
                assert encoder is not None
                try:
                    after, picture = await encoder.pictures.next(self._after)
                except LatestClosed:
                    if encoder is self._encoder:
                        raise
                    continue  # switched rungs meanwhile: the new one's pictures
                if encoder is not self._encoder:
                    continue
                self._after = after
                async with asyncio.timeout(self._stall_timeout):
                    await self._ws.send_bytes(picture.message)
                last_sent = time.monotonic()
                self._credit -= 1
                self.sent += 1
                self._window_sent += 1
        except TimeoutError:
            await self._drop_stalled()
        except (LatestClosed, ConnectionError):
            pass  # the source stopped, or the viewer went away: the handler cleans up

    async def _drop_stalled(self) -> None:
        logger.info("JPEG viewer took nothing for %g s: dropped", self._stall_timeout)
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(self._stall_timeout):
                await self._ws.send_str(
                    messages.error_message(
                        "stalled", f"no ack for {self._stall_timeout:g} s", "jpeg"
                    )
                )
            await self._ws.close(code=1008, message=b"stalled: no ack")


def source_width(service: Service) -> int:
    """The width of the source's pictures now (0 before the first)."""
    newest = service.source.frames.get()
    return newest[1].width if newest else 0


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
        # The length first: int() of thousands of digits is slow, then refused (ValueError).
        valid = text.isascii() and text.isdigit() and len(text) <= 5
        if not valid or not low <= int(text) <= high:
            raise web.HTTPBadRequest(text=f"{name} must be an integer from {low} to {high}\n")
        values[name] = int(text)
    return JpegKey.normalized(
        values.get("quality", default_quality),
        values.get("width"),
        source_width(request.app[Service.KEY]),
    )


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


async def tile_handler(request: web.Request) -> web.StreamResponse:
    """A wall tile: the camera's newest small picture newer than ``?after=`` (its ``X-Seq``).

    Every wall reads the camera's one tile encoder (``webrtc/tiles.py``), so tiles cost one
    small encoder per camera however many walls show it. ``X-Live: 0`` marks a generated
    "no signal" picture.
    """
    service = request.app[Service.KEY]
    text = request.query.get("after", "0")
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise web.HTTPBadRequest(text="after must be a picture's X-Seq\n")
    encoder = service.tiles.acquire()
    after = int(text)
    if after > encoder.pictures.seq:
        after = 0  # numbered by an encoder that stopped since: this one's newest will do
    try:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT):
            seq, picture = await encoder.pictures.next(after)
    except (TimeoutError, LatestClosed):
        raise web.HTTPServiceUnavailable(text="the source delivers no picture\n") from None
    return web.Response(
        body=picture.data,
        content_type="image/jpeg",
        headers={
            "Cache-Control": "no-store",
            "X-Seq": str(seq),
            "X-Live": "1" if encoder.live and service.source.state == "live" else "0",
            "X-Capture-Time": f"{picture.capture_time:.3f}",
        },
    )


async def mjpeg_handler(request: web.Request) -> web.StreamResponse:
    service = request.app[Service.KEY]
    key = key_from_query(request, service.config.jpeg_quality)
    response = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
            # nginx would otherwise buffer the stream and hand each picture on one late.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    stall = service.config.stall_timeout
    encoder = service.jpeg.acquire(key)
    service.mjpeg_viewers += 1
    try:
        after = 0
        while True:
            after, picture = await encoder.pictures.next(after)
            # write() waits while this client's socket buffer is full: a slow client is
            # paced alone and takes the newest picture next, never a backlog. A client that
            # takes nothing for the stall timeout is dropped: it must not keep an encoder.
            async with asyncio.timeout(stall):
                await response.write(picture.mjpeg_part())
    except TimeoutError:
        logger.info("MJPEG client %s took nothing for %g s: dropped", request.remote, stall)
        if request.transport is not None:
            request.transport.abort()  # the response cannot end: its bytes are not read
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
    config = service.config
    # autoping=False: pings are answered here, under the rate limit (aiohttp would answer
    # every one of them, uncounted).
    ws = web.WebSocketResponse(
        max_msg_size=LEGACY_MAX_MESSAGE, heartbeat=20.0, compress=False, autoping=False
    )
    await ws.prepare(request)
    key = JpegKey.normalized(config.jpeg_quality, None)
    encoder = service.jpeg.acquire(key)
    wanted = asyncio.Event()

    async def answer() -> None:
        after = 0
        try:
            while True:
                await wanted.wait()
                wanted.clear()
                after, picture = await encoder.pictures.next(after)
                async with asyncio.timeout(config.stall_timeout):
                    await ws.send_str(picture.data_url_message())
        except TimeoutError:
            logger.info("/video client %s reads nothing: dropped", request.remote)
            await ws.close(code=1008, message=b"stalled: pictures are not read")
        except (LatestClosed, ConnectionError):
            await ws.close()

    sender = asyncio.get_running_loop().create_task(answer())
    service.legacy_viewers.add(ws)
    rate = TokenBucket(LEGACY_RATE, LEGACY_BURST)
    loop = asyncio.get_running_loop()
    idle_at = loop.time() + config.idle_timeout  # requests reset it, pongs do not
    try:
        while not ws.closed:
            try:
                # Not 0: aiohttp reads timeout=0 as "no timeout".
                msg = await ws.receive(timeout=max(0.001, idle_at - loop.time()))
            except TimeoutError:
                await ws.close(code=1008, message=b"idle: no request")
                break
            if msg.type in COUNTED_FRAMES and not rate.allow():
                if rate.refused > LEGACY_MAX_REFUSED:
                    logger.info("/video client %s: closed for flooding", request.remote)
                    await ws.close(code=1008, message=b"too many messages")
                continue
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                idle_at = loop.time() + config.idle_timeout
                wanted.set()
            elif msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            elif msg.type == WSMsgType.ERROR:
                logger.info("/video client %s: %s", request.remote, ws.exception())
                break
    finally:
        service.legacy_viewers.discard(ws)
        await cancel_and_wait(sender)
        service.jpeg.release(key, encoder)
    return ws
