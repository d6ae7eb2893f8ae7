"""The per-viewer rung controller and the ladder's rungs, with made-up reports and clocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from webrtc.controller import (
    DOWN_COOLDOWN,
    DRAIN_MAX,
    HOLD_MAX,
    PAD_HOLD,
    PAD_RAMP,
    PROBE_BASE,
    PROBE_HOLD,
    PROBE_MAX,
    PROBE_TRUST,
    RungController,
    wire_bitrate,
)
from webrtc.ladder import Ladder, LadderSpec, Rung

#: Wire needs of the default ladder of a 640x480@30 source (921/368/138/64 kbit/s).
NEEDS = [1_028_000, 420_000, 166_000, 77_000]


def run(controller: RungController, start: float, end: float, step: float = 0.25) -> list[int]:
    """Ask for decisions every ``step`` s from ``start`` to ``end``; the rungs moved to."""
    moves: list[int] = []
    t = start
    while t <= end:
        decision = controller.decide(t)
        if decision is not None:
            moves.append(decision.index)
        t += step
    return moves


def test_a_clean_link_stays_on_the_top_rung() -> None:
    """No trouble reported: the top rung, however long."""
    c = RungController(NEEDS, now=0.0)
    for t in range(60):
        c.on_remb(2_000_000, float(t))
        c.on_receiver_report(0.0, 0.02, float(t))
    assert run(c, 0.0, 60.0) == []
    assert c.index == 0


def test_an_estimate_far_below_the_rung_is_congestion_even_without_a_drop() -> None:
    """Chrome's first REMB on a 300 kbit/s link: ~300 kbit/s within a second, no drop yet,
    and the first round trip already half a second of queue."""
    c = RungController(NEEDS, now=0.0)
    c.on_remb(320_000, 1.0)
    assert c.decide(1.0) is None  # no round trip yet: no evidence of a queue
    c.on_receiver_report(0.0, 0.45, 1.4)
    decision = c.decide(1.4)
    assert decision is not None
    assert decision.index == 2


def test_a_low_first_estimate_on_a_clean_path_is_not_congestion() -> None:
    """aiortc's first REMB on a busy machine is low whatever the link: with a short round
    trip it is no reason to leave the top rung."""
    c = RungController(NEEDS, now=0.0)
    c.on_remb(197_000, 1.0)
    c.on_receiver_report(0.0, 0.012, 1.2)
    assert run(c, 1.0, 2.5) == []


def test_an_estimate_held_below_the_rung_is_congestion() -> None:
    """A receiver held at its link's rate sends the same estimate again and again: below the
    rung's need and flat for 3 s, the viewer steps down to what it carries."""
    c = RungController(NEEDS, start=2, now=0.0)  # 180 kbit/s on a 150 kbit/s link
    moves = []
    for i in range(20):
        t = 5.0 + i * 0.5
        c.on_remb(106_000, t)
        if (decision := c.decide(t)) is not None:
            moves.append((t, decision.index))
    assert moves
    assert moves[0][1] == 3
    assert moves[0][0] >= 5.0 + 3.0


def test_an_estimate_below_the_rung_with_no_queue_in_the_round_trip_is_not_congestion() -> None:
    """A link that recovered after a slow spell: the receiver's estimate grows a few percent a
    second, held below the rung's need and what it is sent, while the round trip stays at its
    lowest. No queue, no step down; the same estimate with the round trip up is congestion."""
    clean = RungController(NEEDS, start=1, now=0.0)
    held = RungController(NEEDS, start=1, now=0.0)
    for c, rtt in ((clean, 0.004), (held, 0.09)):
        c.on_receiver_report(0.0, 0.002, 0.2)
        for i in range(16):
            t = 1.0 + i * 0.5
            c.on_sent(round(400_000 / 8 * t), t)
            c.on_remb(330_000, t)
            c.on_receiver_report(0.0, rtt, t)
            c.decide(t)
    assert clean.index == 1
    assert clean.switches == 0
    assert held.index == 2


def test_an_encoder_that_undershoots_is_not_a_link_that_cannot_carry_it() -> None:
    """A still scene: the top rung sends 500 kbit/s of its 921, and the receiver's estimate
    settles above that, below the rung's need: no step down."""
    c = RungController(NEEDS, now=0.0)
    for i in range(30):
        t = 5.0 + i * 0.5
        c.on_sent(round(500_000 / 8 * t), t)
        c.on_remb(760_000, t)
        assert c.decide(t) is None


def test_a_low_but_rising_estimate_at_start_is_not_congestion() -> None:
    """Chrome on a clean link: a first REMB of about half the top rung's need after ~5 s,
    rising slowly. Not a drop, not far below: the viewer stays on the top rung."""
    c = RungController(NEEDS, now=0.0)
    moves = []
    for i in range(20):
        t = 5.0 + i * 0.5
        c.on_remb(450_000 + 30_000 * i, t)
        if (decision := c.decide(t)) is not None:
            moves.append(decision)
    assert moves == []


def test_congestion_steps_down_at_once_to_the_rung_the_estimate_carries() -> None:
    """A REMB drop to 300 kbit/s: straight to the rung that fits, within one decision."""
    c = RungController(NEEDS, now=0.0)
    c.on_remb(1_500_000, 5.0)
    c.on_remb(300_000, 5.1)
    decision = c.decide(5.2)
    assert decision is not None
    assert decision.index == 2  # 166 kbit/s fits in 90 % of 300 kbit/s; 420 does not
    assert "estimate" in decision.reason


