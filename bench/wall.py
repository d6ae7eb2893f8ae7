"""What a wall costs: 4 cameras at 640x480, 10 full WebRTC viewers, then 10 walls on top.

    python -m bench.wall [--seconds 20] [--out bench/results]

peercam runs pinned to the server core with four test-pattern cameras; the viewers run in this
process, pinned to the client core. Three phases, server CPU measured over each: idle (four
sources capturing, nobody watching), 10 walls alone (each polls every camera's ``tile.jpg`` as
the page does), 10 full viewers (aiortc, WebRTC VP8, one rung, spread over the cameras), and
those plus the 10 walls. What the walls cost is walls-alone minus idle, and full-plus-walls
minus full; with one shared tile encoder per camera it should not grow with the number of
walls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    CLIENT_CORE,
    RESULTS,
    Server,
    ServerOptions,
    cpu_seconds,
    fmt,
    machine,
    peercam_server,
    write_results,
)
from tests.aiortc_viewer import AiortcViewer
from webrtc.tiles import TILE_LINGER

logger = logging.getLogger("bench.wall")

CAMERAS = ("c1", "c2", "c3", "c4")
FULL_VIEWERS = 10
WALLS = 10
TILE_MIN_INTERVAL = 0.4  # as static/wall.js


@contextlib.asynccontextmanager
async def wall_server(width: int, height: int, fps: float) -> AsyncIterator[Server]:
    """peercam with the wall's cameras, ready when every camera delivers."""
    options = ServerOptions(width=width, height=height, fps=fps, codec="vp8")
    extra = (
        *(arg for name in CAMERAS for arg in ("--source", f"{name}=test")),
        "--snapshot-rate", "1000",
        # One rung: the viewers' encoders stay the same whatever the (busy) client keeps up with.
        "--ladder", "off",
    )  # fmt: skip
    async with peercam_server(options, 1000, extra_args=extra) as server:
        yield server


