"""``--video-encoder``: choosing FFmpeg's H.264 encoder, with the encoders this machine has.

Hardware encoders the PyAV build carries (nvenc, qsv, amf, v4l2m2m on x86-64) fail their test
encode here (no device): an explicit one is refused naming it, and ``auto`` falls back to
libx264 with one log line.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import av
import pytest

from webrtc.encoders import (
    H264_ENCODERS,
    SOFTWARE_H264,
    Codec,
    SharedEncoder,
    has_sps,
    select_h264_encoder,
    trial_encode,
)
from webrtc.latest import Latest

ROOT = Path(__file__).resolve().parent.parent
#: Hardware encoders this PyAV build has but this machine cannot run (no GPU, no VPU here).
UNUSABLE = [n for n in H264_ENCODERS if n != SOFTWARE_H264 and n in av.codecs_available]


async def test_auto_falls_back_to_software_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="webrtc.encoders"):
        chosen = await asyncio.to_thread(select_h264_encoder, "auto")
    assert chosen == SOFTWARE_H264
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("video encoder")]
    assert len(lines) == 1, lines
    if UNUSABLE:
        assert "software" in lines[0]
        assert all(name in lines[0] for name in UNUSABLE)


@pytest.mark.skipif(not UNUSABLE, reason="this PyAV build carries no hardware H.264 encoder")
@pytest.mark.parametrize("name", UNUSABLE)
async def test_an_unusable_encoder_is_refused_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match=f"--video-encoder {name} does not work here"):
        await asyncio.to_thread(select_h264_encoder, name)


@pytest.mark.parametrize(
    ("name", "why"),
    [("h264_bogus", "no such encoder"), ("libvpx", "not an H.264 encoder")],
)
def test_unknown_or_wrong_encoders_are_refused(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        select_h264_encoder(name)
    assert name in str(caught.value)


def test_software_encoder_passes_its_trial_and_is_taken_as_asked() -> None:
    assert trial_encode(SOFTWARE_H264) is None
    assert select_h264_encoder("libx264") == "libx264"
    assert select_h264_encoder("h264") == "libx264"  # FFmpeg's default H.264 encoder


def test_the_server_refuses_to_start_naming_the_encoder() -> None:
    """Refused at start even for a source that would be passed through (nothing is opened)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--no-auth", "--video-encoder", "h264_bogus",
         "--source", "rtsp://127.0.0.1:9/none"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--video-encoder h264_bogus" in result.stderr


def test_sps_detection_finds_parameter_sets_in_front_of_an_idr() -> None:
    """What decides whether a hardware encoder's IDR gets its global header's SPS/PPS."""
    encoder = SharedEncoder(Codec.H264, Latest(), fps=30)
    context = encoder._open(320, 240)
    picture = av.VideoFrame(320, 240, "yuv420p")
    picture.pts = 0
    picture.pict_type = av.video.frame.PictureType.I
    idr = b"".join(bytes(p) for p in context.encode(picture) + context.encode(None))
    assert has_sps(idr)  # libx264 repeats them in-band
    assert not has_sps(b"\x00\x00\x00\x01\x65\x88\x84")  # an IDR slice alone