def test_loss_steps_down_one_rung_at_a_time_with_a_cooldown() -> None:
    """Heavy loss without an estimate: one rung, then another only after the cooldown."""
    c = RungController(NEEDS, now=0.0)
    c.on_receiver_report(0.3, None, 4.0)
    c.on_receiver_report(0.3, None, 5.0)
    assert c.decide(5.0) is not None
    assert c.index == 1
    c.on_receiver_report(0.3, None, 5.0 + DOWN_COOLDOWN / 2)
    assert c.decide(5.0 + DOWN_COOLDOWN / 2) is None  # reports this soon describe the old rung
    c.on_receiver_report(0.3, None, 5.0 + DOWN_COOLDOWN + 0.1)
    assert c.decide(5.0 + DOWN_COOLDOWN + 0.1) is not None
    assert c.index == 2


def test_a_standing_queue_in_the_round_trip_time_steps_down() -> None:
    """RTT 400 ms above the lowest seen: the path queues, even without loss or REMB."""
    c = RungController(NEEDS, now=0.0)
    c.on_receiver_report(0.0, 0.02, 1.0)
    c.on_receiver_report(0.0, 0.45, 5.0)
    decision = c.decide(5.0)
    assert decision is not None
    assert "round trip" in decision.reason
    # 430 ms of queue: one rung below the one that fits while it drains, then that one.
    assert decision.index == 2
    assert "draining" in decision.reason
    c.on_receiver_report(0.0, 0.3, 5.5)
    assert run(c, 5.5, 5.9) == []  # draining
    c.on_receiver_report(0.0, 0.03, 6.0)
    back = c.decide(6.0)
    assert back is not None
    assert (back.index, back.reason) == (1, "queue drained")


def test_a_queue_that_does_not_drain_ends_the_drain_in_time() -> None:
    c = RungController(NEEDS, now=0.0)
    c.on_receiver_report(0.0, 0.02, 1.0)
    c.on_receiver_report(0.0, 0.45, 5.0)
    assert run(c, 5.0, 5.0) == [2]
    assert run(c, 5.25, 5.0 + DRAIN_MAX - 0.25) == []
    assert run(c, 5.0 + DRAIN_MAX, 5.0 + DRAIN_MAX) == [1]
    assert c.last_reason == "drain time over"


def test_steps_up_when_the_estimate_carries_the_next_rung() -> None:
    """An estimate well above the next rung, held for a while: one rung up."""
    c = RungController(NEEDS, start=2, now=0.0)
    moves = []
    for i in range(20):
        t = i * 0.25
        c.on_remb(600_000, t)
        c.on_receiver_report(0.0, 0.02, t)
        decision = c.decide(t)
        if decision is not None:
            moves.append((t, decision.index))
    assert moves
    assert moves[0][1] == 1
    assert moves[0][0] >= 2.0  # not at once: steps up are slow


def test_a_failed_probe_goes_back_and_waits_twice_as_long() -> None:
    """A probe into congestion returns at once; the next one comes later, up to a cap."""
    c = RungController(NEEDS, start=2, now=0.0)
    c.on_remb(250_000, 4.5)  # a receiver capped by what it gets: never reaches the next rung
    first = run(c, 0.0, PROBE_BASE + 2)
    assert first == [1]
    assert c.probing
    probe_at = c._changed_at
    c.on_remb(200_000, probe_at + 0.8)  # the queue grows: the estimate falls
    decision = c.decide(probe_at + 0.8)
    assert decision is not None
    assert decision.index == 2
    assert "probe failed" in decision.reason
    assert not c.probing
    # The next probe waits twice the base.
    assert run(c, probe_at + 0.8, probe_at + 0.8 + 2 * PROBE_BASE - 0.5) == []
    assert run(c, probe_at + 0.8 + 2 * PROBE_BASE - 0.25, probe_at + 0.8 + 2 * PROBE_BASE + 0.5)
    assert c._probe_wait <= PROBE_MAX


def test_a_probe_that_holds_climbs_again_soon() -> None:
    """A recovered link: each probe that holds is followed quickly by the next."""
    c = RungController(NEEDS, start=3, now=0.0)
    t, moves = 0.0, []
    while t < 20.0 and c.index > 0:
        c.on_receiver_report(0.0, 0.02, t)
        decision = c.decide(t)
        if decision is not None:
            moves.append((round(t, 2), decision.index))
        t += 0.25
    assert [index for _, index in moves] == [2, 1, 0]
    assert moves[-1][0] <= PROBE_BASE + 2 * (PROBE_HOLD + 1.5) + 1.0


def test_random_loss_in_one_report_is_not_congestion() -> None:
    """One report of 12 % between reports of 2 %: a few lost packets of a low rung, not a
    queue; two reports of 30 % are."""
    c = RungController(NEEDS, now=0.0)
    c.on_receiver_report(0.02, None, 4.0)
    c.on_receiver_report(0.12, None, 5.0)
    assert c.decide(5.0) is None
    c.on_receiver_report(0.3, None, 6.0)
    c.on_receiver_report(0.3, None, 7.0)
    assert c.decide(7.0) is not None


@pytest.mark.parametrize(
    ("loss", "rtt", "steps"),
    [
        (0.12, 0.002, False),  # random loss: no queue in the round trip
        (0.12, 0.15, True),  # a queue that overflows
        (0.25, 0.002, True),  # severe loss steps down on its own
    ],
)
def test_loss_steps_down_with_a_queue_or_when_severe(loss: float, rtt: float, steps: bool) -> None:
    c = RungController(NEEDS, now=0.0)
    c.on_receiver_report(0.0, 0.002, 1.0)  # the lowest round trip
    moved = False
    for n in range(8):
        t = 2.0 + n * 0.5
        c.on_receiver_report(loss, rtt, t)
        moved = moved or c.decide(t) is not None
    assert moved == steps
    assert (c.index >= 1) == steps