class Wall:
    """One operator's wall: every camera's tile, fetched as static/wall.js fetches it."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self._http = http
        self._base = base
        self.pictures = 0
        self.failures = 0
        self.bytes = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._tile(name) for name in CAMERAS))

    async def _tile(self, name: str) -> None:
        seq = 0
        while True:
            started = time.monotonic()
            try:
                url = f"{self._base}/cam/{name}/tile.jpg?after={seq}"
                async with self._http.get(url) as response:
                    body = await response.read()
                    if response.status != 200:
                        self.failures += 1
                    else:
                        seq = int(response.headers["X-Seq"])
                        self.pictures += 1
                        self.bytes += len(body)
            except aiohttp.ClientError:
                self.failures += 1
            # The page's own pacing (at most one request per 0.4 s per tile), not a sync.
            await asyncio.sleep(max(0.0, TILE_MIN_INTERVAL - (time.monotonic() - started)))


async def _cpu_percent(server: Server, seconds: float) -> float:
    before, at = cpu_seconds(server.pid), time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window
    return 100 * (cpu_seconds(server.pid) - before) / (time.monotonic() - at)


async def _walls_running(
    http: aiohttp.ClientSession, server: Server, seconds: float
) -> tuple[float, float, int]:
    """Server CPU with 10 walls polling; tiles per second per wall tile; failed requests."""
    walls = [Wall(http, server.http_url) for _ in range(WALLS)]
    tasks = [asyncio.get_running_loop().create_task(w.run()) for w in walls]
    try:
        await asyncio.sleep(2)  # tile encoders start on the first requests (a warm-up)
        pictures_before = sum(w.pictures for w in walls)
        at = time.monotonic()
        cpu = await _cpu_percent(server, seconds)
        elapsed = time.monotonic() - at
        tiles = sum(w.pictures for w in walls) - pictures_before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return cpu, tiles / elapsed / (WALLS * len(CAMERAS)), sum(w.failures for w in walls)


async def measure(seconds: float, width: int, height: int, fps: float) -> dict[str, Any]:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {CLIENT_CORE})
    async with wall_server(width, height, fps) as server, aiohttp.ClientSession() as http:
        await asyncio.sleep(2)  # let the sources settle after start (a warm-up, not a sync)
        before, at = await server.status(), time.monotonic()
        idle = await _cpu_percent(server, seconds)
        after = await server.status()
        # What the sources managed: below the asked rate, the server core was not its own.
        source_fps = sum(
            after["cameras"][n]["source"]["frames"] - before["cameras"][n]["source"]["frames"]
            for n in CAMERAS
        ) / ((time.monotonic() - at) * len(CAMERAS))
        walls_alone, alone_rate, alone_failures = await _walls_running(http, server, seconds)
        await asyncio.sleep(TILE_LINGER + 1)  # the tile encoders stop when nobody asks
        viewers = [
            AiortcViewer(f"{server.ws_url}/cam/{CAMERAS[i % len(CAMERAS)]}/ws", decode_bar=False)
            for i in range(FULL_VIEWERS)
        ]
        try:
            for viewer in viewers:
                await viewer.connect()
            for viewer in viewers:
                await viewer.wait_frames(10, timeout=30)
            frames_before = sum(v.received.frames for v in viewers)
            at = time.monotonic()
            full = await _cpu_percent(server, seconds)
            fps_full = (sum(v.received.frames for v in viewers) - frames_before) / (
                (time.monotonic() - at) * FULL_VIEWERS
            )
            with_walls, rate, failures = await _walls_running(http, server, seconds)
            status = await server.status()
        finally:
            for viewer in viewers:
                await viewer.close()
    return {
        "cameras": len(CAMERAS),
        "size": f"{width}x{height}@{fps:g}",
        "fullViewers": FULL_VIEWERS,
        "walls": WALLS,
        "seconds": seconds,
        "serverCpuPercent": {
            "idle": idle,
            "wallsAlone": walls_alone,
            "fullViewers": full,
            "fullViewersAndWalls": with_walls,
        },
        "wallCostPercent": {"alone": walls_alone - idle, "withFullViewers": with_walls - full},
        "tilesPerSecondPerWallTile": {"alone": alone_rate, "withFullViewers": rate},
        "tileFailures": alone_failures + failures,
        "fullViewerFps": fps_full,
        "sourceFpsWhileIdle": source_fps,
        "tileEncoders": {name: cam["tiles"] for name, cam in status["cameras"].items()},
    }


def markdown(result: dict[str, Any]) -> str:
    cpu = result["serverCpuPercent"]
    cost = result["wallCostPercent"]
    rate = result["tilesPerSecondPerWallTile"]
    return "\n".join(
        [
            f"# Wall benchmark ({result['cameras']} cameras at {result['size']})",
            "",
            "| phase | server CPU (% of a core) | tiles/s per wall tile |",
            "|---|---|---|",
            f"| idle (sources only) | {fmt(cpu['idle'])} | |",
            f"| {result['walls']} walls | {fmt(cpu['wallsAlone'])} | {fmt(rate['alone'], 2)} |",
            f"| {result['fullViewers']} full WebRTC viewers | {fmt(cpu['fullViewers'])} | |",
            f"| both | {fmt(cpu['fullViewersAndWalls'])} | {fmt(rate['withFullViewers'], 2)} |",
            "",
            f"The walls cost {fmt(cost['alone'])} % of a core alone and "
            f"{fmt(cost['withFullViewers'])} % beside the full viewers "
            f"({result['tileFailures']} failed tile requests); the full viewers received "
            f"{fmt(result['fullViewerFps'])} fps each; the sources made "
            f"{fmt(result['sourceFpsWhileIdle'])} fps each while idle. Load average at start: "
            f"{result['machine']['load_average_at_start']}.",
            "",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    at_start = machine()
    result = asyncio.run(measure(args.seconds, args.width, args.height, args.fps))
    result["machine"] = at_start
    text = markdown(result)
    json_path, md_path = write_results(args.out, "wall", result, text)
    print(text)
    print(f"results: {json_path} {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
