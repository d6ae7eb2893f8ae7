"""Churn at scale: thousands of viewers connect, receive, and leave (a third killed); run by
hand. Measures how long it takes, the server's CPU for it, and what is left behind: peers,
viewers, tasks, open files, memory. Results: bench/results/churn-<date>.json and .md.

    .venv/bin/python -m bench.churn --viewers 2000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ServerOptions, cpu_seconds, machine, peercam_server, write_results
from tests.test_churn import churn

logger = logging.getLogger("bench.churn")


async def _idle_status(server: Any, timeout: float) -> dict[str, Any]:
    """The server's status once every viewer is gone (polls: the server has no such event)."""
    async with asyncio.timeout(timeout):
        while True:
            status: dict[str, Any] = await server.status()
            if not status["peers"] and not status["viewers"] and not status["encoders"]:
                return status
            await asyncio.sleep(0.5)


async def run(viewers: int, warmup: int, out: Path) -> dict[str, Any]:
    async with peercam_server(ServerOptions(), max_viewers=10_000) as server:
        url = f"{server.ws_url}/ws"
        await churn(url, warmup)
        before = (await _idle_status(server, 60))["process"]
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        await churn(url, viewers, start=warmup)
        took = time.monotonic() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        status = await _idle_status(server, 120)
        after = status["process"]
    result = {
        "viewers": viewers,
        "webrtc": viewers // 2,
        "jpeg": viewers - viewers // 2,
        "killed": len(range(warmup, warmup + viewers, 3)),
        "seconds": round(took, 1),
        "viewersPerSecond": round(viewers / took, 1),
        "serverCpuSeconds": round(cpu, 1),
        "serverCpuMsPerViewer": round(1000 * cpu / viewers, 1),
        "before": before,
        "after": after,
        "rssGrowthMb": round(after["rssMb"] - before["rssMb"], 1),
        "leftPeers": len(status["peers"]),
        "leftViewers": status["viewers"],
        "machine": machine(),
        "command": " ".join(sys.argv),
    }
    table = "\n".join([
        f"# Churn: {viewers} viewers come and go ({time.strftime('%Y-%m-%d')})", "",
        "| viewers (WebRTC / JPEG / killed) | time s | viewers/s | server CPU ms per viewer "
        "| tasks | fds | RSS MB | left behind |",
        "|---|---|---|---|---|---|---|---|",
        f"| {viewers} ({result['webrtc']} / {result['jpeg']} / {result['killed']}) "
        f"| {result['seconds']} | {result['viewersPerSecond']} | {result['serverCpuMsPerViewer']} "
        f"| {before['tasks']} → {after['tasks']} | {before['fds']} → {after['fds']} "
        f"| {before['rssMb']} → {after['rssMb']} | {result['leftPeers']} peers, "
        f"{result['leftViewers']} viewers |", "",
    ])  # fmt: skip
    write_results(out, "churn", result, table)
    print(table)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--viewers", type=int, default=2000)
    parser.add_argument(
        "--warmup", type=int, help="viewers churned first, unmeasured (default: as many)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    asyncio.run(run(args.viewers, args.warmup or args.viewers, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
