"""Which rung of the ladder a viewer's link carries: a per-viewer controller, sans-I/O.

The controller is fed what the viewer's browser reports anyway — REMB (the receiver's estimate
of what its path carries, from the delay of arriving packets), RTCP receiver reports (fraction
lost, jitter) and the round-trip time computed from them — and answers, whenever asked, the rung
the viewer should be on. It never touches a socket or a clock of its own: every call takes
``now`` (``time.monotonic()``), so every rule is tested with made-up reports.

The rules, in order:

- **Congestion steps down at once.** A drop in the REMB estimate (the receiver's delay-based
  detector fired), an estimate far below the rung's need, or one held below the need and below
  what the viewer is sent without rising; loss of 10 % or more over a second of reports; or a
  round-trip time well above the lowest seen: the viewer moves to the highest rung the
  estimate carries, at least one rung down. Consecutive step-downs are spaced by
  ``DOWN_COOLDOWN`` so that one switch can take effect (the queue in the path drains) before
  the next is judged.
- **Steps up are slow.** When the estimate itself carries the next rung with margin, for
  ``UP_HOLD`` seconds, the viewer moves up one rung.
- **Probing.** A receiver's estimate rarely grows beyond 1.5x what it receives, and rungs are
  further apart than that, so a viewer on a low rung would never learn that its link recovered.
  After ``PROBE_BASE`` seconds without trouble the controller tries the next rung up; trouble
  within ``PROBE_HOLD`` seconds sends it back and doubles the wait (up to ``PROBE_MAX``), a probe
  that holds sets the wait to ``PROBE_AGAIN`` so a recovered link climbs quickly. A probe is
  only trusted after ``PROBE_TRUST`` seconds: congestion on the probed rung before then (a
  round-trip time reports a queue a second or two late) counts as a failed probe too, or a link
  just short of a rung would be probed every few seconds, each probe a second of late pictures.
- **Probes pad first.** A viewer that can be padded (it negotiated RTX; :mod:`webrtc.padding`)
  is not switched to probe: padding ramps up to the next rung's extra need over ``PAD_RAMP``
  and holds it ``PAD_HOLD``, and only then does the viewer switch. A falling estimate, loss or
  a round trip ``PAD_RTT_QUEUE`` above its lowest stops the padding: a failed probe, with no
  step down (the queue it built drains with the padding gone). Where the viewer acknowledges
  the padding packets (transport-wide feedback, :mod:`webrtc.feedback`), padding that meets
  ``PAD_FEEDBACK_QUEUE`` of queue stops at once, a tenth of a second after the queue stands
  instead of the second the estimate and the round trip take.
- **A standing queue is drained.** A step down that finds ``DRAIN_QUEUE`` of queue in the
  round trip goes one rung lower than the estimate carries, until the round trip is back near
  its lowest (at most ``DRAIN_MAX``), then to that rung.
- **A long queue is drained by a pause.** A step down that finds ``HOLD_QUEUE`` or more of
  queue also pauses the viewer's media (``holding``) until the sonar meets the queue gone, at
  most for as long as the queue was (``HOLD_MAX``), then resumes on the new rung at an IDR. A
  queue of the rung before holds nothing but late pictures (a viewer that starts on the top
  rung over a 150 kbit/s link finds ~1.6 s of them), and the new rung's IDR would wait behind
  it or be dropped by the full queue; a pause empties it 2-3x faster than the drain rung.
- **A queue that drains is not new congestion.** After a step down the round-trip time stays
  high until the queue in the path has drained; only a round trip that is not falling is judged.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

#: The bitrate a rung needs on the wire: media + RTP/SRTP/UDP/IP headers + retransmissions.
WIRE_FACTOR = 1.1
HEADER_BITS_PER_FRAME = 2 * 60 * 8  # ~2 packets a frame, ~60 bytes of headers each
#: A fresh report: older ones are not evidence of anything.
REPORT_MAX_AGE = 3.0
#: Congestion signals.
REMB_DROP = 0.9  # below 90 % of the highest REMB of the last second: the receiver saw a queue
REMB_DROP_WINDOW = 1.0
FAR_BELOW = 0.4  # a REMB below 40 % of the rung's need is congestion, dropped or not
REMB_FLAT_WINDOW = 3.0  # seconds over which an estimate below the need must rise ...
REMB_RISING = 1.1  # ... by this factor, or it is held by the link
STUCK_BELOW_SENT = 0.75  # an estimate below this share of what is sent, with no queue: stuck
SENT_WINDOW = 2.0  # seconds over which the rate a viewer is sent is measured
LOSS_HIGH = 0.10
LOSS_WINDOW = 1.0  # seconds of reports that loss is measured over
LOSS_LOW = 0.02
LOSS_SEVERE = 0.2  # loss that steps down whatever the round trip says
LOSS_PROBE_RISE = 0.04  # a padding probe fails on loss this much above the loss before it
RTT_RISE = 0.25  # seconds above the lowest round-trip time seen: a standing queue
RTT_FALLING = 0.03  # a report this much below the previous one: the queue drains
RTT_QUEUE = 0.06  # above the lowest: a queue forms (corroborates an estimate below the rung)
RTT_HIGH = 0.15  # a round trip this long corroborates it too (the lowest may include a queue)
#: Timing of decisions (seconds).
REMB_SETTLE = 0.5  # reports this soon after a change still describe the previous rung
RTT_SETTLE = 1.5  # a queue takes about this long to drain after a step down
DOWN_COOLDOWN = 1.0
ESTIMATE_LAG = 3.0  # after a step down (or a drain), an estimate drop needs a queue to count
UP_HOLD = 2.0
UP_MARGIN = 1.15
PROBE_BASE = 5.0
PROBE_AGAIN = 1.5
PROBE_MAX = 30.0
PROBE_HOLD = 3.0
PROBE_TRUST = 10.0
#: Padding probes (:mod:`webrtc.padding`): the next rung's bits tried as padding first.
PAD_RAMP = 2.0  # seconds over which padding rises from nothing to the next rung's extra need
PAD_HOLD = 2.0  # seconds at the full extra need (a shaper's bucket of ~32 kB must run dry)
PAD_DECREASE = 0.97  # any estimate below this share of the probe's best: the queue grew
#: Draining: a step down that finds a standing queue goes one rung further for a moment.
DRAIN_QUEUE = 0.2  # seconds of queue (round trip above its lowest) worth draining fast
DRAIN_DONE = 0.03  # a round trip this close to its lowest: drained
DRAIN_MAX = 2.0  # the longest a viewer stays on the draining rung
#: Pausing: a step down that finds this much queue also pauses the media until it is gone.
HOLD_QUEUE = 0.4
HOLD_MAX = 2.0  # the longest pause (the queue's pictures arrive during it: the page sees them)
HOLD_DONE = 0.1  # a numbered packet sent during the pause meets this little queue: gone
PAD_RTT_QUEUE = 0.04  # a round trip this much above the lowest during a padding probe: a queue
PAD_FEEDBACK_QUEUE = 0.04  # padding acknowledged this much later than the earliest: a queue
#: The sonar (:data:`webrtc.padding.SONAR_INTERVAL`): numbered packets between probes.
SONAR_QUEUE = 0.15  # two acknowledgements running this far above the lowest: congestion
SONAR_FRESH = 0.5  # an acknowledgement that came longer ago than this is no evidence
SONAR_SETTLE = 0.15  # packets sent this soon after a change may still carry the rung before's
SONAR_COOLDOWN = 0.3  # the least time between step downs that the sonar's queue asks for
SONAR_CORRECT = 1.0  # a step down the sonar shows too small within this long is corrected
SONAR_GROWTH_SPAN = 0.04  # the least time between two samples a queue's growth is read over
SONAR_STEEP = 1.0  # a queue growing this many seconds a second is congestion ...
SONAR_STEEP_QUEUE = 0.06  # ... from this much on: a link far below the rung fills its
# queue at 2-3 s a second, and a packet is acknowledged only once it has crossed the queue
SONAR_CAPACITY_MARGIN = 0.85  # a full queue drops packets: its growth reads the link high
SONAR_DRAINING = 0.1  # a queue falling this many seconds a second drains (a step down worked)
SONAR_RISE = 0.25  # numbered packets each meeting a queue this much longer (s/s) than the one
SONAR_RISE_SAMPLES = 3  # ... before, this many running, the newest SONAR_STEEP_QUEUE or more,
SONAR_RISE_AFTER = SENT_WINDOW  # ... on a rung held this long (the rate it is sent is known)
START_SENT_SPAN = 0.25  # before a SENT_WINDOW, the rate sent over at least this long


def wire_bitrate(bitrate: int, fps: float) -> int:
    """What a rung of ``bitrate`` bit/s at ``fps`` frames a second takes on the wire."""
    return round(bitrate * WIRE_FACTOR + HEADER_BITS_PER_FRAME * fps)


@dataclass(frozen=True, slots=True)
class Decision:
    """A change of rung: to ``index``, and why (for the log and the status)."""

    index: int
    reason: str


class RungController:
    """Picks one viewer's rung. Index 0 is the top of the ladder (most bits)."""

    def __init__(self, needs: Sequence[int], *, start: int = 0, now: float) -> None:
        """``needs``: the wire bitrate of each rung, top first (see :func:`wire_bitrate`)."""
        if not needs:
            raise ValueError("a controller needs at least one rung")
        self._needs = list(needs)
        self.index = min(max(0, start), len(needs) - 1)
        self._changed_at = now
        # As after a step up: no earlier rung's queue is left to drain, so the first reports
        # already judge the starting rung (a slow link is stepped down within a second or two).
        self._moved_up = True
        self._last_down = -math.inf
        self._calm_since = now
        self._probe_from: int | None = None
        self._probe_started = 0.0
        self._probe_wait = PROBE_BASE
        self._failed_probes = 0
        #: Whether the viewer can be padded (RTX negotiated); its owner says so.
        self.can_pad = False
        #: A padding probe: when it started, the wire bitrate it pads up from, the best
        #: estimate seen since it started.
        self._pad_started: float | None = None
        self._pad_base = 0.0
        self._pad_best = 0
        self._pad_loss = 0.0  # the loss measured when it started
        #: The padding last asked for, bit/s.
        self.padding = 0.0
        #: The queue the padding met, from the viewer's feedback: (seconds, when).
        self._pad_queue: tuple[float, float] | None = None
        #: The latest of those: (when the packet was sent, seconds of queue, when its
        #: acknowledgement came), newest last.
        self._queues: deque[tuple[float, float, float]] = deque(maxlen=8)
        #: The last step down for congestion: when, and the bit/s the viewer was sent then.
        self._down: tuple[float, float] | None = None
        #: The last change was a failed padding probe (not a move).
        self._pad_failed = False
        self._estimate_lags_until = -math.inf  # see ESTIMATE_LAG
        #: While draining: the rung to go back to, and the latest time to.
        self._drain: tuple[int, float] | None = None
        #: While the media are paused for a queue to drain: since when, and until when at most.
        self._hold: tuple[float, float] | None = None
        self.holds = 0
        #: A probe that held, not yet trusted: (the rung it reached, when it held).
        self._trial: tuple[int, float] | None = None
        self._previous_loss = 0.0
        self._counts: deque[tuple[float, int, int]] = deque()
        self._rembs: deque[tuple[float, int]] = deque()
        self._sent: deque[tuple[float, int]] = deque()
        self._remb: int | None = None
        self._remb_at = -math.inf
        self._remb_dropped_at = -math.inf
        self._loss = 0.0
        self._loss_at = -math.inf
        self._rtt: float | None = None
        self._rtt_previous: float | None = None
        self._rtt_min: float | None = None
        self._rtt_at = -math.inf
        self.switches = 0
        self.probes = 0
        self.rembs = 0  # estimates received
        self.last_reason = "start"

    # -- reports --------------------------------------------------------------------------

    def on_remb(self, bitrate: int, now: float) -> None:
        """The receiver's estimated maximum bitrate (REMB), bit/s."""
        # Against the highest of the last second: Chrome lowers its estimate in steps of a
        # few percent each, 610 -> 510 kbit/s within half a second, never 10 % at once.
        recent = [b for t, b in self._rembs if now - t <= REMB_DROP_WINDOW]
        if self._remb is not None:
            recent.append(self._remb)  # the previous one, however old
        if recent and bitrate < max(recent) * REMB_DROP:
            self._remb_dropped_at = now
        self._remb = bitrate
        self._remb_at = now
        self.rembs += 1
        if self._pad_started is not None:
            self._pad_best = max(self._pad_best, bitrate)
        self._rembs.append((now, bitrate))
        while len(self._rembs) > 2 and now - self._rembs[1][0] >= REMB_FLAT_WINDOW:
            self._rembs.popleft()

    def on_receiver_report(
        self, fraction_lost: float, rtt: float | None, now: float,
        *, lost: int | None = None, highest: int | None = None,
    ) -> None:  # fmt: skip
        """A receiver report: ``fraction_lost`` 0-1 since the previous one; ``rtt`` seconds;
        ``lost`` and ``highest`` its cumulative packets lost and extended highest sequence
        number, from which loss is measured over ``LOSS_WINDOW`` instead.

        The fraction of one report is noise on its own: browsers send a report with every
        NACK, a tenth of a second apart, and 2 packets lost of 4 expected read as 50 %.
        """
        if rtt is not None and rtt >= 0:
            self._rtt_previous = self._rtt
            self._rtt = rtt
            self._rtt_at = now
            self._rtt_min = rtt if self._rtt_min is None else min(self._rtt_min, rtt)
        loss = min(1.0, max(0.0, fraction_lost))
        if lost is not None and highest is not None:
            self._counts.append((now, lost, highest))
            while len(self._counts) > 2 and now - self._counts[1][0] >= LOSS_WINDOW:
                self._counts.popleft()
            then, lost_then, highest_then = self._counts[0]
            if now - then < LOSS_WINDOW:
                return  # not a window's worth yet: no judgement of loss
            expected = highest - highest_then
            loss = min(1.0, max(0.0, (lost - lost_then) / expected)) if expected > 0 else 0.0
        self._previous_loss = self._loss if self._since_change(self._loss_at, 0.0) else 0.0
        self._loss = loss
        self._loss_at = now

    def on_sent(self, total_bytes: int, now: float) -> None:
        """How many media bytes the viewer has been sent so far (for the rate it gets)."""
        self._sent.append((now, total_bytes))
        while len(self._sent) > 2 and now - self._sent[1][0] >= SENT_WINDOW:
            self._sent.popleft()

    @property
    def sent_bitrate(self) -> float | None:
        """Bit/s the viewer was sent over the last ``SENT_WINDOW`` (None before a window)."""
        return self._sent_rate(SENT_WINDOW / 2)

    def _sent_rate(self, span: float) -> float | None:
        """Bit/s sent over the samples kept, if they span ``span`` seconds or more."""
        if len(self._sent) < 2:
            return None
        (t0, b0), (t1, b1) = self._sent[0], self._sent[-1]
        return (b1 - b0) * 8 / (t1 - t0) if t1 - t0 >= span else None

    # -- what the status shows -----------------------------------------------------------------

    @property
    def estimate(self) -> int | None:
        """The receiver's latest estimate of its path, bit/s (None before the first REMB)."""
        return self._remb

    @property
    def fraction_lost(self) -> float:
        return self._loss

    @property
    def rtt(self) -> float | None:
        return self._rtt

    @property
    def probing(self) -> bool:
        return self._probe_from is not None or self._pad_started is not None

    @property
    def probe_from(self) -> int | None:
        """During a probe: the rung to go back to if it fails."""
        return self._probe_from

    def on_padding_queue(self, seconds: float, sent: float, now: float) -> None:
        """The queue the padding (or the sonar) met, from the viewer's transport-wide feedback:
        ``sent`` is when the newest acknowledged packet was sent (it came back at ``now``)."""
        self._pad_queue = (seconds, sent)
        if not self._queues or sent > self._queues[-1][0]:
            self._queues.append((sent, seconds, now))

    def _sonar_standing(self, now: float) -> float | None:
        """The queue the last two numbered packets met, if both were sent since the last
        change, are fresh, met ``SONAR_QUEUE`` or more and the queue is not draining."""
        if len(self._queues) < 2:
            return None
        (t0, q0, at0), (t1, q1, _) = self._queues[-2], self._queues[-1]
        if t0 < self._changed_at + SONAR_SETTLE or now - at0 > SONAR_FRESH:
            return None
        growth = (q1 - q0) / (t1 - t0)
        if q1 >= SONAR_STEEP_QUEUE and (growth >= SONAR_STEEP or self._sonar_rising()):
            return q1
        if min(q0, q1) < SONAR_QUEUE:
            return None
        if self._pad_failed and q1 <= max(q for _, q, _ in list(self._queues)[:-1]):
            # After a failed padding probe the queue is the padding's until it outgrows it:
            # under a rung that nearly fills the link it drains too slowly to read as
            # draining (600 kbit/s under 288p: 186, 160, 155 ms at 50 ms apart).
            return None
        # After a step down the queue of the rung before drains at the link's spare rate (a
        # 600 kbit/s link under 360p: 0.28 s a second); one that does not is this rung's.
        return q1 if growth > -SONAR_DRAINING else None

    def _sonar_rising(self) -> bool:
        """The last ``SONAR_RISE_SAMPLES`` numbered packets, all sent since the last change,
        each met a longer queue than the one before, by ``SONAR_RISE`` s/s or more.

        A link that carries two thirds of the rung fills its queue 0.5 s a second, too slowly
        for ``SONAR_STEEP``, and waiting for ``SONAR_QUEUE`` twice let it reach ~300 ms before
        the step. It fills steadily, packet after packet; an IDR's burst lengthens the queue
        for one packet, and the next meets a shorter one.

        Only on a rung held ``SONAR_RISE_AFTER``: a viewer that starts on the top rung over a
        slow link met 60-80 ms within its first second, when neither the rate it is sent nor
        the queue's growth (under the shaper's bucket) yet told the rung the link carries, and
        the step went to 288p on a 150 kbit/s link; the other rules wait for more queue."""
        recent = list(itertools.islice(reversed(self._queues), SONAR_RISE_SAMPLES))
        if len(recent) < SONAR_RISE_SAMPLES or recent[-1][0] < self._changed_at + SONAR_RISE_AFTER:
            return False
        return all(
            t1 - t0 >= SONAR_GROWTH_SPAN and (q1 - q0) / (t1 - t0) >= SONAR_RISE
            for (t1, q1, _), (t0, q0, _) in itertools.pairwise(recent)
        )

    def _sonar_newest(self, now: float) -> tuple[float, float] | None:
        """(send time, seconds of queue) of the newest numbered packet, if its
        acknowledgement is fresh."""
        if not self._queues or now - self._queues[-1][2] > SONAR_FRESH:
            return None
        sent, queue, _ = self._queues[-1]
        return sent, queue

    def _sonar_queue(self, now: float) -> float:
        """Seconds of queue the newest fresh numbered packet met (0: none known)."""
        newest = self._sonar_newest(now)
        return 0.0 if newest is None else newest[1]

    def _sonar_clear(self, now: float) -> bool:
        """The sonar's fresh packets, two or more sent since the last change, met no queue."""
        fresh = [
            q
            for t, q, at in self._queues
            if now - at <= SONAR_FRESH and t >= self._changed_at + SONAR_SETTLE
        ]
        return len(fresh) >= 2 and max(fresh) <= DRAIN_DONE

    def _sonar_projected(self, now: float) -> float:
        """The queue now, as the sonar's newest packets saw it growing: an acknowledgement
        comes only after its packet crossed the queue, so on a link far below the rung the
        queue it shows is a fraction of the one standing when it arrives (at most 2 s)."""
        queue = self._sonar_queue(now)
        if queue <= 0 or len(self._queues) < 2:
            return queue
        (t0, q0, _), (t1, q1, _) = self._queues[-2], self._queues[-1]
        if t1 - t0 < SONAR_GROWTH_SPAN:
            return queue
        return min(2.0, queue + max(0.0, (q1 - q0) / (t1 - t0)) * (now - t1))

    def _sonar_capacity(
        self, now: float, sent: float | None = None, before: float = math.inf
    ) -> float | None:
        """What the path carries, bit/s, from how fast the queue grew: a link that carries
        ``C`` of the ``S`` it is sent grows its queue by ``S / C - 1`` seconds a second.
        ``sent``: S (default: what the viewer is sent now, or in its first second what it
        was sent since it started); ``before``: only packets sent before this time count.

        In a viewer's first second S is the first IDR and the frames after it, and the
        queue's growth is read over packets that met them: a link far below the top rung
        (150 kbit/s: the queue grows 5-8 s a second) is told from one just below it (600:
        under 1) within half a second, before the start's queue is a second and a half of
        late pictures."""
        if sent is None:
            sent = self.sent_bitrate
        if sent is None:
            sent = self._sent_rate(START_SENT_SPAN)
        if sent is None:
            return None
        fresh = [(t, q) for t, q, at in self._queues if now - at <= SONAR_FRESH and t < before]
        growths = [
            (q1 - q0) / (t1 - t0)
            for (t0, q0), (t1, q1) in itertools.pairwise(fresh)
            if t1 - t0 >= SONAR_GROWTH_SPAN and q1 > q0 and q1 >= SONAR_STEEP_QUEUE
        ]
        if not growths:
            return None
        return SONAR_CAPACITY_MARGIN * sent * WIRE_FACTOR / (1 + max(growths))

    def _corrected(self, now: float) -> Decision | None:
        """A step down for congestion that the sonar, whose packets cross the queue before
        they are acknowledged, shows too small soon after: the rung the link carries now.

        A receiver's estimate often fires first (a link that falls from 2 Mbit/s to 300
        kbit/s: 615 kbit/s, so 360p), before any acknowledged packet shows how fast the queue
        grew; waiting out the cool-down on 360p then filled the link's whole queue."""
        down = self._down
        if down is None or down[0] != self._changed_at or now - down[0] > SONAR_CORRECT:
            return None
        capacity = self._sonar_capacity(now, down[1], before=down[0])
        if capacity is None:
            return None
        target = self._fits(capacity)
        if target <= (self._drain[0] if self._drain is not None else self.index):
            return None
        self._down = None  # once
        why = f"the queue grew as on a {capacity // 1000:.0f} kbit/s link"
        target, why = self._relief(target, why, now)
        return self._move(target, f"congestion: {why}", now)

    def _relief(
        self, target: int, why: str, now: float, *, rtt_queue: float = 0.0
    ) -> tuple[int, str]:
        """The rung to step down to for ``target``, and why, with the queue standing: the
        sonar's projected to now, or ``rtt_queue`` (by round trip) if longer. A pause of the
        media first if the sonar meets a long queue (see ``HOLD_QUEUE``: its packets, sent
        during the pause, say when the queue is gone; a round trip, once a second, would say
        so a second late)."""
        sonar = self._sonar_projected(now)
        queue = max(rtt_queue, sonar)
        held = 0.0
        if sonar >= HOLD_QUEUE:
            held = min(HOLD_MAX, queue)
            self._hold = (now, now + held)
            self.holds += 1
            why = f"{why}; paused for {queue * 1000:.0f} ms of queue"
        return self._draining(target, why, queue - held, now + held)

    def holding(self, now: float) -> bool:
        """Whether the viewer's media stay paused now, for a queue to drain (see
        ``HOLD_QUEUE``): until a numbered packet sent during the pause meets the queue gone
        (its acknowledgement comes as the queue empties), or the pause's time is over."""
        if self._hold is None:
            return False
        started, until = self._hold
        newest = self._sonar_newest(now)
        gone = newest is not None and newest[0] >= started + SONAR_SETTLE and newest[1] <= HOLD_DONE
        if now < until and not gone:
            return True
        self._hold = None
        # Reports from now on describe the new rung; those before, the pause.
        self._changed_at = self._calm_since = now
        return False

    def _draining(self, target: int, why: str, queue: float, now: float) -> tuple[int, str]:
        """The rung to step down to for ``target`` with ``queue`` seconds standing, and why.

        The rung that fits drains a queue at only the link's spare rate (a 0.4 s queue at
        600 kbit/s takes 1.5 s from 360p): one rung lower, until it is gone."""
        self._drain = None
        if queue < DRAIN_QUEUE or target >= len(self._needs) - 1:
            return target, why
        self._drain = (target, now + DRAIN_MAX)
        return target + 1, f"{why}; draining {queue * 1000:.0f} ms of queue"

    def _padding_queued(self) -> float | None:
        """The queue the running padding probe's padding met, if it is one (else None)."""
        started, queued = self._pad_started, self._pad_queue
        if started is None or queued is None or queued[1] < started:
            return None
        return queued[0] if queued[0] > PAD_FEEDBACK_QUEUE else None

    @property
    def warm(self) -> int | None:
        """During a padding probe, the rung it probes for: its encoder should be running so
        that a probe that passes switches at once."""
        return self.index - 1 if self._pad_started is not None else None

    def padding_rate(self, now: float) -> float:
        """Bit/s of padding to send the viewer now on top of its media (0: none).

        During a padding probe: a ramp from nothing to what the next rung needs beyond what the
        viewer is sent (over ``PAD_RAMP``), then that much for ``PAD_HOLD``. A link that cannot
        carry it shows a queue as the ramp crosses its rate, when the excess is still small.
        """
        self.padding = 0.0
        if self._pad_started is not None and self.index > 0 and self._padding_queued() is None:
            share = min(1.0, max(0.0, now - self._pad_started) / PAD_RAMP)
            self.padding = max(0.0, self._needs[self.index - 1] - self._pad_base) * share
        return self.padding

    # -- the decision -------------------------------------------------------------------------

    def _fresh(self, at: float, now: float) -> bool:
        return now - at <= REPORT_MAX_AGE

    def _since_change(self, at: float, settle: float) -> bool:
        """A report that can judge the current rung: it came ``settle`` s after the last change
        (before that it describes the previous rung, or a queue still draining)."""
        return at >= self._changed_at + settle

    def _congested(self, now: float) -> str | None:
        """Why the path is congested now, or None."""
        if (
            self._remb is not None
            # A recent drop since the rung was last judged, even one that the cool-down
            # after the previous step kept from being acted on at once (a link that fell from
            # 2 Mbit/s to 300 kbit/s drops the estimate twice within a second).
            and self._fresh(self._remb_dropped_at, now)
            and self._since_change(self._remb_dropped_at, REMB_SETTLE)
            and self._remb < self._needs[self.index]
            # For a few seconds after a step down (or a failed padding probe) Chrome's estimate
            # goes on falling towards 0.85x what it now receives, queue or not: only a queue in
            # the round trip makes a drop of those seconds a reason to step (otherwise
            # 600 kbit/s viewers spiralled to 111), then or later.
            and (
                self._remb_dropped_at >= self._estimate_lags_until
                or self._queue_likely(now, unmeasured=False)
            )
        ):
            return f"estimate fell to {self._remb // 1000} kbit/s"
        if (
            self._remb is not None
            and self._fresh(self._remb_at, now)
            and self._since_change(self._remb_at, REMB_SETTLE)
            and self._remb < FAR_BELOW * self._needs[self.index]
            and self._queue_likely(now, unmeasured=False)
        ):
            # Far below what the rung needs, drop or not: a receiver that sends its first
            # estimate early does so because its queue grew (Chrome: ~300 kbit/s within a
            # second on a 300 kbit/s link; on a clean one nothing for ~5 s, then half the need).
            return f"estimate {self._remb // 1000} kbit/s, far below the rung's"
        if (
            self._remb is not None
            and self._fresh(self._remb_at, now)
            and self._since_change(self._remb_at, REMB_SETTLE)
            and self._remb < self._needs[self.index]
            and self._queue_standing(now)
        ):
            # Below the rung's need with a queue already in the round trip: the link is short
            # of this rung now (a viewer that starts on the top rung over a slow link).
            return f"estimate {self._remb // 1000} kbit/s, below the rung's, and a queue"
        if self._remb is not None and self._stuck_below(now) and self._queue_likely(now):
            # Below the rung's need and not rising: a receiver that can take more raises its
            # estimate steadily (~5 % a half second); one held at its link's rate does not.
            return f"estimate held at {self._remb // 1000} kbit/s, below the rung's"
        if (
            self._fresh(self._loss_at, now)
            and self._since_change(self._loss_at, REMB_SETTLE)
            and self._loss >= LOSS_HIGH
            and (self._loss + self._previous_loss) / 2 >= LOSS_HIGH
            # A queue that overflows loses packets with a full queue in the round trip; random
            # loss (5 % on a radio link reads 11-13 % over some seconds) has none, and a lower
            # rung would lose as much. Only severe loss steps down on its own.
            and (self._loss >= LOSS_SEVERE or self._queue_likely(now))
        ):
            # Two reports' worth: random loss of a few percent (radio) shows single reports
            # of 10 % on a low rung's few packets; a queue that overflows loses far more.
            return f"{self._loss:.0%} lost"
        if (
            self._rtt is not None
            and self._rtt_min is not None
            and self._fresh(self._rtt_at, now)
            # After a step up the path was calm: its first reports already judge the new rung.
            and self._since_change(self._rtt_at, self._rtt_settle)
            and self._rtt > self._rtt_min + RTT_RISE
            and not self._rtt_falling()
        ):
            return f"round trip {self._rtt * 1000:.0f} ms (lowest {self._rtt_min * 1000:.0f})"
        standing = self._sonar_standing(now)
        if standing is not None:
            # Two numbered packets running found the queue standing: it is this rung's (the
            # rung before's drains, and after a step up there was none).
            return f"sonar met {standing * 1000:.0f} ms of queue"
        return None

    @property
    def _rtt_settle(self) -> float:
        """How long after a change round trips still show the queue before it: none after a
        step up (the path was calm), ``RTT_SETTLE`` after a step down or a failed probe."""
        return REMB_SETTLE if self._moved_up else RTT_SETTLE

    def _queue_likely(self, now: float, *, unmeasured: bool = True) -> bool:
        """Whether a queue may be forming in the path, by the round-trip time measured since
        the last change (``unmeasured``: the answer while there is none).

        A receiver's estimate can stay below what it is sent on a link with room for a long
        while — Chrome's, after it has once seen a slower link, grows a few percent a second;
        aiortc's first one is low on a busy machine — so an estimate below the rung is only
        congestion with a round trip above its lowest, or long in itself."""
        if (
            self._rtt is None
            or self._rtt_min is None
            or not self._fresh(self._rtt_at, now)
            # After a failed padding probe the round trips of its queue draining are not
            # evidence; after a step down they are (that queue is the rung's).
            or not self._since_change(self._rtt_at, RTT_SETTLE if self._pad_failed else REMB_SETTLE)
        ):
            return unmeasured
        return self._rtt > self._rtt_min + RTT_QUEUE or self._rtt >= RTT_HIGH

    def _queue_standing(self, now: float) -> bool:
        """Round trips, measured since the last change and not falling, both well above the
        lowest and long in themselves: a queue, not a busy machine's moment of lag."""
        return (
            self._rtt is not None
            and self._rtt_min is not None
            and self._fresh(self._rtt_at, now)
            and self._since_change(self._rtt_at, self._rtt_settle)
            and self._rtt >= RTT_HIGH
            and self._rtt > self._rtt_min + RTT_QUEUE
            # Two reports running: one long round trip alone is as often the machine.
            and self._rtt_previous is not None
            and self._rtt_previous >= RTT_HIGH
            and not self._rtt_falling()
        )

    def queue(self, now: float) -> float:
        """Seconds of queue in the viewer's path as last measured, by round trip or by the
        sonar (0: none known)."""
        return max(self._queue_seconds(now), self._sonar_queue(now))

    def _queue_seconds(self, now: float) -> float:
        """The queue in the path by the latest round trip (above the lowest), 0 if unknown."""
        if self._rtt is None or self._rtt_min is None or not self._fresh(self._rtt_at, now):
            return 0.0
        return max(0.0, self._rtt - self._rtt_min)

    def _rtt_falling(self) -> bool:
        """The last two round-trip times fall: a queue draining after a step down."""
        previous = self._rtt_previous
        return self._rtt is not None and previous is not None and self._rtt < previous - RTT_FALLING

    def _stuck_below(self, now: float) -> bool:
        if not self._rembs or not self._fresh(self._remb_at, now):
            return False
        then, first = self._rembs[0]
        if now - then < REMB_FLAT_WINDOW or not self._since_change(then, REMB_SETTLE):
            return False
        newest = self._rembs[-1][1]
        # Below what it is sent, too: an encoder that undershoots its rung (a still scene)
        # is not a link that cannot carry it. A receiver with room estimates above what it
        # gets (up to 1.5x); one whose queue grows, below (0.85x).
        sent = self.sent_bitrate
        below_sent = sent is None or newest < 0.95 * sent
        return (
            newest < 0.9 * self._needs[self.index] and newest < first * REMB_RISING and below_sent
        )

    def _fits(self, bitrate: float) -> int:
        """The highest rung whose need is within ``bitrate``; the bottom rung if none is."""
        for i, need in enumerate(self._needs):
            if need <= bitrate:
                return i
        return len(self._needs) - 1

    def _move(self, index: int, reason: str, now: float) -> Decision:
        self._pad_failed = False
        if index > self.index or self._drain is not None:
            self._last_down = now
            self._estimate_lags_until = now + ESTIMATE_LAG
        self._moved_up = index < self.index
        self.index = index
        self._changed_at = now
        self._calm_since = now
        self.switches += 1
        self.last_reason = reason
        return Decision(index, reason)

    def _pad_total(self) -> int:
        return round(self._pad_base + self.padding)

    def _pad_probe_trouble(self, now: float) -> str | None:
        """What shows that the link does not carry a padding probe, or None."""
        started = self._pad_started
        assert started is not None
        queued = self._padding_queued()
        if queued is not None:
            return f"padding met {queued * 1000:.0f} ms of queue"
        why = self._congested(now)
        if why is not None:
            return why
        if (
            self._remb is not None
            and self._remb_at >= started
            and self._remb < PAD_DECREASE * self._pad_best
        ):
            # Chrome's estimate only falls when its delay detector sees a queue grow.
            return f"estimate fell to {self._remb // 1000} kbit/s"
        if self._loss_at >= started and self._loss > self._pad_loss + LOSS_PROBE_RISE:
            # More than before the probe: the padding overflowed a queue (a link that loses
            # 5 % at random lost as much before).
            return f"{self._loss:.0%} lost"
        if self._rtt is not None and self._rtt_min is not None and self._rtt_at >= started:
            # Twice the margin at once, or the margin twice running: a busy machine's event
            # loop adds tens of milliseconds to one round trip now and then, not to two.
            over = self._rtt - self._rtt_min
            previous = self._rtt_previous
            if over > 2 * PAD_RTT_QUEUE or (
                over > PAD_RTT_QUEUE
                and previous is not None
                and previous - self._rtt_min > PAD_RTT_QUEUE
            ):
                return f"round trip {self._rtt * 1000:.0f} ms"
        return None

    def _probe_failed(self) -> None:
        self._failed_probes += 1
        self._probe_wait = min(PROBE_MAX, PROBE_BASE * 2**self._failed_probes)

    def decide(self, now: float) -> Decision | None:
        """The rung to move to now, or None to stay."""
        if self.holding(now):
            return None  # nothing is sent: no report describes the rung
        bottom = len(self._needs) - 1
        if self._pad_started is not None:
            failed = self._pad_probe_trouble(now)
            if failed is not None:
                # The padding is what the link could not carry: it stops, and the queue it
                # built drains before any report judges the rung again (no step down for it).
                self._pad_started = None
                self._probe_failed()
                self._changed_at = self._calm_since = now
                self._moved_up = False
                # Chrome's estimate goes on falling for the queue the padding built: as after
                # a step down, only a queue in later round trips makes that congestion.
                self._estimate_lags_until = now + ESTIMATE_LAG
                self._pad_failed = True
                self.last_reason = f"padding probe failed: {failed}"
                return None
            if now - self._pad_started >= PAD_RAMP + PAD_HOLD:
                self._pad_started = None
                total = self._pad_total() // 1000
                decision = self._move(self.index - 1, f"padding probe held {total} kbit/s", now)
                self._trial = (self.index, now)
                self._probe_wait = PROBE_AGAIN
                return decision
            return None
        corrected = self._corrected(now)
        if corrected is not None:
            return corrected
        why = self._congested(now)
        if why is not None:
            self._calm_since = now
            if self._probe_from is not None:
                back = self._probe_from
                self._probe_from = None
                self._probe_failed()
                return self._move(back, f"probe failed: {why}", now)
            # A queue the sonar found standing since the last step down is that rung's own:
            # it need not wait the full cool-down (a receiver's estimate would not know yet).
            cooldown = SONAR_COOLDOWN if self._sonar_standing(now) is not None else DOWN_COOLDOWN
            if self.index >= bottom or now - self._last_down < cooldown:
                return None
            trial, self._trial = self._trial, None
            if trial is not None and self.index <= trial[0]:
                self._probe_failed()  # the probed rung did not hold after all
                why = f"{why} (after a probe)"
            target = self.index + 1
            if self._remb is not None and self._fresh(self._remb_at, now):
                # The estimate itself, no margin: a receiver that sees a queue already
                # estimates 0.85x what it gets (Chrome), and 10 % more margin sent a 600
                # kbit/s viewer (estimate ~480) to 240p instead of 360p (need ~434).
                target = max(target, self._fits(self._remb))
            capacity = self._sonar_capacity(now)
            if capacity is not None:
                # The queue's growth tells the link's rate before the estimate falls (which
                # takes a second, and falls a few percent at a time).
                target = max(target, self._fits(capacity))
            # A fresh step down: probing starts again from its base wait.
            self._probe_wait = max(self._probe_wait, PROBE_BASE)
            target, why = self._relief(target, why, now, rtt_queue=self._queue_seconds(now))
            sent = self.sent_bitrate
            decision = self._move(target, f"congestion: {why}", now)
            self._down = None if sent is None else (now, sent)
            return decision

        if self._drain is not None:
            back, until = self._drain
            newest = self._sonar_newest(now)
            drained = (
                self._rtt is not None
                and self._rtt_min is not None
                and self._since_change(self._rtt_at, REMB_SETTLE)
                and self._rtt <= self._rtt_min + DRAIN_DONE
                # A viewer that starts over a slow link measures its first round trips with
                # the queue already full (lowest 1.3 s at 150 kbit/s): the sonar, whose
                # lowest came before it, says whether that queue is still there.
                and (newest is None or newest[1] <= DRAIN_DONE)
            ) or (
                # Fresh, not just none: on a slow link the acknowledgements themselves wait
                # in the queue, and none for a while is a full queue, not an empty one.
                newest is not None
                and newest[0] >= self._changed_at + REMB_SETTLE
                and newest[1] <= DRAIN_DONE
            )
            if drained or now >= until:
                # Moved while still draining: the estimate lags this move too (see _move).
                decision = self._move(back, "queue drained" if drained else "drain time over", now)
                self._drain = None
                return decision
            return None
        if self._trial is not None and now - self._trial[1] >= PROBE_TRUST:
            self._trial = None
            self._failed_probes = 0
        if self._probe_from is not None:
            if now - self._probe_started >= PROBE_HOLD:
                self._probe_from = None
                self._trial = (self.index, now)
                self._probe_wait = PROBE_AGAIN
                self.last_reason = "probe held"
            return None
        if self.index == 0 or now < self._calm_since:
            return None
        calm = now - self._calm_since
        above = self._needs[self.index - 1]
        if (
            self._remb is not None
            and self._fresh(self._remb_at, now)
            and self._remb >= above * UP_MARGIN
            and calm >= UP_HOLD
        ):
            return self._move(self.index - 1, f"estimate {self._remb // 1000} kbit/s", now)
        # Loss with a queue: the rung is at the link's edge. Random loss without one is no
        # reason not to probe (padding probes judge the loss they add, not the link's own).
        lossy = (
            self._fresh(self._loss_at, now)
            and self._loss > LOSS_LOW
            and (not self.can_pad or self._queue_likely(now))
        )
        sent = self.sent_bitrate
        short = (  # the estimate does not even carry this rung: nothing to probe for
            self._remb is not None
            and self._fresh(self._remb_at, now)
            and self._remb < self._needs[self.index]
            # ... unless padding can find out safely, nothing shows a queue and the estimate
            # is well below what the viewer receives: after heavy loss Chrome's estimate can
            # sit far below a link that is idle (seen: 50 kbit/s for 15 s on 300 kbit/s,
            # round trip 2 ms). Chrome answers a queue with 0.85x what it receives: an
            # estimate there is the link's own rate (a 150 kbit/s link estimated at 128 on a
            # 166 kbit/s rung), and probing from it only builds a queue.
            and not (
                self.can_pad
                and sent is not None
                and self._remb < STUCK_BELOW_SENT * sent
                and not self._queue_likely(now, unmeasured=True)
            )
            # ... or the sonar finds no queue at all under this rung: the estimate lags the
            # link (Chrome's grows ~8 % a second after a queue; a link back at 2 Mbit/s was
            # left on 360p for 8 s), and a padding probe finds out within a tenth of a second.
            and not (self.can_pad and self._sonar_clear(now))
        )
        if calm >= self._probe_wait and not lossy and not short:
            self.probes += 1
            if self.can_pad:
                # Padding first (see padding_rate); the rung switches only if the link
                # carried it. A failed padding probe costs a short queue, not a rung's worth.
                self._pad_started = now
                self._pad_base = sent * WIRE_FACTOR if sent else float(self._needs[self.index])
                self._pad_best = self._remb or 0
                self._pad_loss = self._loss if self._fresh(self._loss_at, now) else 0.0
                self.last_reason = "padding probe"
                return None
            self._probe_from = self.index
            self._probe_started = now
            return self._move(self.index - 1, "probing", now)
        return None
