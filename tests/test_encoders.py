"""The shared encoders, without any network: bitstream shape and keyframe policy."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import av
import numpy as np
import pytest

from webrtc.encoders import (
    KEYFRAME_MIN_INTERVAL,
    Codec,
    EncodedFrame,
    EncoderClosed,
    SharedEncoder,
    VideoKey,
    default_bitrate,
    make_encoder_pool,
)
from webrtc.frames import CapturedFrame
from webrtc.ladder import LadderSpec
from webrtc.latest import Latest
from webrtc.sources import TestPatternSource


def _nal_types(data: bytes) -> list[int]:
    """NAL unit types of an Annex-B access unit, in order."""
    types = []
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        types.append(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return types


async def _encode(
    codec: Codec, count: int, *, keyframe_before: set[int] | None = None
) -> tuple[list[EncodedFrame], SharedEncoder]:
    """Feed ``count`` test-pattern frames one at a time and collect what comes out."""
    pattern = TestPatternSource(320, 240, 30)
    frames: Latest[CapturedFrame] = Latest()
    encoder = SharedEncoder(codec, frames, fps=30, bitrate=None)
    encoder.start()
    out: list[EncodedFrame] = []
    try:
        for index in range(1, count + 1):
            if keyframe_before and index in keyframe_before:
                encoder.request_keyframe()
            frames.publish(CapturedFrame.from_bgr(pattern.render(index, time.time()), index))
            out.append(await encoder.next_frame(len(out)))  # one in, one out: no lookahead
    finally:
        await encoder.aclose()
    return out, encoder


async def test_h264_idr_frames_carry_sps_and_pps_in_annex_b() -> None:
    """A late joiner decodes from any IDR only if the parameter sets travel with it."""
    out, _ = await _encode(Codec.H264, 12, keyframe_before={8})
    keyframes = [f for f in out if f.keyframe]
    assert out[0].keyframe
    assert len(keyframes) >= 2
    for frame in keyframes:
        types = _nal_types(bytes(frame.packet))
        assert 5 in types
        assert types.index(7) < types.index(8) < types.index(5), types
    for frame in out:
        assert bytes(frame.packet).startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
        assert frame.packet.time_base == 1 / 90000 or frame.packet.time_base.denominator == 90000


async def test_h264_stream_is_constrained_baseline() -> None:
    """iOS and every browser decode constrained baseline (profile_idc 66, constraint_set1)."""
    out, _ = await _encode(Codec.H264, 2)
    data = bytes(out[0].packet)
    sps_at = next(i for i in range(len(data) - 4) if data[i : i + 3] == b"\x00\x00\x01" and
                  data[i + 3] & 0x1F == 7)  # fmt: skip
    profile_idc, constraints = data[sps_at + 4], data[sps_at + 5]
    assert profile_idc == 66
    assert constraints & 0x40, "constraint_set1_flag (constrained baseline) not set"


@pytest.mark.parametrize("codec", list(Codec))
async def test_packets_have_increasing_pts_in_the_rtp_clock(codec: Codec) -> None:
    """aiortc silently stops a sender fed packets without pts/time_base."""
    out, _ = await _encode(codec, 6)
    pts = [f.packet.pts for f in out]
    assert all(p is not None for p in pts)
    assert pts == sorted(set(pts))  # type: ignore[type-var]
    assert all(f.packet.time_base.denominator == 90000 for f in out)


@pytest.mark.parametrize("codec", list(Codec))
async def test_encoded_frames_decode_back_to_the_pattern(codec: Codec) -> None:
    """What the encoder emits is a valid stream of the source's pictures."""
    out, _ = await _encode(codec, 5)
    decoder = av.CodecContext.create("libvpx" if codec is Codec.VP8 else "h264", "r")
    decoded = []
    for frame in out:
        decoded += decoder.decode(frame.packet)
    assert decoded
    picture = decoded[-1].to_ndarray(format="bgr24")
    assert picture.shape == (240, 320, 3)
    assert float(np.mean(picture)) > 40  # colour bars, not a black or grey frame


async def test_keyframe_requests_are_rate_limited_but_never_lost() -> None:
    """One IDR goes to every viewer: a storm of PLIs must not become a storm of IDRs."""
    started = time.monotonic()
    out, encoder = await _encode(Codec.VP8, 20, keyframe_before=set(range(2, 21)))
    elapsed = time.monotonic() - started
    # Requests were pending the whole run: the first is served at once, later ones at most
    # once per interval (generous: the run's duration bounds how many windows passed).
    assert 1 <= encoder.forced_keyframes <= 1 + int(elapsed / KEYFRAME_MIN_INTERVAL) + 1
    assert sum(f.keyframe for f in out) >= 2  # the first frame, and a served request