def test_a_padding_probe_on_a_lossy_link_judges_the_loss_it_adds() -> None:
    """5 % random loss: the probe starts, 6 % during it is the link's own, 12 % is the
    padding overflowing a queue."""
    c = RungController(NEEDS, start=1, now=0.0)
    c.can_pad = True
    *_, t = _steady(c, PROBE_BASE + 0.5, remb=600_000, sent=400_000, loss=0.05)
    t += 0.25
    assert c.probing
    c.on_receiver_report(0.06, 0.01, t)
    assert c.decide(t) is None
    assert c.probing
    c.on_receiver_report(0.12, 0.01, t + 0.25)
    assert c.decide(t + 0.25) is None
    assert not c.probing
    assert "12% lost" in c.last_reason
    assert c.index == 1


def test_loss_is_measured_over_a_second_of_reports_not_one_report() -> None:
    """Reports come with every NACK, a tenth of a second apart: one of them reads 50 % (2 of
    4 packets) on a link that loses 5 %; the counts over a second say 5 %."""
    c = RungController(NEEDS, now=0.0)
    lost = highest = 0
    for i in range(1, 60):  # 6 s of reports every 0.1 s, 10 packets each, 1 in 20 lost
        highest += 10
        lost += 1 if i % 2 else 0
        c.on_receiver_report(0.5 if i % 2 else 0.0, None, i * 0.1, lost=lost, highest=highest)
        assert c.decide(i * 0.1) is None
    assert 0.03 <= c.fraction_lost <= 0.07
    for i in range(60, 90):  # then a queue overflows: 3 of every 10 lost
        highest += 10
        lost += 3
        c.on_receiver_report(0.3, None, i * 0.1, lost=lost, highest=highest)
        if c.decide(i * 0.1) is not None:
            break
    assert c.index == 1


def test_stale_reports_are_no_evidence() -> None:
    """A loss report from long ago does not keep a viewer down."""
    c = RungController(NEEDS, now=0.0)
    c.on_receiver_report(0.5, None, 1.0)
    assert c.decide(10.0) is None


def test_wire_bitrate_adds_headers() -> None:
    assert wire_bitrate(100_000, 30) > 110_000


# -- the ladder ------------------------------------------------------------------------------


def test_the_default_ladder_follows_the_source_size() -> None:
    """640x480@30 at 921 kbit/s: full, 240p at 40 %, 180p at 15 %, 120p at half rate: half
    and quarter sizes (cheap to scale), no rung starved of the top's bits per pixel."""
    ladder = LadderSpec().resolve(640, 480, 30.0, 921_600)
    assert [(r.height, r.bitrate, r.fps) for r in ladder.rungs] == [
        (0, 921_600, 0.0),
        (240, 368_640, 0.0),
        (180, 138_240, 0.0),
        (120, 64_512, 15.0),
    ]
    top = ladder.rungs[0].bitrate / (640 * 480 * 30)
    for rung in ladder.rungs[1:]:
        width, fps = rung.height * 4 / 3, rung.fps or 30.0
        assert top <= rung.bitrate / (width * rung.height * fps) <= 2.5 * top


def test_the_bottom_rung_stays_small_for_big_sources() -> None:
    ladder = LadderSpec().resolve(1920, 1080, 30.0, 6_000_000)
    assert ladder.rungs[-1].bitrate <= 90_000
    assert ladder.rungs[-1].height <= 405


def test_ladder_off_is_one_rung_at_the_top_bitrate() -> None:
    assert LadderSpec.parse("off").resolve(640, 480, 30, 921_600) == Ladder((Rung(0, 921_600),))


def test_explicit_rungs_are_parsed_and_ordered() -> None:
    spec = LadderSpec.parse("240p@60k/15,720p@2.5m,360p@500k")
    ladder = spec.resolve(1280, 720, 30, 2_000_000)
    assert [str(r) for r in ladder.rungs] == ["full@2500k", "360p@500k", "240p@60k/15"]


@pytest.mark.parametrize(
    "text", ["480p", "fast", "480p@1k", "99999p@500k", "240p@60k/500", "1p@1m,1p@1m"]
)
def test_bad_ladders_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match=r"rung|ladder"):
        LadderSpec.parse(text)


def test_a_round_trip_that_falls_after_a_step_down_is_a_queue_draining() -> None:
    """The queue a probe built drains for a second or two after the step down: its falling
    round-trip times are no reason for another step; a round trip that stays up is."""
    c = RungController(NEEDS, now=0.0)
    c.on_receiver_report(0.0, 0.002, 1.0)
    c.on_receiver_report(0.0, 0.6, 5.0)
    first = c.decide(5.0)
    assert first is not None
    assert first.index == 2  # draining, one below the rung that fits
    assert run(c, 5.25, 5.0 + DRAIN_MAX) == [1]  # the drain's time is up: the rung that fits
    back = 5.0 + DRAIN_MAX
    c.on_receiver_report(0.0, 0.46, back + 0.6)  # still high, but falling
    c.on_receiver_report(0.0, 0.3, back + 1.1)
    assert run(c, back + 0.6, back + 1.1) == []
    c.on_receiver_report(0.0, 0.31, back + 1.6)  # no longer falling: a standing queue
    again = c.decide(back + 1.6)
    assert again is not None
    assert again.index >= 2


