"""Hostile offers and candidates at a larger scale than the tests (issue #14, findings 3 and 4);
run by hand, inside a loopback-only namespace (traffic goes to 127.0.0.0/8 only):

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m bench.hostile_ice'

- **STUN on demand**: one session with a 4-character ufrag, then ``--sessions`` sessions each
  with a ``--ufrag-chars`` ufrag, then as many with a 256-character one (RFC 8839's longest);
  each offers, then trickles ``--targets`` candidates naming UDP sockets of this script; what
  reaches those sockets
  in ``--window`` seconds is counted (packets, bytes, targets hit, largest packet).
- **Many m-lines**: ``--offers`` offers of 135 video sections, each on its own socket; the
  server's RSS before and after, the replies, and the time to get them.

Results: bench/results/hostile-ice-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import RESULTS, ServerOptions, machine, peercam_server, rss_mb, write_results
from tests.hostile_sdp import StunCounter, host_candidate, offer, open_counters

logger = logging.getLogger("bench.hostile_ice")


async def _session(
    http: aiohttp.ClientSession, url: str, ufrag: str, counters: list[StunCounter]
) -> str:
    """One hostile session: an offer, then one candidate per counter (paced under the
    server's message rate); the socket stays open for the window. Returns the offer's reply."""
    ws = await http.ws_connect(url)
    await ws.receive_json(timeout=10)
    await ws.send_str(json.dumps({"type": "offer", "sdp": offer(ufrag=ufrag)}))
    reply: dict[str, Any] = await ws.receive_json(timeout=30)
    if reply["type"] == "answer":
        for n, counter in enumerate(counters, start=1):
            candidate = "candidate:" + host_candidate(counter.port, n=n)
            await ws.send_json({"type": "candidate", "candidate": candidate, "sdpMid": "0"})
            if n % 50 == 0:
                await asyncio.sleep(1.0)  # the server's rate limit: 60 messages per second
    return str(reply.get("code") or reply["type"])


async def stun_flood(url: str, sessions: int, targets: int, ufrag: int, window: float) -> Any:
    counters = [await open_counters(targets) for _ in range(sessions)]
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            replies = await asyncio.gather(*(_session(http, url, "u" * ufrag, c) for c in counters))
            await asyncio.sleep(max(0.0, window - (time.monotonic() - started)))  # measuring
        every = [c for group in counters for c in group]
        return {
            "sessions": sessions,
            "targetsNamed": sessions * targets,
            "ufragChars": ufrag,
            "windowS": window,
            "offerReplies": dict(Counter(replies)),
            "stunPackets": sum(c.packets for c in every),
            "udpBytes": sum(c.size for c in every),
            "targetsHit": sum(1 for c in every if c.packets),
            "largestPacket": max(c.largest for c in every),
        }
    finally:
        for group in counters:
            for counter in group:
                counter.close()


async def many_sections(url: str, pid: int, offers: int) -> Any:
    sdp = offer(videos=135, compact=True)
    before = rss_mb(pid)
    replies: Counter[str] = Counter()
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        for _ in range(offers):
            async with http.ws_connect(url) as ws:
                await ws.receive_json(timeout=10)
                await ws.send_str(json.dumps({"type": "offer", "sdp": sdp}))
                reply = await ws.receive_json(timeout=60)
                replies[str(reply.get("code") or reply["type"])] += 1
                if reply["type"] == "answer":
                    replies["answerKB"] = max(replies["answerKB"], len(reply["sdp"]) // 1024)
    return {
        "offers": offers,
        "offerKB": round(len(sdp) / 1024, 1),
        "replies": dict(replies),
        "seconds": round(time.monotonic() - started, 2),
        "rssBeforeMb": round(before, 1),
        "rssAfterMb": round(rss_mb(pid), 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with peercam_server(ServerOptions(), max_viewers=1000) as server:
        url = server.ws_url + "/ws"
        plain = await stun_flood(url, 1, args.targets, 4, args.window)
        huge = await stun_flood(url, args.sessions, args.targets, args.ufrag_chars, args.window)
        # The worst a session can still do: the longest ufrag RFC 8839 allows.
        longest = await stun_flood(url, args.sessions, args.targets, 256, args.window)
        sections = await many_sections(url, server.pid, args.offers)
    data = {
        "machine": machine(),
        "plainUfrag": plain,
        "hugeUfrag": huge,
        "longestUfrag": longest,
        "manySections": sections,
    }
    rows = [
        f"| {name} | {r['sessions']} | {r['targetsNamed']} | {r['ufragChars']} | "
        f"{r['offerReplies']} | {r['stunPackets']} | {r['targetsHit']} | {r['udpBytes']:,} | "
        f"{r['largestPacket']} |"
        for name, r in (("plain ufrag", plain), ("huge ufrag", huge), ("256-char ufrag", longest))
    ]
    markdown = "\n".join(
        [
            f"# Hostile ICE ({args.window:g} s window)",
            "",
            "| case | sessions | targets named | ufrag chars | offer replies | STUN packets"
            " | targets hit | UDP bytes | largest |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"135-section offers: {json.dumps(sections)}",
            "",
        ]
    )
    json_path, _ = write_results(args.out, "hostile-ice", data, markdown)
    print(markdown)
    print(f"written {json_path}")
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--ufrag-chars", type=int, default=12_000)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--offers", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
