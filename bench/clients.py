"""The benchmark's viewers, run in their own processes by :mod:`bench.run` (never by hand).

One process holds several viewers of one kind and is pinned to the clients' core. It talks to
bench.run with one JSON object per line: it prints ``{"event": "ready", ...}`` once every viewer
shows pictures (or has failed), reads ``{"start": t0, "end": t1}`` (epoch seconds, the
measurement window) from stdin, prints ``{"event": "result", "viewers": [...]}`` after ``t1``,
then closes its viewers and exits.

Kinds:

* ``webrtc``: aiortc viewers over ``/ws``. With ``--decode`` each decodes its video and reads
  the capture-time bar (latency); without, aiortc's decoder is replaced in this process by
  :class:`CountingDecoder`, which counts complete encoded frames from the first keyframe on
  and decodes nothing, so one client core can keep up with a hundred viewers.
* ``jpeg``: JPEG pictures over ``/ws``, acknowledged on receipt; latency from the header.
* ``legacy``: the original system's ``/video`` protocol (one request per picture, as its page
  does); with ``--decode`` the JPEG is decoded and its bar read for the latency.
* ``chromium`` / ``chromium-jpeg``: pages of headless Chromium (the element in WebRTC mode, or
  with ``?mode=jpeg``); latency from the bar on each presented video frame
  (``requestVideoFrameCallback``) or each picture the element draws on its canvas.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.aiortc_viewer import AiortcViewer
from tests.browser import TIMEBAR_JS
from webrtc import timebar
from webrtc.jpeg import HEADER

logger = logging.getLogger("bench.clients")

KINDS = ("webrtc", "jpeg", "legacy", "chromium", "chromium-jpeg")
CONNECT_CONCURRENCY = 8  # viewers signalling at once: a real crowd arrives spread out too


@dataclass
class Tally:
    """What one viewer saw: when it started, and the arrival of every frame (epoch seconds)."""

    started: float = field(default_factory=time.time)
    first: float | None = None
    arrivals: list[float] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (arrival, ms)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    shown: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, now: float, latency_ms: float | None = None) -> None:
        if self.first is None:
            self.first = now
            self.shown.set()
        self.arrivals.append(now)
        if latency_ms is not None:
            self.latencies.append((now, latency_ms))

    def fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.shown.set()

    def report(self, start: float, end: float) -> dict[str, Any]:
        """This viewer's figures within the window ``[start, end)``."""
        return {
            "frames": sum(1 for t in self.arrivals if start <= t < end),
            "first_frame_s": None if self.first is None else round(self.first - self.started, 4),
            "latencies_ms": [round(ms, 2) for t, ms in self.latencies if start <= t < end],
            "error": self.error,
            **self.extra,
        }


# -- WebRTC (aiortc) ---------------------------------------------------------------------------


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether an encoded frame (as aiortc's jitter buffer assembles it) can start decoding."""
    if codec_name.lower() == "vp8":
        return bool(data) and not data[0] & 1  # frame tag: bit 0 clear = key frame
    # H.264 in Annex B: an IDR slice (NAL type 5) anywhere in the access unit.
    start = data.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(data):
        if data[start + 3] & 0x1F == 5:
            return True
        start = data.find(b"\x00\x00\x01", start + 3)
    return False


class CountingDecoder:
    """Stands in for aiortc's video decoder: one tiny frame per complete encoded frame.

    aiortc's jitter buffer hands over only complete frames, so counting what reaches the decoder
    counts complete frames; frames before the first keyframe could not be shown and are not
    counted.
    """

    def __init__(self, codec_name: str) -> None:
        self._codec_name = codec_name
        self._started = False
        self._frame = av.VideoFrame(16, 16, "yuv420p")

    def decode(self, encoded_frame: Any) -> list[av.VideoFrame]:
        if not self._started:
            if not is_keyframe(self._codec_name, encoded_frame.data):
                return []
            self._started = True
        return [self._frame]


def install_counting_decoder() -> None:
    """Replace aiortc's video decoders with :class:`CountingDecoder`, in this process only."""
    from aiortc import rtcrtpreceiver

    real_get_decoder = rtcrtpreceiver.get_decoder  # type: ignore[attr-defined]

    def get_decoder(codec: Any) -> Any:
        if codec.mimeType.lower().startswith("video/"):
            return CountingDecoder(codec.mimeType.split("/")[1])
        return real_get_decoder(codec)

    rtcrtpreceiver.get_decoder = get_decoder  # type: ignore[attr-defined]


class BenchWebRTCViewer(AiortcViewer):
    """tests' aiortc viewer, recording each frame's arrival (and latency) into a tally."""

    def __init__(self, url: str, codec: str, tally: Tally, *, decode: bool) -> None:
        super().__init__(url, codec=codec, decode_bar=decode)
        self.tally = tally
        self.ended = asyncio.Event()

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.time()
                latency = None
                if self.decode_bar:
                    millis = timebar.read(frame.to_ndarray(format="gray"))  # type: ignore[union-attr]
                    latency = None if millis is None else now * 1000 - millis
                self.tally.add(now, latency)
        except MediaStreamError:
            self.tally.fail("the track ended")
        finally:
            self.ended.set()


async def webrtc_viewer(
    args: argparse.Namespace, tally: Tally, connecting: asyncio.Semaphore
) -> None:
    viewer = BenchWebRTCViewer(f"{args.url}/ws", args.codec, tally, decode=args.decode)
    try:
        async with connecting:
            tally.started = time.time()
            await viewer.connect()
        await viewer.ended.wait()
    except (OSError, RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}")
    finally:
        await viewer.close()


# -- JPEG over /ws and the original /video -----------------------------------------------------


async def jpeg_viewer(
    args: argparse.Namespace, tally: Tally, connecting: asyncio.Semaphore
) -> None:
    try:
        async with aiohttp.ClientSession() as http:
            async with connecting:
                tally.started = time.time()
                ws = await http.ws_connect(f"{args.url}/ws")
            async with ws:
                await ws.receive_json(timeout=10)  # config
                await ws.send_json({"type": "jpeg", "reason": "forced"})
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.BINARY:
                        continue
                    now = time.time()
                    captured = HEADER.unpack_from(msg.data)[2]
                    tally.add(now, (now - captured) * 1000)
                    await ws.send_json({"type": "ack"})  # as the page does once it has drawn
        tally.fail("the server closed the socket")
    except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}")