def test_congestion_soon_after_a_probe_held_counts_as_a_failed_probe() -> None:
    """A round trip reports a queue a second or two late, sometimes after the probe was
    judged held: the next probe of that rung must still wait twice as long."""
    c = RungController(NEEDS, start=1, now=0.0)
    c.on_receiver_report(0.0, 0.002, 0.5)
    assert run(c, 0.0, PROBE_BASE + 0.5) == [0]
    probe_at = c._changed_at
    assert run(c, probe_at, probe_at + PROBE_HOLD + 0.25) == []
    assert not c.probing  # held
    late = probe_at + PROBE_HOLD + 0.6
    c.on_receiver_report(0.0, 0.6, late)
    decision = c.decide(late)
    assert decision is not None
    assert decision.index == 2  # draining 600 ms of queue
    assert "after a probe" in decision.reason
    c.on_receiver_report(0.0, 0.002, late + 0.6)
    assert run(c, late + 0.25, late + 0.6) == [1]  # drained
    drained = late + 0.5
    assert run(c, late + 0.75, drained + 2 * PROBE_BASE - 0.5) == []
    assert run(c, drained + 2 * PROBE_BASE - 0.25, drained + 2 * PROBE_BASE + 0.5) == [0]


def test_a_probe_trusted_for_a_while_forgets_earlier_failures() -> None:
    """Congestion long after a probe held is new congestion: the next probe waits the base."""
    c = RungController(NEEDS, start=1, now=0.0)
    c.on_receiver_report(0.0, 0.002, 0.5)
    run(c, 0.0, PROBE_BASE + PROBE_HOLD + 1.0)
    assert c.index == 0
    assert not c.probing
    late = c._changed_at + PROBE_HOLD + PROBE_TRUST + 1.0
    assert run(c, c._changed_at, late - 0.25) == []
    c.on_receiver_report(0.0, 0.6, late)
    decision = c.decide(late)
    assert decision is not None
    assert "after a probe" not in decision.reason
    assert c._probe_wait == PROBE_BASE


def test_a_drop_moves_to_the_rung_the_estimate_itself_carries() -> None:
    """A receiver's estimate after a drop already has its margin (Chrome: 0.85x what it gets):
    440 kbit/s carries the 420 kbit/s rung, so the viewer goes there, not one further down."""
    c = RungController(NEEDS, now=0.0)
    c.on_remb(900_000, 4.0)
    c.on_remb(440_000, 5.0)
    decision = c.decide(5.0)
    assert decision is not None
    assert decision.index == 1


# -- padding probes (webrtc/padding.py) ------------------------------------------------------


def _steady(
    c: RungController, until: float, *, remb: int, sent: int, loss: float = 0.0, rtt: float = 0.01
) -> Iterator[float]:
    """The same reports every 0.25 s from 0 to ``until`` (the viewer sent ``sent`` bit/s), a
    decision after each; yields each report's time once it is decided."""
    t = 0.0
    while t <= until:
        c.on_remb(remb, t)
        c.on_receiver_report(loss, rtt, t)
        c.on_sent(round(t * sent / 8), t)
        c.decide(t)
        yield t
        t += 0.25


def _calm_on_rung_1(c: RungController, until: float, remb: int = 600_000) -> None:
    """Reports of a calm viewer on rung 1, sent ~400 kbit/s, every 0.25 s up to ``until``."""
    t = 0.0
    while t <= until:
        c.on_remb(remb, t)
        c.on_receiver_report(0.0, 0.01, t)
        c.on_sent(round(t * 400_000 / 8), t)
        t += 0.25


def _padding_probe_on_rung_1() -> RungController:
    """A viewer that can be padded, calm on rung 1 until its padding probe has begun."""
    c = RungController(NEEDS, start=1, now=0.0)
    c.can_pad = True
    _calm_on_rung_1(c, PROBE_BASE + 0.5)
    run(c, 0.0, PROBE_BASE + 0.5)
    assert c.probing
    return c


def test_with_padding_a_probe_pads_first_and_switches_only_once_the_link_carried_it() -> None:
    """A padding probe: padding ramps up to the next rung's extra need; the rung does not
    change during it, and does once it held."""
    c = RungController(NEEDS, start=1, now=0.0)
    c.can_pad = True
    _calm_on_rung_1(c, PROBE_BASE + 0.5)
    assert run(c, 0.0, PROBE_BASE + 0.5) == []
    assert c.probing
    assert c.warm == 0
    started = next(t for t in (PROBE_BASE + i * 0.25 for i in range(-2, 3)) if c.padding_rate(t))
    extra = NEEDS[0] - 400_000 * 1.1
    assert 0 < c.padding_rate(started + PAD_RAMP / 3) < c.padding_rate(started + PAD_RAMP / 2)
    assert c.padding_rate(started + PAD_RAMP) == pytest.approx(extra, rel=0.05)
    assert c.index == 1
    t = started
    moves: list[int] = []
    while t < started + PAD_RAMP + PAD_HOLD + 0.5:
        c.on_remb(600_000, t)  # no decrease: no queue grew
        c.on_receiver_report(0.0, 0.01, t)
        if (decision := c.decide(t)) is not None:
            moves.append(decision.index)
        t += 0.25
    assert moves == [0]
    assert "padding probe held" in c.last_reason
    assert c.padding_rate(t) == 0


