"""Hostile offers and a UDP counter, shared by tests/test_hostile_ice.py and bench/hostile_ice.py.

The offers are text only (no RTCPeerConnection behind them): a hostile client needs none to make
the server answer and start its checks. The counter is a UDP socket of the test's own that counts
the STUN messages the server sends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

STUN_MAGIC_COOKIE = bytes.fromhex("2112a442")

_SESSION = [
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "a=msid-semantic: WMS",
]  # fmt: skip
_FINGERPRINT = (
    "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24"
    ":C2:43:F0:A1:58:D0:A1:2C:19:08"
)


def _section(kind: str, mid: str, direction: str, transport: list[str]) -> list[str]:
    if kind == "audio":
        codec = ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=rtpmap:111 opus/48000/2"]
    else:
        codec = ["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=rtpmap:96 VP8/90000"]
    return [codec[0], *transport, f"a=mid:{mid}", f"a={direction}", "a=rtcp-mux", codec[1]]


def offer(
    *,
    candidates: Sequence[str] = (),
    ufrag: str = "abcd",
    pwd: str = "abcdefghijklmnopqrstuvwx",
    videos: int = 1,
    audio: str | None = None,
    compact: bool = False,
) -> str:
    """An offer with ``videos`` video sections (mids 0…), then an audio section of direction
    ``audio`` if given; ``candidates`` (``a=candidate:`` values) go in the first section.
    ``compact`` puts the ICE and DTLS attributes at session level (the most sections per KB)."""
    kinds = ["video"] * videos + (["audio"] if audio else [])
    mids = [str(n) for n in range(len(kinds))]
    transport = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", _FINGERPRINT, "a=setup:actpass"]
    lines = [*_SESSION, "a=group:BUNDLE " + " ".join(mids)]
    if compact:
        lines += transport
    for n, (kind, mid) in enumerate(zip(kinds, mids, strict=True)):
        direction = audio if kind == "audio" and audio else "recvonly"
        lines += _section(kind, mid, direction, [] if compact else ["c=IN IP4 0.0.0.0", *transport])
        if n == 0:
            lines += [f"a=candidate:{c}" for c in candidates]
    return "\r\n".join(lines) + "\r\n"


def host_candidate(port: int, address: str = "127.0.0.1", n: int = 1) -> str:
    return f"{n} 1 udp {2_130_706_431 - n} {address} {port} typ host"


@dataclass
class StunCounter(asyncio.DatagramProtocol):
    """Counts the STUN messages (and their bytes) that reach one UDP socket."""

    packets: int = 0
    size: int = 0  # bytes
    largest: int = 0
    transport: asyncio.DatagramTransport | None = field(default=None, repr=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if len(data) >= 20 and data[4:8] == STUN_MAGIC_COOKIE:
            self.packets += 1
            self.size += len(data)
            self.largest = max(self.largest, len(data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_counters(count: int, address: str = "127.0.0.1") -> list[StunCounter]:
    loop = asyncio.get_running_loop()
    counters: list[StunCounter] = []
    for _ in range(count):
        _transport, protocol = await loop.create_datagram_endpoint(
            StunCounter, local_addr=(address, 0)
        )
        counters.append(protocol)
    return counters