@pytest.mark.parametrize(
    "size", [(640, 480), (480, 360), (426, 320), (320, 240), (240, 180), (160, 120), (210, 158)]
)
def test_scaling_the_planes_matches_scaling_the_picture(size: tuple[int, int]) -> None:
    """Lower rungs scale I420 plane by plane, straight into the encoder's picture (cheap): the
    same picture as scaling BGR first, whatever the planes' row padding."""
    import cv2
    import numpy as np

    from webrtc.encoders import i420_picture
    from webrtc.frames import CapturedFrame
    from webrtc.sources import TestPatternSource

    frame = CapturedFrame.from_bgr(TestPatternSource().render(7, 0.0).copy(), 7)
    width, height = size
    picture = i420_picture(frame.i420, frame.width, frame.height, width, height)
    assert (picture.width, picture.height, picture.format.name) == (width, height, "yuv420p")
    ours = picture.to_ndarray()
    reference = cv2.cvtColor(
        cv2.resize(frame.bgr, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2YUV_I420
    )
    assert ours.shape == reference.shape == (height * 3 // 2, width)
    if size == (frame.width, frame.height):
        assert np.array_equal(ours, frame.i420)  # the top rung: the picture itself
    difference = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    assert float(difference.mean()) < 4.0  # edges differ a little (bilinear vs area)


@pytest.mark.parametrize("size", [(640, 480), (642, 484), (642, 482), (640, 478)])
def test_a_picture_at_its_own_size_has_its_planes_whatever_the_height(
    size: tuple[int, int],
) -> None:
    """At its own size the encoder's picture wraps the frame's array where PyAV reads it
    right (heights that are multiples of 4) and copies the planes elsewhere: the same
    planes either way, never a picture two lines short."""
    from webrtc.encoders import i420_picture
    from webrtc.frames import i420_planes

    width, height = size
    rows = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    frame = CapturedFrame.from_bgr(rows, 1)
    picture = i420_picture(frame.i420, width, height)
    assert (picture.width, picture.height) == size
    for plane, expected in zip(picture.planes, i420_planes(frame.i420, width, height), strict=True):
        rows_of = np.frombuffer(memoryview(plane), np.uint8)
        got = rows_of[: plane.line_size * expected.shape[0]].reshape(-1, plane.line_size)
        assert np.array_equal(got[:, : expected.shape[1]], expected)


def test_a_frame_is_halved_once_for_every_rung_under_half_size() -> None:
    """Rungs at or under half size scale from one area-averaged half picture, made once per
    frame; a frame whose half is no whole I420 picture has none (its rungs scale from it)."""
    import cv2

    frame = CapturedFrame.from_bgr(TestPatternSource().render(7, 0.0).copy(), 7)
    half = frame.half_i420()
    assert half is not None
    assert half is frame.half_i420()
    reference = cv2.cvtColor(
        cv2.resize(frame.bgr, (320, 240), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2YUV_I420
    )
    assert half.shape == reference.shape == (360, 320)
    assert float(np.abs(half.astype(np.int16) - reference.astype(np.int16)).mean()) < 1.0
    assert CapturedFrame.from_bgr(np.zeros((482, 642, 3), np.uint8), 1).half_i420() is None


@pytest.mark.parametrize("source", [(640, 480), (642, 482)])
async def test_a_quarter_size_rung_decodes_at_its_size(source: tuple[int, int]) -> None:
    """The bottom rung of a 640x480 source is its half halved again; of a 642x482 one (no
    whole half, and chroma planes that do not fill rows of the I420 array), scaled from the
    frame itself: the same size either way."""
    frames: Latest[CapturedFrame] = Latest()
    encoder = SharedEncoder(VideoKey(Codec.VP8, 120), frames, fps=30)
    pattern = TestPatternSource(*source, 30)
    encoder.start()
    decoder = av.CodecContext.create("libvpx", "r")
    decoded = []
    try:
        for index in range(1, 4):
            frames.publish(CapturedFrame.from_bgr(pattern.render(index, time.time()), index))
            decoded += decoder.decode((await encoder.next_frame(index - 1)).packet)
    finally:
        await encoder.aclose()
    assert (decoded[-1].width, decoded[-1].height) == (160, 120)  # 642x482 rounds to 160 too
    assert float(np.mean(decoded[-1].to_ndarray(format="bgr24"))) > 40


def _ladder_keys(codec: Codec) -> list[VideoKey]:
    """The default ladder of a 640x480@30 source, as a viewer's keys."""
    ladder = LadderSpec.parse("auto").resolve(640, 480, 30, default_bitrate(640, 480, 30))
    return [VideoKey(codec, r.height, r.bitrate, r.fps) for r in ladder.rungs]


def _decoded_size(codec: Codec, frames: list[EncodedFrame]) -> tuple[int, int]:
    decoder = av.CodecContext.create("libvpx" if codec is Codec.VP8 else "h264", "r")
    pictures = [p for f in frames for p in decoder.decode(f.packet)]
    return pictures[-1].width, pictures[-1].height


@pytest.mark.parametrize("codec", list(Codec))
async def test_the_small_rungs_share_one_thread_and_each_keeps_its_size(codec: Codec) -> None:
    """Every rung under half the source's height is encoded in one job per frame on its
    codec's group thread; the top rung keeps a thread of its own. Each rung still has its own
    stream at its own size, and the 15 fps rung its own rate."""
    pattern = TestPatternSource(640, 480, 30)
    frames: Latest[CapturedFrame] = Latest()
    index = 0
    start = time.monotonic()

    def publish() -> None:
        """The next picture, stamped on a 30 fps capture clock (whatever the machine's pace:
        the 15 fps rung takes frames by their stamps)."""
        nonlocal index
        index += 1
        frame = CapturedFrame.from_bgr(pattern.render(index, time.time()), index)
        frames.publish(dataclasses.replace(frame, monotonic=start + index / 30))

    publish()  # the pool groups rungs by the source's size
    pool = make_encoder_pool(frames, fps=30, bitrate=None)
    keys = _ladder_keys(codec)
    out: dict[VideoKey, list[EncodedFrame]] = {key: [] for key in keys}
    try:
        async with pool.leases() as leases:
            encoders = [leases.take(key) for key in keys]
            group = pool.groups[codec]
            assert group.members == tuple(encoders[1:])
            for _ in range(6):
                publish()
                for key, encoder in zip(keys[:3], encoders, strict=False):
                    out[key].append(await encoder.next_frame(len(out[key])))
            threads = [t.name for t in threading.enumerate()]
            assert sum(n.startswith(f"peercam-rungs-{codec}") for n in threads) == 1
            assert not [n for n in threads if n.startswith(f"peercam-encoder-{codec}/")]
            bottom = await encoders[3].next_frame(0)  # at 15 fps: not every frame
            assert encoders[3].frames_encoded < encoders[1].frames_encoded
            assert all(e.step_seconds.count > 0 for e in encoders)
        sizes = [_decoded_size(codec, out[key]) for key in keys[:3]]
        assert sizes == [(640, 480), (320, 240), (240, 180)]
        assert _decoded_size(codec, [bottom]) == (160, 120)
    finally:
        await pool.aclose()
    assert all(e.closed for e in encoders)
    assert not group.members  # every lease released: none left
    assert group.closed  # and the pool stopped its group


async def test_a_failing_rung_stops_alone_and_starts_again_for_its_next_user() -> None:
    """A rung whose encoding raises is stopped (its readers learn it), the other rungs of
    its group go on, and the pool starts a new encoder of that rung for the next lease."""
    pattern = TestPatternSource(640, 480, 30)
    frames: Latest[CapturedFrame] = Latest()
    frames.publish(CapturedFrame.from_bgr(pattern.render(0, time.time()), 0))
    pool = make_encoder_pool(frames, fps=30, bitrate=None)
    keys = _ladder_keys(Codec.VP8)
    try:
        async with pool.leases() as leases:
            half, smaller = leases.take(keys[1]), leases.take(keys[2])

            def broken(frame: CapturedFrame, force_keyframe: bool) -> None:
                raise RuntimeError("an encoder fault")

            smaller._encode = broken  # type: ignore[method-assign]
            frames.publish(CapturedFrame.from_bgr(pattern.render(1, time.time()), 1))
            with pytest.raises(EncoderClosed):
                await asyncio.wait_for(smaller.next_frame(0), 10)
            assert smaller.closed
            assert pool.groups[Codec.VP8].members == (half,)
            frames.publish(CapturedFrame.from_bgr(pattern.render(2, time.time()), 2))
            assert (await asyncio.wait_for(half.next_frame(0), 10)).seq == 1
            again = leases.take(keys[2])
            assert again is not smaller
            frames.publish(CapturedFrame.from_bgr(pattern.render(3, time.time()), 3))
            frame = await asyncio.wait_for(again.next_frame(0), 10)
            assert frame.keyframe
            assert (frame.width, frame.height) == (240, 180)
    finally:
        await pool.aclose()