def test_a_padding_probe_that_lowers_the_estimate_stops_without_a_step_down() -> None:
    """The estimate falls during the probe (the receiver saw a queue grow): padding stops,
    the viewer stays on its rung, and the next probe waits twice as long."""
    c = _padding_probe_on_rung_1()
    t = PROBE_BASE + 1.0
    c.on_remb(560_000, t)  # 7 % below the probe's best
    assert c.decide(t) is None
    assert not c.probing
    assert c.padding_rate(t) == 0
    assert "padding probe failed" in c.last_reason
    assert c.index == 1
    # Calm again: no probe before twice the base wait.
    end = t + 2 * PROBE_BASE - 0.5
    while t < end:
        t += 0.25
        c.on_remb(560_000, t)
        c.on_receiver_report(0.0, 0.01, t)
        c.on_sent(round(t * 400_000 / 8), t)
        assert c.decide(t) is None
        assert not c.probing, t


def test_a_padding_probe_stops_on_a_queue_in_the_round_trip() -> None:
    c = _padding_probe_on_rung_1()
    c.on_receiver_report(0.0, 0.06, PROBE_BASE + 1.0)  # 50 ms up once: a busy machine
    c.on_receiver_report(0.0, 0.01, PROBE_BASE + 1.25)
    assert c.decide(PROBE_BASE + 1.25) is None
    assert c.probing
    c.on_receiver_report(0.0, 0.12, PROBE_BASE + 1.5)  # 110 ms above the lowest
    assert c.decide(PROBE_BASE + 1.5) is None
    assert not c.probing
    assert c.index == 1


def test_padding_that_meets_a_queue_stops_at_once_and_fails_the_probe() -> None:
    """Transport-wide feedback: the padding met 60 ms of queue. No more padding is asked for
    from that moment (not at the next decision), and the probe fails without a step down; a
    queue the padding met before the probe began is not this probe's."""
    c = RungController(NEEDS, start=1, now=0.0)
    c.can_pad = True
    c.on_padding_queue(0.2, 1.0, 1.0)  # long before the probe
    _calm_on_rung_1(c, PROBE_BASE + 0.5)
    run(c, 0.0, PROBE_BASE + 0.5)
    assert c.probing
    t = PROBE_BASE + 1.0
    c.on_padding_queue(0.02, t, t)  # 20 ms: a picture's burst, not a queue
    assert c.padding_rate(t) > 0
    assert c.decide(t) is None
    assert c.probing
    c.on_padding_queue(0.06, t + 0.05, t + 0.05)
    assert c.padding_rate(t + 0.06) == 0  # at once
    assert c.decide(t + 0.25) is None
    assert not c.probing
    assert "padding met 60 ms of queue" in c.last_reason
    assert c.index == 1


def test_a_failed_probe_s_queue_draining_slowly_is_no_step_down() -> None:
    """Under a rung that nearly fills the link, the queue a failed probe built drains at a
    tenth of a second a second: the padding's queue, not the rung's, until it grows past it."""
    c = _padding_probe_on_rung_1()
    t = PROBE_BASE + 1.0
    c.on_padding_queue(0.06, t, t + 0.07)
    assert c.decide(t + 0.07) is None
    assert not c.probing  # failed: the padding met 60 ms
    # Padding already sent met more; later packets meet the queue draining slowly.
    for n, queue in enumerate((0.186, 0.172, 0.165, 0.162, 0.158, 0.155)):
        sent = t + 0.1 + 0.05 * n
        c.on_padding_queue(queue, sent, sent + queue + 0.02)
        assert c.decide(sent + queue + 0.02) is None, queue
    assert c.index == 1
    # A queue that outgrows the padding's is the rung's own.
    for n, queue in enumerate((0.2, 0.25)):
        sent = t + 0.45 + 0.05 * n
        c.on_padding_queue(queue, sent, sent + queue + 0.02)
    decision = c.decide(t + 0.5 + 0.25 + 0.02)
    assert decision is not None
    assert decision.index > 1


def test_the_estimate_falling_for_a_failed_probe_s_queue_is_no_step_down() -> None:
    """Chrome's estimate goes on falling for the queue a failed probe built (0.85x what it
    receives): with later round trips back at their lowest, the viewer keeps its rung."""
    c = _padding_probe_on_rung_1()
    t = PROBE_BASE + 1.0
    c.on_padding_queue(0.06, t, t)
    c.decide(t)
    assert not c.probing
    c.on_receiver_report(0.0, 0.17, t + 0.5)  # the queue the padding left, draining
    c.on_remb(280_000, t + 0.6)  # far below the rung's need
    moves = []
    for n in range(1, 12):
        now = t + 0.5 + n * 0.25
        if n >= 4:
            c.on_receiver_report(0.0, 0.01, now)  # drained
        c.on_sent(round(now * 400_000 / 8), now)
        if (decision := c.decide(now)) is not None:
            moves.append(decision.index)
    assert moves == []
    assert c.index == 1


def test_without_padding_the_probe_switches_rungs() -> None:
    """A viewer without an RTX stream cannot be padded: the probe is a switch, as before."""
    c = RungController(NEEDS, start=1, now=0.0)
    _calm_on_rung_1(c, PROBE_BASE + 0.5)
    assert run(c, 0.0, PROBE_BASE + 0.5) == [0]
    assert c.probe_from == 1
    assert c.warm is None
    assert c.padding_rate(PROBE_BASE + 0.5) == 0


