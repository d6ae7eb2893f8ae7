"""Transport-wide feedback (webrtc/feedback.py): the draft's three chunk kinds, both delta
sizes, truncation, and the queue read from padding packets' delays."""

from __future__ import annotations

import struct

import pytest

from webrtc.feedback import LOWEST_WINDOW, PaddingDelays, feedback_messages, parse_feedback


def _fci(base: int, count: int, reference: int, chunks: list[int], deltas: bytes) -> bytes:
    header = struct.pack("!HH", base, count) + reference.to_bytes(3, "big", signed=True) + b"\x00"
    body = header + b"".join(struct.pack("!H", c) for c in chunks) + deltas
    return body + bytes(-len(body) % 4)


def _rtcp(fci: bytes, fmt: int = 15, packet_type: int = 205) -> bytes:
    payload = struct.pack("!LL", 1, 2) + fci
    return struct.pack("!BBH", 0x80 | fmt, packet_type, len(payload) // 4) + payload


def test_a_run_of_small_deltas() -> None:
    run = (1 << 13) | 3  # symbol 1 (received, small delta), three times
    arrivals = parse_feedback(_fci(10, 3, 1, [run], bytes([4, 8, 0])))
    assert arrivals == [(10, 65_000), (11, 67_000), (12, 67_000)]


def test_a_two_bit_vector_with_a_loss_and_a_negative_delta() -> None:
    vector = 0xC000 | (1 << 12) | (0 << 10) | (2 << 8) | (1 << 6)  # 1, 0, 2, 1, then unused
    deltas = bytes([4]) + struct.pack("!h", -8) + bytes([1])
    arrivals = parse_feedback(_fci(65534, 4, 0, [vector], deltas))
    # Sequence numbers wrap; the negative delta goes back in time.
    assert arrivals == [(65534, 1000), (65535, None), (0, -1000), (1, -750)]


def test_a_one_bit_vector_and_a_negative_reference() -> None:
    vector = 0x8000 | (1 << 13) | (1 << 11)  # received, lost, received, then lost
    arrivals = parse_feedback(_fci(7, 14, -2, [vector], bytes([2, 2])))
    assert arrivals[0] == (7, -128_000 + 500)
    assert arrivals[2] == (9, -128_000 + 1000)
    assert [a for _, a in arrivals].count(None) == 12


@pytest.mark.parametrize(
    "fci",
    [
        b"\x00" * 6,  # shorter than the header
        _fci(0, 3, 0, [], b"")[:8],  # chunks missing
        _fci(0, 2, 0, [(1 << 13) | 2], b"\x01")[:11],  # a delta missing
        _fci(0, 1, 0, [(3 << 13) | 1], b""),  # the reserved symbol
        _fci(0, 65535, 0, [(0 << 13) | 8191] * 9, b""),  # a crafted flood of "not received"
    ],
)
def test_malformed_feedback_is_refused(fci: bytes) -> None:
    with pytest.raises(ValueError, match="transport feedback"):
        parse_feedback(fci)


def test_only_transport_feedback_is_taken_from_a_compound_packet() -> None:
    fci = _fci(0, 1, 0, [(1 << 13) | 1], b"\x04")
    nack = _rtcp(struct.pack("!HH", 5, 0), fmt=1)
    receiver_report = struct.pack("!BBHL", 0x80, 201, 1, 9)
    assert list(feedback_messages(receiver_report + nack + _rtcp(fci))) == [fci]
    assert list(feedback_messages(receiver_report + b"\x80\xcd\xff\xff")) == []  # overruns


def _acknowledge(delays: PaddingDelays, sent: list[tuple[int, float]], offset: float) -> None:
    """Feedback for packets ``sent`` (sequence, send time), each arriving ``offset`` plus its
    own extra delay after it was sent (one message, 2-byte deltas of 250 µs)."""
    base = sent[0][0]
    arrivals = [round((t + offset) * 4000) for _, t in sent]  # 250 µs units
    reference = arrivals[0] // 256  # 64 ms units
    deltas, previous = b"", reference * 256
    for arrival in arrivals:
        deltas += struct.pack("!h", arrival - previous)
        previous = arrival
    run = (2 << 13) | len(sent)
    delays.on_feedback(_fci(base, len(sent), reference, [run], deltas))


def test_the_queue_is_the_delay_recent_padding_met_above_the_lowest() -> None:
    delays = PaddingDelays()
    assert delays.queue() is None
    t0 = 100.0
    clear = [(delays.number(t0 + n * 0.01), t0 + n * 0.01) for n in range(10)]
    _acknowledge(delays, clear, offset=5.0)
    assert delays.queue() == pytest.approx(0.0, abs=0.001)
    # One packet behind a picture's burst waits; the others do not: no queue.
    t1 = t0 + 0.1
    burst = [(delays.number(t1 + n * 0.01), t1 + n * 0.01) for n in range(10)]
    sequences = [s for s, _ in burst]
    _acknowledge(delays, [(sequences[0], burst[0][1] + 0.03), *burst[1:]], offset=5.0)
    assert delays.queue() == pytest.approx(0.0, abs=0.001)
    # Every packet 50 ms late: a queue stands.
    t2 = t1 + 0.1
    late = [(delays.number(t2 + n * 0.01), t2 + n * 0.01) for n in range(15)]
    _acknowledge(delays, [(s, t + 0.05) for s, t in late], offset=5.0)
    assert delays.queue() == pytest.approx(0.05, abs=0.002)
    assert delays.acknowledged == 35
    delays.on_feedback(b"\x00")
    assert delays.malformed == 1


def test_the_lowest_delay_is_forgotten_after_two_windows_so_clock_drift_is_no_queue() -> None:
    """Two machines' clocks drift apart: a receiver whose clock runs 100 ms behind after a
    while reads every packet 100 ms "earlier". A lowest kept forever would read the drift the
    other way as a queue; after two windows only the recent lowest counts."""
    delays = PaddingDelays()
    t0 = 100.0
    _acknowledge(delays, [(delays.number(t0), t0)], offset=5.0)
    # The receiver's clock now runs 80 ms ahead: every packet reads 80 ms late, no queue.
    for n in range(1, 5):
        t = t0 + n * LOWEST_WINDOW * 0.9
        _acknowledge(delays, [(delays.number(t), t + 0.08)], offset=5.0)
    latest = delays.latest()
    assert latest is not None
    assert latest[0] == pytest.approx(t0 + 4 * LOWEST_WINDOW * 0.9)
    assert latest[1] == pytest.approx(0.0, abs=0.001)
