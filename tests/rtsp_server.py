"""A real RTSP camera for the pass-through tests: GStreamer's gst-rtsp-server.

Run with the system interpreter (the venv cannot import ``gi``)::

    /usr/bin/python3 tests/rtsp_server.py PORT [GOP_SECONDS [WIDTHxHEIGHT]]

Serves, each as one shared live stream, a 640x480@30 (or WIDTHxHEIGHT) test pattern (a sweeping
square) with peercam's capture-time bar (:mod:`webrtc.timebar`, redrawn here without numpy)
stamped into every picture *before* encoding, so a viewer that decodes the bar reads the
camera's own time:

- ``/h264``: H.264 constrained baseline, one IDR every GOP_SECONDS (default 4), no B-frames;
- ``/bframes``: H.264 main profile with B-frames;
- ``/h265``: H.265 (HEVC).

Prints ``ready`` on stdout once it listens.
"""

from __future__ import annotations

import sys
import time
import zlib

import gi  # type: ignore[import-not-found]

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found]  # noqa: E402

FPS = 30
BITS = 64
if len(sys.argv) > 3:
    WIDTH, HEIGHT = (int(n) for n in sys.argv[3].split("x"))
else:
    WIDTH, HEIGHT = 640, 480
BLOCK = max(4, WIDTH // 80)
KBITS = max(1000, WIDTH * HEIGHT * FPS // 10_000)  # ~0.1 bit per pixel

ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max={gop} "
    "bitrate={kbits} ! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96",
    "bframes": "x264enc speed-preset=ultrafast bframes=2 b-adapt=false key-int-max=30 "
    "bitrate={kbits} ! video/x-h264,profile=main ! rtph264pay name=pay0 pt=96",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate={kbits} "
    "! rtph265pay name=pay0 pt=96",
}


def bar_rows(millis: int) -> bytes:
    """The top ``2 * BLOCK`` luma rows carrying ``millis`` (as webrtc.timebar.stamp draws)."""
    check = zlib.crc32(millis.to_bytes(6, "big")) & 0xFFFF
    word = ((millis & ((1 << 48) - 1)) << 16) | check
    line = bytearray(WIDTH)
    for i in range(BITS):
        if word >> (BITS - 1 - i) & 1:
            x = BLOCK * (i + 1)
            line[x : x + BLOCK] = b"\xff" * BLOCK
    black = bytes(BLOCK * (BITS + 2)) + b"\x80" * (WIDTH - BLOCK * (BITS + 2))
    rows = [black] * (BLOCK // 2) + [
        bytes(line[: BLOCK * (BITS + 2)]) + black[BLOCK * (BITS + 2) :]
    ] * BLOCK
    rows += [black] * (2 * BLOCK - len(rows))
    return b"".join(rows)


def picture(index: int, millis: int) -> bytes:
    """One I420 picture: grey, a white square sweeping across, the bar on top."""
    y = bytearray(b"\x80" * (WIDTH * HEIGHT))
    size = HEIGHT // 6
    x0 = (index * 4) % (WIDTH + size) - size
    left, right = max(0, x0), min(WIDTH, x0 + size)
    if right > left:
        for row in range(HEIGHT // 2 - size // 2, HEIGHT // 2 + size // 2):
            y[row * WIDTH + left : row * WIDTH + right] = b"\xff" * (right - left)
    # A ramp in the bottom quarter: something for the encoder to spend bits on.
    ramp = bytes(i * 255 // WIDTH for i in range(WIDTH))
    for row in range(HEIGHT * 3 // 4, HEIGHT):
        y[row * WIDTH : (row + 1) * WIDTH] = ramp
    top = bar_rows(millis)
    y[: len(top)] = top
    return bytes(y) + b"\x80" * (WIDTH * HEIGHT // 2)


class Factory(GstRtspServer.RTSPMediaFactory):  # type: ignore[misc]
    def __init__(self, encoder: str) -> None:
        super().__init__()
        self._launch = (
            f"( appsrc name=src is-live=true do-timestamp=true format=time "
            f"caps=video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate={FPS}/1 "
            f"! queue ! {encoder} )"
        )
        self.set_shared(True)
        self.connect("media-configure", self._configure)

    def do_create_element(self, url: object) -> Gst.Element:
        return Gst.parse_launch(self._launch)

    def _configure(self, factory: object, media: GstRtspServer.RTSPMedia) -> None:
        source = media.get_element().get_by_name_recurse_up("src")
        state = {"index": 0, "running": True}

        def push() -> bool:
            if not state["running"]:
                return False
            state["index"] += 1
            data = picture(state["index"], int(time.time() * 1000))
            buffer = Gst.Buffer.new_wrapped(data)
            buffer.duration = Gst.SECOND // FPS
            source.emit("push-buffer", buffer)
            return True

        def stop(*_: object) -> None:
            state["running"] = False

        media.connect("unprepared", stop)
        GLib.timeout_add(1000 // FPS, push)


def main() -> None:
    port = sys.argv[1]
    gop = round(float(sys.argv[2]) * FPS) if len(sys.argv) > 2 else 4 * FPS
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    mounts = server.get_mount_points()
    for name, encoder in ENCODERS.items():
        mounts.add_factory(f"/{name}", Factory(encoder.format(gop=gop, kbits=KBITS)))
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on port {port}")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