def test_an_estimate_stuck_below_an_idle_link_does_not_stop_padding_probes() -> None:
    """After heavy loss Chrome's estimate can sit below even the bottom rung on a link with
    no queue: with padding, the viewer still probes (without padding it would not)."""
    for can_pad, probes in ((True, 1), (False, 0)):
        c = RungController(NEEDS, start=3, now=0.0)
        c.can_pad = can_pad
        for _ in _steady(c, PROBE_BASE + 1.0, remb=50_000, sent=70_000, rtt=0.002):
            pass
        assert c.probes == probes, can_pad
        assert c.index == 3


def test_an_estimate_just_below_the_rung_is_the_link_and_no_probe_starts() -> None:
    """A 150 kbit/s link on the 166 kbit/s rung: Chrome estimates ~0.85x what it receives.
    That is the link's rate, not a stuck estimate: padding would only build a queue."""
    c = RungController(NEEDS, start=2, now=0.0)
    c.can_pad = True
    for t in _steady(c, 3 * PROBE_BASE, remb=128_000, sent=150_000, rtt=0.002):
        assert c.padding_rate(t) == 0
    assert c.probes == 0
    assert c.index == 2


def test_an_estimate_lowered_in_small_steps_is_a_drop() -> None:
    """Chrome lowers its estimate a few percent a report: 610 -> 510 kbit/s in half a second
    is a drop, though no single report falls by 10 %."""
    c = RungController(NEEDS, now=0.0)
    for i, bitrate in enumerate((613_000, 590_000, 566_000, 540_000, 510_000)):
        c.on_remb(bitrate, 1.5 + i * 0.12)
    decision = c.decide(2.1)
    assert decision is not None
    assert decision.index == 1
    assert "estimate fell" in decision.reason


def test_an_estimate_still_falling_after_a_step_down_needs_a_queue_to_step_again() -> None:
    """Chrome's estimate falls on for seconds after a step down, towards 0.85x what it now
    receives: with no queue in the round trip that is no reason to step again (it spiralled
    a 600 kbit/s viewer down to 111 kbit/s); with one, it is."""
    for rtt, steps in ((0.002, False), (0.3, True)):
        c = RungController(NEEDS, now=0.0)
        c.on_receiver_report(0.0, 0.002, 0.5)
        c.on_remb(900_000, 1.0)
        c.on_remb(480_000, 1.6)  # the drop: to the rung the estimate carries
        assert run(c, 1.6, 1.6) == [1]
        moves = []
        for i, bitrate in enumerate((400_000, 340_000, 300_000, 260_000)):
            t = 2.4 + i * 0.5
            c.on_remb(bitrate, t)
            c.on_receiver_report(0.0, rtt, t)
            c.on_receiver_report(0.0, rtt, t + 0.1)
            moves += run(c, t + 0.1, t + 0.35)
        assert bool(moves) == steps, (rtt, moves)
        assert all(m >= 2 for m in moves)


def _top_rung_sending(c: RungController, until: float, *, bitrate: int = 1_000_000) -> None:
    """A viewer on the top rung, sent ``bitrate``, its estimate above the rung and its sonar
    (numbered packets every 50 ms, acknowledged 10 ms later) finding no queue."""
    t = 0.0
    while t <= until:
        c.on_sent(round(t * bitrate / 8), t)
        c.on_remb(1_500_000, t)
        c.on_receiver_report(0.0, 0.01, t)
        c.on_padding_queue(0.0, t, t + 0.01)
        t = round(t + 0.05, 3)


def test_the_sonar_steps_down_before_the_estimate_falls_to_the_rung_the_link_carries() -> None:
    """A 2 Mbit/s link falls to 300 kbit/s under the 1 Mbit/s top rung: the queue grows ~2.3 s
    a second, and the numbered packets show it before Chrome's estimate moves. The viewer
    goes to the rung that 300 kbit/s carries (180p), its media paused while the half second
    of queue projected drains."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    _top_rung_sending(c, 10.0)
    assert run(c, 0.0, 10.0) == []
    # The sonar packets sent at 10.05 and 10.10 met 20 and 135 ms (acknowledged that late).
    c.on_padding_queue(0.02, 10.05, 10.08)
    assert c.decide(10.08) is None
    c.on_padding_queue(0.135, 10.10, 10.25)
    decision = c.decide(10.25)
    assert decision is not None
    assert "sonar met 135 ms of queue" in decision.reason
    assert decision.index == 2  # 180p fits ~300 kbit/s
    assert "paused for 480 ms of queue" in decision.reason  # 135 ms growing 2.3 s a second
    assert "draining" not in decision.reason  # the pause drains it
    assert c.holding(10.3)


def test_a_queue_that_fills_steadily_but_slowly_steps_down_before_it_is_long() -> None:
    """A link that carries two thirds of the rung fills its queue 0.5 s a second: too slowly
    for the steep rule, and two packets at 150 ms would come ~300 ms into the queue. Three
    numbered packets running, each meeting a longer queue, are enough from 60 ms on."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    _top_rung_sending(c, 10.0)
    assert run(c, 0.0, 10.0) == []
    for sent, queue in ((10.05, 0.02), (10.10, 0.045)):
        c.on_padding_queue(queue, sent, sent + queue + 0.03)
        assert c.decide(sent + queue + 0.03) is None
    c.on_padding_queue(0.07, 10.15, 10.25)
    decision = c.decide(10.25)
    assert decision is not None
    assert "sonar met 70 ms of queue" in decision.reason
    assert decision.index >= 1