def read_bar_from_jpeg(data: bytes) -> int | None:
    """The capture time in a JPEG's bar; None if it does not decode."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    return None if image is None else timebar.read(image.astype(np.uint8, copy=False))


async def legacy_viewer(
    args: argparse.Namespace, tally: Tally, connecting: asyncio.Semaphore
) -> None:
    try:
        async with aiohttp.ClientSession() as http:
            async with connecting:
                tally.started = time.time()
                ws = await http.ws_connect(f"{args.url}/video")
            async with ws:
                await ws.send_str("frame")
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        continue
                    now = time.time()
                    await ws.send_str("frame")  # the original page asks again at once
                    latency = None
                    if args.decode:
                        url = json.loads(msg.data)["img"]
                        jpeg = base64.b64decode(url.split(",", 1)[1])
                        millis = await asyncio.to_thread(read_bar_from_jpeg, jpeg)
                        latency = None if millis is None else now * 1000 - millis
                    tally.add(now, latency)
        tally.fail("the server closed the socket")
    except (OSError, TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}")


# -- Chromium ----------------------------------------------------------------------------------

# Installed before the page's own scripts. Records, with Date.now(), every video frame the page
# presents (requestVideoFrameCallback) and every picture the element draws on its canvas (the
# snapshot while WebRTC negotiates; each picture in JPEG mode), each with the capture time read
# from the bar in those very pixels (webrtc/timebar.py's format; the decoder is the one of
# tests/timebar.js, reading only the rows of the bar). performance.now() of the first of
# each is the time since navigation started.
HARNESS_JS = (
    """
