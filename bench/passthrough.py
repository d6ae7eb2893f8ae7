"""Pass-through benchmark: what an H.264 RTSP camera costs peercam, passed through or transcoded,
and how soon a late joiner sees it (run by hand, not in CI).

* **CPU**: for each size (720p30, 1080p30 by default), a real RTSP camera (tests/rtsp_server.py,
  GStreamer, 4 s GOP, H.264 constrained baseline) and peercam reading it with
  ``--passthrough auto`` (packets go out as they are) or ``--passthrough off`` (decoded by
  OpenCV, over TCP as pass-through reads it, encoded by libx264, as before), ``--ladder off
  --codec h264``; 1 and 20 aiortc viewers in another process (``bench.clients``, counting
  frames without decoding). peercam's CPU (% of one core) over a ``--window`` of seconds once
  every viewer shows pictures, and per 30 frames a second delivered (a starved transcoder
  delivers fewer frames and so costs less in total).
* **Late joiner**: in this process, a viewer joins mid-GOP (the cached GOP at least 2 s old, the
  camera's next IDR under 2 s away), with the GOP cache and without: time from its offer to its
  first decoded picture, and the picture age (capture-time bar) 1.5-2.5 s after that picture.

    .venv/bin/python -m bench.passthrough
    .venv/bin/python -m bench.passthrough --sizes 1280x720 --viewers 1 --window 5
    .venv/bin/python -m bench.passthrough --sizes --joins 5      # late joiners only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from bench.common import (
    CLIENT_CORE,
    RESULTS,
    ROOT,
    ServerOptions,
    cpu_seconds,
    fmt,
    machine,
    peercam_server,
    prefix,
    write_results,
)
from signaling.app import create_app
from signaling.config import CameraConfig, Config
from tests.aiortc_viewer import AiortcViewer
from tests.conftest import eventually
from tests.rtsp import RtspCamera
from webrtc.passthrough import StreamSource
from webrtc.sources import SourceSpec

logger = logging.getLogger("bench.passthrough")

MODES = {"auto": "pass-through", "off": "transcode"}  # --passthrough


async def cpu_run(
    camera: RtspCamera, size: str, mode: str, viewers: int, window: float
) -> dict[str, Any]:
    width, height = (int(n) for n in size.split("x"))
    options = ServerOptions(width=width, height=height, fps=30, codec="h264")
    extra = ("--source", camera.url("h264"), "--passthrough", mode, "--ladder", "off")
    async with peercam_server(options, viewers, extra_args=extra) as server:
        clients = await asyncio.create_subprocess_exec(
            *prefix(CLIENT_CORE), sys.executable, "-m", "bench.clients", "--kind", "webrtc",
            "--url", server.http_url, "--count", str(viewers), "--codec", "h264",
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert clients.stdin is not None
        assert clients.stdout is not None
        try:
            ready = json.loads(await asyncio.wait_for(clients.stdout.readline(), 120))
            await asyncio.sleep(3.0)  # the joins' replays (slower on a busy machine) settle
            start = time.time()
            cpu0 = cpu_seconds(server.pid)
            message = json.dumps({"start": start, "end": start + window}) + "\n"
            clients.stdin.write(message.encode())
            await clients.stdin.drain()
            result = json.loads(await asyncio.wait_for(clients.stdout.readline(), window + 60))
            elapsed = time.time() - start
            cpu = 100 * (cpu_seconds(server.pid) - cpu0) / elapsed
            status = await server.status()
        finally:
            if clients.returncode is None:
                clients.terminate()
            await clients.wait()
    fps = [v["frames"] / window for v in result["viewers"]]
    return {
        "size": size,
        "mode": mode,
        "viewers": viewers,
        "shown": ready.get("shown"),
        "server_cpu_percent": round(cpu, 1),
        "fps_mean": round(statistics.mean(fps), 1) if fps else None,
        "cpu_percent_per_30fps": round(cpu * 30 / statistics.mean(fps), 1) if any(fps) else None,
        "encoders_started": status["encodersStarted"],
        "video": status.get("video"),
    }


async def late_joiner(camera: RtspCamera, cache: bool) -> dict[str, Any]:
    source = StreamSource("url", camera.url("h264"), gop_cache=cache)
    await asyncio.to_thread(source.open)
    config = Config(
        ice_addresses=("127.0.0.1",),
        cameras=(CameraConfig(source=SourceSpec("url", camera.url("h264"))),),
    )
    server = TestServer(create_app(replace(config), source=source), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        # A fresh GOP, then mid-GOP: the cached GOP >= 2 s old.
        keyframes = source.feed.keyframes
        await eventually(
            lambda: source.feed.keyframes > keyframes and source.feed.gop_seconds() >= 2.0, 15
        )
        gop_age = source.feed.gop_seconds()
        viewer = AiortcViewer(str(server.make_url("/ws")).replace("http://", "ws://"))
        started = time.monotonic()
        try:
            await viewer.connect()
            await viewer.wait_frames(1, timeout=15)
            first = time.monotonic() - started
            assert viewer.received.first_frame_at is not None
            # The measurement window itself: sleeping is what measuring means here. Pictures
            # decoded 1.5-2.5 s after the first (a replay makes frame counts no clock).
            await asyncio.sleep(viewer.received.first_frame_at + 1.5 - time.monotonic())
            begin = len(viewer.received.latencies_ms)
            await asyncio.sleep(viewer.received.first_frame_at + 2.5 - time.monotonic())
            ages = viewer.received.latencies_ms
            window = ages[begin:]
        finally:
            await viewer.close()
    finally:
        await server.close()
    return {
        "cache": cache,
        "gop_age_at_join_s": round(gop_age, 2),
        "first_frame_s": round(first, 3),
        "first_picture_age_ms": round(ages[0], 1) if ages else None,
        "age_1_5_to_2_5_s_median_ms": round(statistics.median(window), 1) if window else None,
    }


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Pass-through benchmark",
        "",
        ", ".join(f"{k}: {v}" for k, v in data["machine"].items()),
        "",
        "| size | mode | viewers | server CPU % | fps (mean) | CPU % per 30 fps | encoders |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["cpu"]:
        lines.append(
            f"| {r['size']} | {MODES[r['mode']]} | {r['viewers']} | {fmt(r['server_cpu_percent'])} "
            f"| {fmt(r['fps_mean'])} | {fmt(r['cpu_percent_per_30fps'])} "
            f"| {r['encoders_started']} |"
        )
    lines += [
        "",
        "| late joiner | GOP age at join (s) | first frame (s) | first picture's age (ms) "
        "| age 1.5-2.5 s later, median (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in data["late_joiner"]:
        lines.append(
            f"| {'with' if r['cache'] else 'without'} cache | {fmt(r['gop_age_at_join_s'], 2)} "
            f"| {fmt(r['first_frame_s'], 2)} | {fmt(r['first_picture_age_ms'], 0)} "
            f"| {fmt(r['age_1_5_to_2_5_s_median_ms'], 0)} |"
        )
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # OpenCV reads RTSP over UDP by default, which loses packets on a busy machine: TCP, as the
    # pass-through reader does, so both paths get every frame.
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
    data: dict[str, Any] = {"machine": machine(), "cpu": [], "late_joiner": []}
    for size in args.sizes:
        async with RtspCamera(size=size) as camera:
            for viewers in args.viewers:
                for mode in ("auto", "off"):
                    result = await cpu_run(camera, size, mode, viewers, args.window)
                    logger.info("%s", result)
                    data["cpu"].append(result)
    async with RtspCamera() as camera:
        for _ in range(args.joins):
            for cache in (True, False):
                result = await late_joiner(camera, cache)
                logger.info("%s", result)
                data["late_joiner"].append(result)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="*", default=["1280x720", "1920x1080"], help="none: late joiners only"
    )
    parser.add_argument("--joins", type=int, default=3, help="late joins with and without cache")
    parser.add_argument("--viewers", nargs="+", type=int, default=[1, 20])
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    data = asyncio.run(run(args))
    json_path, md_path = write_results(args.out, "passthrough", data, markdown(data))
    sys.stdout.write(markdown(data))
    logger.info("results: %s, %s", json_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