def test_a_slow_rise_in_a_viewer_s_first_second_waits_for_more_queue() -> None:
    """A viewer that starts on the top rung: in its first second neither the rate it is sent
    nor the queue's growth tells the rung its link carries, so a slow rise is not enough yet
    (a steep one or a longer queue is)."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    for t in (0.0, 0.25, 0.5):
        c.on_sent(round(t * 1_000_000 / 8), t)
    for sent, queue in ((0.5, 0.02), (0.55, 0.045), (0.6, 0.07)):
        c.on_padding_queue(queue, sent, sent + queue + 0.03)
        assert c.decide(sent + queue + 0.03) is None


def test_one_long_packet_of_an_idr_burst_is_no_steady_rise() -> None:
    """An IDR lengthens the queue for the packet behind it (55 ms); the next meets a shorter
    one: no congestion."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    _top_rung_sending(c, 10.0)
    for sent, queue in ((10.05, 0.0), (10.10, 0.055), (10.15, 0.03), (10.20, 0.062)):
        c.on_padding_queue(queue, sent, sent + queue + 0.03)
        assert c.decide(sent + queue + 0.03) is None


def test_a_sonar_that_sees_a_queue_drain_after_a_step_down_does_not_step_again() -> None:
    """After a step down the queue of the rung before drains at the link's spare rate: the
    sonar's packets still meet it, falling, and that is not congestion."""
    c = RungController(NEEDS, start=0, now=0.0)
    c.can_pad = True
    _top_rung_sending(c, 10.0)
    c.on_padding_queue(0.02, 10.05, 10.08)
    c.on_padding_queue(0.135, 10.10, 10.25)
    assert c.decide(10.25) is not None
    index = c.index
    # Packets sent after the change: 600, 550, 500 ... ms, falling 1 s a second.
    for n in range(8):
        sent = 10.45 + n * 0.05
        c.on_padding_queue(0.6 - n * 0.05, sent, sent + 0.6 - n * 0.05)
        assert c.decide(sent + 0.6 - n * 0.05) is None or c.index < index  # only ever up
    assert c.index <= index


def test_a_queue_standing_under_the_new_rung_steps_down_before_the_cool_down() -> None:
    """The rung stepped to is still above the link: the sonar's packets sent after the change
    find the queue standing, not draining, and the viewer steps again within 0.3 s, not
    after the full second of cool-down."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    _top_rung_sending(c, 10.0)
    c.on_remb(1_450_000, 10.1)
    c.on_remb(615_000, 10.3)  # the estimate fires first: 360p
    first = c.decide(10.3)
    assert first is not None
    assert first.index == 1
    # Sent after the change, acknowledged half a second later: 500 ms, 510 ms.
    c.on_padding_queue(0.5, 10.5, 11.0)
    assert c.decide(11.0) is None  # one packet is not a standing queue
    c.on_padding_queue(0.51, 10.55, 11.06)
    decision = c.decide(11.06)
    assert decision is not None
    assert decision.index >= 2
    assert "sonar met 510 ms of queue" in decision.reason
    assert DOWN_COOLDOWN > 11.06 - 10.3


def test_a_step_down_the_sonar_shows_too_small_is_corrected_at_once() -> None:
    """Chrome's estimate fires first (615 kbit/s: 360p); an instant later the sonar's packets
    sent before that step show the queue growing 2.3 s a second: a ~300 kbit/s link, so
    240p, without waiting for the cool-down."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    _top_rung_sending(c, 10.0)
    c.on_remb(1_450_000, 10.1)
    c.on_remb(615_000, 10.3)  # a drop
    decision = c.decide(10.3)
    assert decision is not None
    assert decision.index == 1
    c.on_padding_queue(0.03, 10.2, 10.32)
    c.on_padding_queue(0.145, 10.25, 10.4)  # 2.3 s a second
    corrected = c.decide(10.4)
    assert corrected is not None
    assert corrected.index >= 2
    assert "the queue grew as on a" in corrected.reason


def test_a_sonar_without_a_queue_lets_a_viewer_probe_whose_estimate_lags() -> None:
    """Back at 2 Mbit/s after a step, Chrome's estimate (250 kbit/s) is below the 360p rung's
    need and grows slowly: without the sonar nothing is probed; with the sonar finding no
    queue under 360p, a padding probe starts."""

    def viewer(sonar: bool) -> RungController:
        c = RungController(NEEDS, start=1, now=0.0)
        c.can_pad = True
        t = 0.0
        while t <= PROBE_BASE + 1.0:
            c.on_sent(round(t * 300_000 / 8), t)
            c.on_remb(250_000, t)
            c.on_receiver_report(0.0, 0.01, t)
            if sonar:
                c.on_padding_queue(0.001, t, t + 0.01)
            c.decide(t + 0.01)
            t = round(t + 0.05, 3)
        return c

    assert not viewer(sonar=False).probing
    assert viewer(sonar=True).probing


