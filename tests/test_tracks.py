"""A viewer's track over a real shared encoder: pausing for a queue to drain."""

from __future__ import annotations

import asyncio
import time

import pytest

from webrtc.encoders import Codec, SharedEncoder
from webrtc.frames import CapturedFrame
from webrtc.latest import Latest
from webrtc.sources import TestPatternSource
from webrtc.tracks import EncodedVideoTrack


@pytest.mark.parametrize("switching", [False, True])
async def test_a_held_track_sends_nothing_and_resumes_at_a_fresh_keyframe(switching: bool) -> None:
    """While held (a long queue in the viewer's path drains) the track sends nothing, not
    the rest of its rung; on resuming, the next frame sent is an IDR encoded after the pause,
    of the rung it was switched to if it was (nothing from the pause comes out late)."""
    pattern = TestPatternSource(320, 240, 30)
    frames: Latest[CapturedFrame] = Latest()
    top = SharedEncoder(Codec.VP8, frames, fps=30)
    lower = SharedEncoder(Codec.VP8, frames, fps=30, bitrate=100_000)
    track = EncodedVideoTrack()
    pauses: list[bool] = []
    track.on_hold = lambda: pauses.append(track.held)  # the retransmit budget's hook
    index = 0

    async def frame_through(encoder: SharedEncoder) -> None:
        """One new picture, encoded by ``encoder`` (the source's pace: no sleeping)."""
        nonlocal index
        index += 1
        seq = encoder.newest_seq
        frames.publish(CapturedFrame.from_bgr(pattern.render(index, time.time()), index))
        await asyncio.wait_for(encoder.next_frame(seq), 10)

    top.start()
    lower.start()
    try:
        track.attach(top)
        await frame_through(top)
        first = await asyncio.wait_for(track.recv(), 10)
        assert first.is_keyframe
        track.hold()
        track.hold()  # the peer's loop holds every tick of a pause: one pause begins
        assert pauses == [True]
        if switching:
            track.switch(lower)  # a step down that pauses: as the peer does it
        assert track.held
        waiting = asyncio.ensure_future(track.recv())
        for _ in range(6):
            await frame_through(top)
            await frame_through(lower)
        assert not waiting.done()  # nothing sent while held
        target = lower if switching else top
        assert target.newest_frame is not None
        paused_until = int(target.newest_frame.packet.pts or 0)
        track.resume()
        assert not track.held
        # Pictures until the fresh IDR comes: the encoders force at most one each half second,
        # and a fast machine encodes many pictures in that time (the bound is generous).
        async with asyncio.timeout(10):
            while not waiting.done():
                await frame_through(top)
                await frame_through(lower)
        packet = waiting.result()
        assert packet.is_keyframe
        assert int(packet.pts or 0) > paused_until
        assert track.encoder is target
        assert track.frames_sent == 2
        assert pauses == [True]
    finally:
        track.stop()
        await top.aclose()
        await lower.aclose()