(() => {
"""
    + TIMEBAR_JS
    + """
  const h = { video: [], canvas: [], firstPicture: null, firstVideo: null };
  window.__bench = h;
  const keep = (list, entry) => { list.push(entry); if (list.length > 5000) list.shift(); };
  // The bar of a picture `width` wide, from a 2D context holding it at the top left.
  const readBar = (ctx, width) => {
    const rows = Math.max(4, Math.ceil(width / 80)) * 2;
    return readTimebar(ctx.getImageData(0, 0, width, rows).data, width, rows);
  };
  const element = () => document.querySelector("peercam-view");
  const drawImage = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const result = drawImage.apply(this, args);
    if (this.canvas === element()?.canvas) {
      const now = performance.now(), wall = Date.now();
      if (h.firstPicture === null) h.firstPicture = now;
      const bar = readBar(this, this.canvas.width);
      keep(h.canvas, [wall, bar === null ? null : wall - bar]);
    }
    return result;
  };
  customElements.whenDefined("peercam-view").then(() => {
    const video = element().video;
    const strip = document.createElement("canvas");
    const ctx = strip.getContext("2d", { willReadFrequently: true });
    const onFrame = (now, meta) => {
      const wall = Date.now();
      if (h.firstVideo === null) h.firstVideo = now;
      const rows = Math.max(4, Math.ceil(meta.width / 80)) * 2;
      if (strip.width !== meta.width || strip.height !== rows) {
        strip.width = meta.width;
        strip.height = rows;
      }
      ctx.drawImage(video, 0, 0, meta.width, rows, 0, 0, meta.width, rows);
      const bar = readBar(ctx, meta.width);
      keep(h.video, [wall, bar === null ? null : wall - bar]);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  });
})();
"""
)

CHROMIUM_FALLBACK = "/usr/bin/chromium"


class ChromiumViewers:
    """Pages of one headless Chromium, opened one after the other in fresh contexts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.jpeg = args.kind == "chromium-jpeg"
        self.pages: list[tuple[Any, Tally]] = []

    async def run(self, tallies: list[Tally], stop: asyncio.Event) -> None:
        from playwright.async_api import async_playwright

        from tests.browser import CHROMIUM_ARGS

        executable = os.environ.get("PEERCAM_CHROMIUM") or CHROMIUM_FALLBACK
        query = "?mode=jpeg" if self.jpeg else f"?mode=webrtc&codec={self.args.codec}"
        key = "canvas" if self.jpeg else "video"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
            )
            try:
                # A person's browser is already running: start its processes before timing.
                warm = await browser.new_context()
                await (await warm.new_page()).goto("about:blank")
                await warm.close()
                for tally in tallies:
                    await self._open(browser, tally, f"{self.args.url}/{query}", key)
                await stop.wait()
            finally:
                await browser.close()

    async def _open(self, browser: Any, tally: Tally, url: str, key: str) -> None:
        from playwright.async_api import Error as PlaywrightError

        context = await browser.new_context(viewport={"width": 800, "height": 600})
        await context.add_init_script(HARNESS_JS)
        page = await context.new_page()
        self.pages.append((page, tally))
        tally.started = time.time()
        try:
            await page.goto(url)
            await page.wait_for_function(
                f"() => window.__bench && window.__bench.{key}.length > 0", timeout=20_000
            )
        except PlaywrightError as exc:
            tally.fail(f"{type(exc).__name__}: {exc}")
            return
        first = await page.evaluate(
            "() => ({ origin: performance.timeOrigin, picture: window.__bench.firstPicture,"
            " video: window.__bench.firstVideo })"
        )
        pictures = [t for t in (first["picture"], first["video"]) if t is not None]
        tally.extra["first_picture_ms"] = round(min(pictures), 1)
        tally.extra["first_video_ms"] = None if first["video"] is None else round(first["video"], 1)
        first_of_mode = first["picture"] if self.jpeg else first["video"]
        tally.first = (first["origin"] + first_of_mode) / 1000
        tally.shown.set()

    async def collect(self) -> None:
        """Move what each page recorded into its tally (before the window is reported)."""
        key = "canvas" if self.jpeg else "video"
        for page, tally in self.pages:
            if tally.error is not None:
                continue
            events = await page.evaluate(f"() => window.__bench.{key}")
            tally.arrivals = [wall / 1000 for wall, _ in events]
            tally.latencies = [(wall / 1000, ms) for wall, ms in events if ms is not None]


# -- the process -------------------------------------------------------------------------------

ViewerFn = Callable[[argparse.Namespace, Tally, asyncio.Semaphore], Coroutine[Any, Any, None]]
VIEWERS: dict[str, ViewerFn] = {
    "webrtc": webrtc_viewer,
    "jpeg": jpeg_viewer,
    "legacy": legacy_viewer,
}


def emit(message: dict[str, Any]) -> None:
    """One line to bench.run: this process's only output on stdout."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    if args.kind == "webrtc" and not args.decode:
        install_counting_decoder()
    tallies = [Tally() for _ in range(args.count)]
    stop = asyncio.Event()
    chromium = ChromiumViewers(args) if args.kind.startswith("chromium") else None
    connecting = asyncio.Semaphore(CONNECT_CONCURRENCY)
    async with asyncio.TaskGroup() as group:
        tasks = (
            [group.create_task(chromium.run(tallies, stop))]
            if chromium is not None
            else [group.create_task(VIEWERS[args.kind](args, t, connecting)) for t in tallies]
        )
        try:
            async with asyncio.timeout(args.ready_timeout):
                await asyncio.gather(*(t.shown.wait() for t in tallies))
        except TimeoutError:
            for tally in tallies:
                if not tally.shown.is_set():
                    tally.fail(f"no picture within {args.ready_timeout:g} s")
        emit({"event": "ready", "shown": sum(t.first is not None for t in tallies)})

        line = await asyncio.to_thread(sys.stdin.readline)
        window = json.loads(line) if line.strip() else {"start": 0, "end": 0}
        # The measurement window itself: sleeping is what measuring means here.
        await asyncio.sleep(max(0.0, window["end"] - time.time()) + 0.05)
        if chromium is not None:
            await chromium.collect()
        emit(
            {
                "event": "result",
                "viewers": [t.report(window["start"], window["end"]) for t in tallies],
            }
        )
        stop.set()  # Chromium closes itself then: cancelling it could orphan the browser
        if chromium is None:
            for task in tasks:
                task.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT of the server")
    parser.add_argument("--count", type=int, default=1, help="viewers in this process")
    parser.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    parser.add_argument(
        "--decode", action="store_true", help="decode pictures and read the bar (latency)"
    )
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    args.url = args.url.rstrip("/")
    if args.kind.startswith("chromium"):
        args.url = args.url.replace("ws://", "http://")
    else:
        args.url = args.url.replace("http://", "ws://")
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s client[{os.getpid()}] %(name)s: %(message)s"
    )
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