def test_no_acknowledgements_while_draining_is_a_full_queue_not_a_drained_one() -> None:
    """On a slow link the sonar's acknowledgements wait in the queue too: none for a while
    says nothing of a drained queue, and the viewer stays on the draining rung."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    _top_rung_sending(c, 10.0)
    c.on_padding_queue(0.02, 10.05, 10.08)
    c.on_padding_queue(0.1, 10.10, 10.2)  # 0.26 s projected: drained on a lower rung
    decision = c.decide(10.2)
    assert decision is not None
    assert "draining" in decision.reason
    assert not c.holding(10.2)  # too short a queue to pause for
    draining = c.index
    assert run(c, 10.5, 10.25 + DRAIN_MAX - 0.1) == []  # no acknowledgement: still draining
    assert c.index == draining


def test_a_drain_is_not_over_while_the_sonar_still_meets_the_queue() -> None:
    """A viewer that starts on the top rung over a slow link measures its first round trips
    with the queue already full, so the lowest round trip is that queue: round trips at that
    lowest do not end the drain while the sonar's packets still meet the queue."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    for n in range(8):
        t = 0.05 * n
        c.on_sent(round(t * 1_000_000 / 8), t)
        c.on_padding_queue(0.0, t, t + 0.01)
    c.on_padding_queue(0.1, 0.45, 0.6)
    c.on_padding_queue(0.16, 0.5, 0.68)  # steep: 1.2 s a second, 0.38 s projected
    decision = c.decide(0.68)
    assert decision is not None
    assert "draining" in decision.reason
    draining = c.index
    t = 1.0
    while t < 2.0:
        c.on_receiver_report(0.0, 1.2, t)  # the lowest round trip is the full queue's
        queue = round(0.35 - 0.2 * (t - 1.0), 3)  # draining, a fifth of a second a second
        c.on_padding_queue(queue, t - queue - 0.1, t)
        assert c.decide(t) is None, t
        t = round(t + 0.1, 3)
    assert c.index == draining
    c.on_padding_queue(0.0, t - 0.05, t)
    decision = c.decide(t)
    assert decision is not None
    assert decision.reason == "queue drained"


def _starting_over_a_150_kbit_link(c: RungController) -> float:
    """A viewer's first half second on the top rung over a 150 kbit/s link: sent ~1 Mbit/s
    (its first IDR and the frames after it), the sonar's packets meet no queue while the
    shaper's bucket lasts, then one growing ~7 s a second. When the second is acknowledged."""
    for n in range(8):
        t = 0.05 * n
        c.on_sent(round(t * 1_000_000 / 8), t)
        c.on_padding_queue(0.0, t, t + 0.01)
    c.on_sent(62_500, 0.5)
    c.on_padding_queue(0.1, 0.4, 0.55)
    c.on_padding_queue(0.45, 0.45, 0.95)
    return 0.95


def test_a_long_queue_at_the_start_pauses_the_media_until_the_sonar_meets_it_gone() -> None:
    """The start's queue is late pictures: the viewer goes straight to the rung the queue's
    growth says the link carries (the bottom: ~120 kbit/s from the rate sent so far), its
    media paused until a numbered packet sent during the pause meets the queue gone, not on
    a drain rung that empties it at a fraction of a second a second."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    now = _starting_over_a_150_kbit_link(c)
    decision = c.decide(now)
    assert decision is not None
    assert decision.index == 3
    assert "paused" in decision.reason
    assert "draining" not in decision.reason
    assert c.holds == 1
    # During the pause nothing describes the rung: no decision, however bad the reports.
    for t in (1.2, 1.5, 1.8):
        c.on_remb(40_000, t)
        c.on_receiver_report(0.3, 1.6, t)
        c.on_padding_queue(max(0.0, 1.4 - (t - now)), t - 0.3, t)  # still draining
        assert c.holding(t)
        assert c.decide(t) is None
    c.on_padding_queue(0.05, 1.9, 1.96)  # sent during the pause, met the queue gone
    assert not c.holding(1.96)
    assert c.index == 3


def test_a_pause_ends_in_time_without_acknowledgements() -> None:
    """No packet acknowledged during the pause: it ends after as long as the queue was, at
    most ``HOLD_MAX``, so the page never waits 2 s for a picture."""
    c = RungController(NEEDS, now=0.0)
    c.can_pad = True
    now = _starting_over_a_150_kbit_link(c)
    assert c.decide(now) is not None
    assert c.holding(now + HOLD_MAX - 0.05)
    assert not c.holding(now + HOLD_MAX)
    assert not c.holding(now + HOLD_MAX + 0.25)  # once over, over
    assert c.holds == 1


# -- retransmissions --------------------------------------------------------------------------


async def test_nothing_is_resent_into_a_long_queue() -> None:
    """NACKs are answered within the budget while the path is clear, and not at all while
    the viewer's queue is a quarter second or more: the resend would come too late and only
    lengthen the queue. Nor while its media are paused for a queue to drain, nor afterwards
    for what was sent before the pause."""
    from types import SimpleNamespace
    from typing import cast

    from webrtc.peers import RTX_LATE, RetransmitBudget
    from webrtc.tracks import EncodedVideoTrack

    resent: list[int] = []

    async def retransmit(sequence_number: int) -> None:
        resent.append(sequence_number)

    queue = [0.0]
    track = cast(EncodedVideoTrack, SimpleNamespace(encoder=None, held=False))
    sent = [1, 2, 3]
    budget = RetransmitBudget(retransmit, track, lambda: queue[0], lambda: sent)
    await budget(1)
    assert resent == [1]
    queue[0] = RTX_LATE
    await budget(2)
    assert resent == [1]
    assert budget.refused == 1
    queue[0] = 0.01
    await budget(3)
    assert resent == [1, 3]
    track.held = True  # type: ignore[misc]  # the media paused for the queue to drain
    budget.drop_sent()
    await budget(4)
    assert resent == [1, 3]
    track.held = False  # type: ignore[misc]  # resumed: what was sent before is never resent
    sent = [5]
    for number in (1, 2, 3, 5):
        await budget(number)
    assert resent == [1, 3, 5]
