"""Server CPU against the number of WebRTC viewers (run by hand; not part of the test suite).

Starts peercam on the test pattern pinned to core 0, then for each viewer count runs that many
aiortc viewers in a separate process pinned to core 1, and measures the server's CPU (from
/proc, % of one core) over a window once every viewer receives video. Repeats each count and
reports medians. Results: bench/results/viewers_cpu-<date>.json and .md.

    .venv/bin/python -m bench.viewers_cpu --counts 0 1 10 --runs 3 --codec vp8
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

from bench.common import ROOT, cpu_seconds, peercam_server, pin, rss_mb, write_results

logger = logging.getLogger("bench.viewers_cpu")


async def _viewers(url: str, count: int, codec: str, seconds: float) -> None:
    """Client side: ``count`` viewers; prints READY when all receive, then fps after."""
    from tests.aiortc_viewer import AiortcViewer

    viewers = [AiortcViewer(url, codec=codec, decode_bar=False) for _ in range(count)]
    try:
        await asyncio.gather(*(v.connect() for v in viewers))
        await asyncio.gather(*(v.wait_frames(15, timeout=30) for v in viewers))
        before = [v.received.frames for v in viewers]
        print("READY", flush=True)
        await asyncio.sleep(seconds)
        fps = [(v.received.frames - b) / seconds for v, b in zip(viewers, before, strict=True)]
        print("FPS " + json.dumps(fps), flush=True)
    finally:
        await asyncio.gather(*(v.close() for v in viewers))


def _measure(url: str, server_pid: int, count: int, codec: str, window: float) -> dict[str, float]:
    if count == 0:
        time.sleep(2)
        start = cpu_seconds(server_pid)
        time.sleep(window)
        return {"cpu_percent": 100 * (cpu_seconds(server_pid) - start) / window, "fps_min": 0}
    client = subprocess.Popen(
        [*pin(1), sys.executable, "-m", "bench.viewers_cpu", "--client", url,
         "--count", str(count), "--codec", codec, "--window", str(window + 2)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdout is not None
    try:
        if client.stdout.readline().strip() != "READY":
            raise RuntimeError("viewers did not start")
        time.sleep(1)  # settle: keyframes of the joins are done
        start, t0 = cpu_seconds(server_pid), time.monotonic()
        time.sleep(window)
        cpu = 100 * (cpu_seconds(server_pid) - start) / (time.monotonic() - t0)
        line = client.stdout.readline()
        fps = json.loads(line.removeprefix("FPS ")) if line.startswith("FPS ") else [0.0]
    finally:
        client.wait(60)
    return {"cpu_percent": cpu, "fps_min": min(fps), "fps_mean": statistics.mean(fps)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[0, 1, 10])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.client:
        asyncio.run(_viewers(args.client, args.count, args.codec, args.window))
        return 0

    rows = []
    with peercam_server() as (server, port):
        url = f"ws://127.0.0.1:{port}/ws"
        for count in args.counts:
            runs = [
                _measure(url, server.pid, count, args.codec, args.window) for _ in range(args.runs)
            ]
            row = {
                "viewers": count,
                "cpu_percent_median": statistics.median(r["cpu_percent"] for r in runs),
                "cpu_percent_runs": [round(r["cpu_percent"], 1) for r in runs],
                "fps_min": min(r["fps_min"] for r in runs),
                "rss_mb": round(rss_mb(server.pid), 1),
            }
            logger.info("%s", row)
            rows.append(row)
    lines = [
        f"# Server CPU vs WebRTC viewers ({args.codec}, 640x480@30 test pattern)",
        "",
        "| viewers | server CPU, % of one core (median) | runs | min fps | RSS MB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['viewers']} | {r['cpu_percent_median']:.1f} | {r['cpu_percent_runs']} "
            f"| {r['fps_min']:.1f} | {r['rss_mb']} |"
        )
    write_results(f"viewers_cpu-{args.codec}", {"codec": args.codec, "rows": rows}, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
