"""JPEG-mode fps and glass-to-glass latency against the number of viewers (run by hand).

peercam on the 640x480@30 test pattern, pinned to core 0; N JPEG viewers over /ws in one
process pinned to core 1, each acknowledging every picture (as the page does after drawing it).
Latency is the receiver's clock minus the capture time in each picture's header. Each count
runs several times; the table gives medians. Results: bench/results/jpeg_viewers-<date>.*

    .venv/bin/python -m bench.jpeg_viewers --counts 1 20 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time

import aiohttp

from bench.common import (
    ROOT,
    cpu_seconds,
    median_of,
    peercam_server,
    percentile,
    pin,
    write_results,
)
from webrtc.jpeg import HEADER

logger = logging.getLogger("bench.jpeg_viewers")


async def _viewer(
    http: aiohttp.ClientSession, url: str, seconds: float, latencies: list[float]
) -> float:
    async with http.ws_connect(url) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "jpeg", "reason": "forced"})
        for _ in range(10):  # warm up
            await ws.receive()
            await ws.send_json({"type": "ack"})
        count = 0
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            captured = HEADER.unpack_from(msg.data)[2]
            latencies.append((time.time() - captured) * 1000)
            count += 1
            await ws.send_json({"type": "ack"})
        return count / seconds


async def _clients(url: str, count: int, seconds: float) -> None:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        fps = await asyncio.gather(*(_viewer(http, url, seconds, latencies) for _ in range(count)))
    print(json.dumps({"fps": fps, "latencies": latencies}), flush=True)


def _run(port: int, pid: int, count: int, seconds: float) -> dict[str, float]:
    client = subprocess.Popen(
        [*pin(1), sys.executable, "-m", "bench.jpeg_viewers", "--client",
         f"ws://127.0.0.1:{port}/ws", "--count", str(count), "--seconds", str(seconds)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    start, t0 = cpu_seconds(pid), time.monotonic()
    out, _ = client.communicate(timeout=seconds + 60)
    cpu = 100 * (cpu_seconds(pid) - start) / (time.monotonic() - t0)
    data = json.loads(out.strip().splitlines()[-1])
    return {
        "fps_mean": statistics.mean(data["fps"]),
        "fps_min": min(data["fps"]),
        "p50": percentile(data["latencies"], 50),
        "p95": percentile(data["latencies"], 95),
        "cpu": cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.client:
        asyncio.run(_clients(args.client, args.count, args.seconds))
        return 0
    table = [
        "# JPEG mode over /ws (640x480@30 test pattern, quality 75)",
        "",
        "| viewers | fps per viewer, mean / min | latency p50 / p95 ms | server CPU % | runs |",
        "|---|---|---|---|---|",
    ]
    rows = []
    with peercam_server() as (server, port):
        for count in args.counts:
            runs = [_run(port, server.pid, count, args.seconds) for _ in range(args.runs)]
            row = {k: median_of(runs, k) for k in runs[0]} | {"viewers": count, "runs": runs}
            rows.append(row)
            logger.info("%s", {k: v for k, v in row.items() if k != "runs"})
            table.append(
                f"| {count} | {row['fps_mean']:.1f} / {row['fps_min']:.1f} "
                f"| {row['p50']:.1f} / {row['p95']:.1f} | {row['cpu']:.1f} | {args.runs} |"
            )
    path = write_results("jpeg_viewers", {"rows": rows}, table)
    print("\n".join(table))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
