"""What padding probes cost the server's CPU (webrtc/padding.py).

One process: peercam's app on the test pattern and one aiortc viewer (VP8) on loopback. Once it
plays, the viewer's sender is made to send ``--packets`` padding packets (RtxPadding.send, in
bursts of 4 as the pacer does), and the process's CPU time over them is divided by their count.
The viewer's decryption of the same packets is in that figure too: it is an upper bound of
the sender's cost. The share of a core is at the rate of one probe for the top rung from 360p
(~600 kbit/s of padding, ~240 packets/s), which a viewer needs only while it probes; the
sonar's (one small numbered packet every 50 ms, for every viewer that acknowledges them) is
measured the same way.

    .venv/bin/python -m bench.padding_cost --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from bench.common import RESULTS, machine, machine_line, write_results
from signaling.app import create_app
from tests.aiortc_viewer import AiortcViewer
from tests.conftest import LOOPBACK_CONFIG, service_of, ws_url
from webrtc.feedback import PaddingDelays
from webrtc.padding import (
    PACKET_WIRE_BYTES,
    PADDING_BYTES,
    SONAR_INTERVAL,
    SONAR_PADDING,
    RtxPadding,
)
from webrtc.sources import TestPatternSource

logger = logging.getLogger("bench.padding_cost")

PROBE_BPS = 600_000


async def _per_packet(
    padding: RtxPadding, sends: int, count: int, size: int, media: float
) -> float:
    """CPU seconds per packet of ``sends`` sends of ``count`` packets, less the media's
    share (``media``: CPU seconds per wall second without padding)."""
    sent = padding.packets
    cpu0, wall0 = time.process_time(), time.monotonic()
    for _ in range(sends):
        await padding.send(count, size)
        await asyncio.sleep(0)  # let the receiver and the media run, as the pacer does
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return (cpu - media * wall) / (padding.packets - sent)


async def measure(packets: int) -> dict[str, Any]:
    server = TestServer(create_app(LOOPBACK_CONFIG, source=TestPatternSource()), host="127.0.0.1")
    await server.start_server()
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(10, timeout=20)
        [peer] = service_of(server).peers.peers()
        assert peer._transceiver is not None
        padding = RtxPadding(peer._transceiver.sender)
        # The media goes on meanwhile: measure it alone first, then with the padding.
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(2.0)  # the measuring window of the media alone
        media = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        # Bursts of 4 as the pacer sends them; the sonar's (8 bytes of padding, numbered)
        # one at a time.
        per_packet = await _per_packet(padding, packets // 4, 4, PADDING_BYTES, media)
        sonar = RtxPadding(peer._transceiver.sender, PaddingDelays())
        per_sonar = await _per_packet(sonar, packets // 4, 1, SONAR_PADDING, media)
    finally:
        await viewer.close()
        await server.close()
    rate = PROBE_BPS / 8 / PACKET_WIRE_BYTES
    return {
        "packets": padding.packets,
        "us_per_packet": round(per_packet * 1e6, 1),
        "probe_core_percent": round(per_packet * rate * 100, 2),
        "us_per_sonar_packet": round(per_sonar * 1e6, 1),
        "sonar_core_percent": round(per_sonar / SONAR_INTERVAL * 100, 3),
    }


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    m = machine()
    runs = [await measure(args.packets) for _ in range(args.runs)]
    keys = ("us_per_packet", "probe_core_percent", "us_per_sonar_packet", "sonar_core_percent")
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    lines = [
        f"# peercam padding cost, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        machine_line(m),
        f"- Command: `python -m bench.padding_cost {' '.join(argv)}`".rstrip(),
        "- One process: peercam and one aiortc viewer on loopback (its decryption included)",
        "",
        "| CPU per padding packet (µs) | one probe at 600 kbit/s (% of a core) | runs |",
        "|---|---|---|",
        f"| {median['us_per_packet']} | {median['probe_core_percent']} |"
        f" {', '.join(str(r['us_per_packet']) for r in runs)} µs |",
        "",
        f"| CPU per sonar packet (µs) | the sonar, {1 / SONAR_INTERVAL:g} packets/s"
        " (% of a core, per viewer) | runs |",
        "|---|---|---|",
        f"| {median['us_per_sonar_packet']} | {median['sonar_core_percent']} |"
        f" {', '.join(str(r['us_per_sonar_packet']) for r in runs)} µs |",
    ]
    report = {"machine": m, "runs": runs, "median": median}
    write_results(args.out, "padding-cost", report, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main(sys.argv[1:])))
