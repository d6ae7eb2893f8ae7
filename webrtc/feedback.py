"""Transport-wide feedback on padding: a queue seen within a tenth of a second, not a second.

A padding probe (:mod:`webrtc.padding`) fails when the link does not carry it, and what it
costs is the queue it builds before it stops. Chrome says so late: its estimate falls once its
delay filter is sure, its receiver reports come about once a second, and a shaper's bucket
hides the link's rate until it runs dry. Traces showed 300-400 ms of queue per failed probe.

Chrome acknowledges every packet that carries a transport-wide sequence number
(draft-holmer-rmcat-transport-wide-cc-extensions-01) with its arrival time, in RTCP feedback
sent every 50-100 ms. peercam numbers its padding packets only: the media keep feeding
Chrome's own estimate (REMB) as before, and the padding's arrival times, against their send
times, show a queue as soon as it stands (:class:`PaddingDelays`). aiortc neither negotiates
the extension nor parses this feedback: the answer gets its ``a=extmap`` line
(:mod:`webrtc.extensions`) and the feedback is read from the transport's decrypted RTCP
(:func:`feedback_messages`, :func:`parse_feedback`).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator

RTCP_RTPFB = 205
TWCC_FMT = 15

#: A delay sample's packet must have been sent this recently to count for the queue now.
RECENT = 0.1
#: Send times kept for packets not acknowledged yet (a second of padding at 2 Mbit/s).
KEEP = 1024
#: The lowest delay is the least over the last one to two of these windows (seconds): two
#: machines' clocks drift apart by tens of microseconds a second, and a lowest kept for an
#: hour would read that drift as a queue.
LOWEST_WINDOW = 30.0
#: The most packets one message may report on: far more than are ever unacknowledged, and a
#: bound on the work a viewer's crafted message can cause (a 13-bit run covers 8191).
MAX_STATUSES = 4 * KEEP


def feedback_messages(data: bytes) -> Iterator[bytes]:
    """The FCI of each transport-wide feedback message in a compound RTCP packet."""
    at = 0
    while at + 4 <= len(data):
        first, packet_type, words = struct.unpack_from("!BBH", data, at)
        end = at + 4 + 4 * words
        if end > len(data) or first >> 6 != 2:
            return
        if packet_type == RTCP_RTPFB and first & 0x1F == TWCC_FMT and end - at >= 20:
            yield data[at + 12 : end]  # after the header and the two SSRCs
        at = end


def parse_feedback(fci: bytes) -> list[tuple[int, int | None]]:
    """(transport sequence number, arrival time in µs on the receiver's clock, or None for a
    packet reported lost), in sequence order.

    Raises:
        ValueError: the message is truncated or malformed.
    """
    if len(fci) < 8:
        raise ValueError("transport feedback shorter than its header")
    base, count = struct.unpack_from("!HH", fci)
    if count > MAX_STATUSES:
        raise ValueError(f"transport feedback on {count} packets, more than {MAX_STATUSES}")
    reference = int.from_bytes(fci[4:7], "big", signed=True)
    at = 8
    symbols: list[int] = []
    while len(symbols) < count:
        if at + 2 > len(fci):
            raise ValueError("transport feedback truncated in its chunks")
        (chunk,) = struct.unpack_from("!H", fci, at)
        at += 2
        if chunk & 0x8000 == 0:  # run length: one symbol, many times
            symbols.extend([(chunk >> 13) & 0x3] * (chunk & 0x1FFF))
        elif chunk & 0x4000 == 0:  # status vector, 14 one-bit symbols
            symbols.extend((chunk >> (13 - n)) & 0x1 for n in range(14))
        else:  # status vector, 7 two-bit symbols
            symbols.extend((chunk >> (12 - 2 * n)) & 0x3 for n in range(7))
    del symbols[count:]
    arrival = reference * 64_000
    out: list[tuple[int, int | None]] = []
    for n, symbol in enumerate(symbols):
        sequence = (base + n) & 0xFFFF
        if symbol == 0:
            out.append((sequence, None))
            continue
        if symbol == 1:
            if at + 1 > len(fci):
                raise ValueError("transport feedback truncated in its deltas")
            delta = fci[at]
            at += 1
        elif symbol == 2:
            if at + 2 > len(fci):
                raise ValueError("transport feedback truncated in its deltas")
            (delta,) = struct.unpack_from("!h", fci, at)
            at += 2
        else:
            raise ValueError("transport feedback has a reserved status symbol")
        arrival += delta * 250
        out.append((sequence, arrival))
    return out


class PaddingDelays:
    """Send times of numbered padding packets and, from the receiver's feedback, how far
    their one-way delay stands above the lowest seen: the queue in front of the viewer."""

    def __init__(self) -> None:
        self._next = 0
        self._sent: dict[int, float] = {}
        self._lowest: float | None = None
        self._epoch_lowest: float | None = None  # the least delay of this window ...
        self._epoch_started: float | None = None  # ... and when it started
        #: (send time, delay above the lowest) of acknowledged packets, newest last.
        self._samples: deque[tuple[float, float]] = deque(maxlen=256)
        self.acknowledged = 0
        self.malformed = 0

    def number(self, now: float) -> int:
        """The transport sequence number of a padding packet sent at ``now``."""
        sequence = self._next
        self._next = (sequence + 1) & 0xFFFF
        self._sent[sequence] = now
        if len(self._sent) > KEEP:
            del self._sent[next(iter(self._sent))]
        return sequence

    def on_feedback(self, fci: bytes) -> None:
        try:
            arrivals = parse_feedback(fci)
        except ValueError:
            self.malformed += 1
            return
        for sequence, arrival in arrivals:
            sent = self._sent.pop(sequence, None)
            if sent is None:
                continue  # reported again, or not one of ours
            if arrival is None:
                continue  # lost: only arrivals show a queue
            self.acknowledged += 1
            offset = arrival / 1e6 - sent  # the clocks differ: only changes mean anything
            self._lower(offset, sent)
            assert self._lowest is not None
            self._samples.append((sent, offset - self._lowest))

    def _lower(self, offset: float, sent: float) -> None:
        """The lowest delay: the least of this window and the one before (LOWEST_WINDOW)."""
        if self._epoch_started is None or sent - self._epoch_started >= LOWEST_WINDOW:
            self._lowest = self._epoch_lowest  # the window before (None at the start)
            self._epoch_lowest = None
            self._epoch_started = sent
        if self._epoch_lowest is None or offset < self._epoch_lowest:
            self._epoch_lowest = offset
        if self._lowest is None or offset < self._lowest:
            self._lowest = offset

    def queue(self) -> float | None:
        """Seconds of queue the most recent padding met: the least delay above the lowest
        among packets sent within ``RECENT`` of the newest acknowledged one (one packet
        behind a picture's burst waits for the burst; all of them wait only for a queue).
        None: nothing acknowledged yet."""
        latest = self.latest()
        return None if latest is None else latest[1]

    def latest(self) -> tuple[float, float] | None:
        """(send time of the newest acknowledged packet, :meth:`queue`), or None."""
        if not self._samples:
            return None
        newest = self._samples[-1][0]
        return newest, min(delay for sent, delay in self._samples if sent >= newest - RECENT)
