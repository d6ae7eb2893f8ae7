"""webrtc/sources.py, timebar.py and frames.py: where frames come from and what they carry."""

from __future__ import annotations

import asyncio
import glob
import math
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import av
import cv2
import numpy as np
import pytest

from webrtc import timebar
from webrtc.errors import SourceError
from webrtc.frames import CapturedFrame, Image
from webrtc.latest import LatestClosed
from webrtc.sources import CaptureSource, Source, SourceSpec, TestPatternSource, open_source

BOUND = 5.0  # seconds; only an upper bound so a stalled source fails instead of hanging
NOW_MS = 1_732_000_000_123  # a capture time in late 2024, in milliseconds

SourceT = TypeVar("SourceT", bound=Source)


class Sources:
    """Sources made by a test; every one is stopped when the test ends, pass or fail."""

    def __init__(self) -> None:
        self._sources: list[Source] = []

    def keep(self, source: SourceT) -> SourceT:
        """Stop ``source`` at the end of the test (an opened capture holds a device or file)."""
        self._sources.append(source)
        return source

    def start(self, source: SourceT) -> SourceT:
        self.keep(source).start()
        return source

    async def stop_all(self) -> None:
        for source in self._sources:
            await asyncio.to_thread(source.stop)  # joins the capture thread: off the loop


@pytest.fixture
async def sources() -> AsyncIterator[Sources]:
    made = Sources()
    try:
        yield made
    finally:
        await made.stop_all()


async def next_frame(source: Source, after: int = 0) -> tuple[int, CapturedFrame]:
    return await asyncio.wait_for(source.frames.next(after), BOUND)


# --- SourceSpec.parse ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        pytest.param("auto", SourceSpec("auto"), id="auto"),
        pytest.param("", SourceSpec("auto"), id="empty"),
        pytest.param("  auto\n", SourceSpec("auto"), id="auto-with-spaces"),
        pytest.param("test", SourceSpec("test"), id="test"),
        pytest.param("0", SourceSpec("camera", 0), id="index-0"),
        pytest.param("12", SourceSpec("camera", 12), id="index-12"),
        pytest.param("/dev/video74", SourceSpec("camera", "/dev/video74"), id="device"),
        pytest.param(
            "rtsp://192.0.2.10:554/stream1",
            SourceSpec("url", "rtsp://192.0.2.10:554/stream1"),
            id="rtsp",
        ),
        pytest.param(
            "rtsps://cam.example/live", SourceSpec("url", "rtsps://cam.example/live"), id="rtsps"
        ),
        pytest.param(
            "RTSP://CAM.EXAMPLE/live", SourceSpec("url", "RTSP://CAM.EXAMPLE/live"), id="rtsp-caps"
        ),
        pytest.param(
            "http://cam.example/video.mjpg",
            SourceSpec("url", "http://cam.example/video.mjpg"),
            id="http",
        ),
        pytest.param(
            "https://cam.example/live.m3u8",
            SourceSpec("url", "https://cam.example/live.m3u8"),
            id="https",
        ),
    ],
)
def test_parse_recognises_every_documented_source_form(text: str, spec: SourceSpec) -> None:
    """--source is the one knob a user turns; each documented form must mean what it says."""
    assert SourceSpec.parse(text) == spec


def test_parse_accepts_an_existing_file(tmp_path: Path) -> None:
    """A recorded clip is a source (demos, tests, a camera that is not plugged in)."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 16)
    assert SourceSpec.parse(str(clip)) == SourceSpec("file", str(clip))


@pytest.mark.parametrize("name", ["missing.mp4", "no-such-dir/clip.mp4"])
def test_parse_refuses_a_missing_file_naming_it(tmp_path: Path, name: str) -> None:
    """A typo in the path must say which path and what was expected, not fail later."""
    path = str(tmp_path / name)
    with pytest.raises(SourceError) as caught:
        SourceSpec.parse(path)
    assert path in str(caught.value)
    assert "existing video file" in str(caught.value)


def test_parse_refuses_a_directory(tmp_path: Path) -> None:
    """A directory is not a video file, even though the path exists."""
    with pytest.raises(SourceError):
        SourceSpec.parse(str(tmp_path))


@pytest.mark.parametrize("text", ["ftp://x", "rtmp://cam.example/live", "file:///tmp/a.mp4"])
def test_parse_refuses_an_unsupported_url_scheme_naming_it(text: str) -> None:
    """A URL of another scheme is reported as such, not as a missing file."""
    with pytest.raises(SourceError) as caught:
        SourceSpec.parse(text)
    assert text in str(caught.value)
    assert "scheme" in str(caught.value)


@pytest.mark.parametrize("text", ["rtsp://", "/dev/video", "/dev/videoX", "camera"])
def test_parse_refuses_near_misses(text: str) -> None:
    """Half a URL or half a device path is an error, not a surprise source."""
    with pytest.raises(SourceError):
        SourceSpec.parse(text)


# --- timebar ---------------------------------------------------------------------------------


def noise(width: int, height: int, seed: int = 7) -> Image:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def stamped(width: int, height: int, millis: int = NOW_MS) -> Image:
    image = noise(width, height)
    timebar.stamp(image, millis)
    return image


def flip_block(image: Image, block: int) -> None:
    """Invert one bar block in place, as a compression artefact might."""
    size = timebar.block_size(image.shape[1])
    x = size * (block + 1)
    rows = slice(size // 2, size // 2 + size)
    image[rows, x : x + size] = 255 - image[rows, x : x + size]


@pytest.mark.parametrize("millis", [0, 1, NOW_MS, (1 << timebar.TIME_BITS) - 1])
@pytest.mark.parametrize(("width", "height"), [(320, 240), (640, 480), (1280, 720), (1920, 1080)])
def test_timebar_reads_back_the_time_it_stamped(width: int, height: int, millis: int) -> None:
    """Latency is measured from this bar; it must decode exactly at every usual size."""
    assert timebar.read(stamped(width, height, millis)) == millis


@pytest.mark.parametrize(
    ("width", "height"), [(480, 360), (384, 288), (256, 192), (192, 144), (240, 180)]
)
def test_timebar_reads_from_a_picture_scaled_down_as_a_rung(width: int, height: int) -> None:
    """A lower rung carries the source's bar scaled: blocks of a fraction of a pixel more or
    less than a bar stamped at that size would have (4.8 at 384 wide, 2.4 at 192)."""
    scaled = np.asarray(
        cv2.resize(stamped(640, 480), (width, height), interpolation=cv2.INTER_LINEAR), np.uint8
    )
    assert timebar.read(scaled) == NOW_MS


def test_timebar_reads_from_a_grey_picture() -> None:
    """Decoders that hand out only the luma plane can still read the bar."""
    grey = np.asarray(cv2.cvtColor(stamped(640, 480), cv2.COLOR_BGR2GRAY), np.uint8)
    assert grey.ndim == 2
    assert timebar.read(grey) == NOW_MS


@pytest.mark.parametrize("block", range(timebar.BITS))
def test_a_timebar_with_one_flipped_block_reads_as_none(block: int) -> None:
    """A wrong latency is worse than none: damage anywhere in the bar must be caught."""
    image = stamped(640, 480)
    flip_block(image, block)
    assert timebar.read(image) is None


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(np.zeros((480, 640, 3), np.uint8), id="black"),
        pytest.param(np.full((480, 640, 3), 255, np.uint8), id="white"),
        pytest.param(np.full((480, 640, 3), 128, np.uint8), id="grey"),
        pytest.param(
            np.tile(np.arange(640, dtype=np.uint8)[None, :, None], (480, 1, 3)), id="ramp"
        ),
        pytest.param(noise(640, 480), id="noise"),
    ],
)
def test_a_picture_without_a_timebar_reads_as_none(image: Image) -> None:
    """A camera picture has no bar; the viewer must show 'no latency', not a random one."""
    assert timebar.read(image) is None


def test_a_picture_too_narrow_for_the_bar_reads_as_none() -> None:
    """A bar that cannot fit is reported absent instead of being misread."""
    assert timebar.read(stamped(200, 150)) is None


@pytest.mark.parametrize(("width", "height"), [(320, 240), (640, 480), (1280, 720)])
def test_timebar_survives_jpeg_at_quality_30(width: int, height: int) -> None:
    """The JPEG fallback is lossy; the latency readout must survive it."""
    picture = TestPatternSource(width, height).render(42, NOW_MS / 1000)
    ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 30])
    assert ok
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    assert decoded is not None
    assert timebar.read(np.asarray(decoded, np.uint8)) == NOW_MS


# --- CapturedFrame ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "cropped"),
    [
        pytest.param(120, 160, (120, 160), id="even"),
        pytest.param(121, 160, (120, 160), id="odd-height"),
        pytest.param(120, 161, (120, 160), id="odd-width"),
        pytest.param(121, 161, (120, 160), id="odd-both"),
        pytest.param(2, 2, (2, 2), id="smallest"),
    ],
)
def test_from_bgr_crops_to_even_sizes_for_i420(
    height: int, width: int, cropped: tuple[int, int]
) -> None:
    """4:2:0 needs even sizes; a camera with odd ones must still stream, one pixel smaller."""
    bgr = noise(width, height)
    frame = CapturedFrame.from_bgr(bgr, 1)
    h, w = cropped
    assert (frame.height, frame.width) == (h, w)
    assert frame.bgr.shape == (h, w, 3)
    assert np.array_equal(frame.bgr, bgr[:h, :w])
    assert frame.i420.shape == (h * 3 // 2, w)
    assert frame.i420.dtype == np.uint8


def test_from_bgr_i420_holds_the_planes_of_the_picture() -> None:
    """Encoders take i420 as the picture: Y first, then quarter-size U and V."""
    bgr = np.zeros((120, 160, 3), np.uint8)
    bgr[:60] = (255, 255, 255)  # white top half, black bottom half
    frame = CapturedFrame.from_bgr(bgr, 1)
    y, chroma = frame.i420[:120], frame.i420[120:]
    assert y[:60].min() > 200
    assert y[60:].max() < 40
    assert np.all(np.abs(chroma.astype(int) - 128) <= 2)  # no colour in grey pictures


def test_from_bgr_arrays_are_read_only() -> None:
    """One frame is shared by every encoder and viewer; a write would corrupt all of them."""
    frame = CapturedFrame.from_bgr(noise(161, 121), 1)
    assert not frame.bgr.flags.writeable
    assert not frame.i420.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        frame.bgr[0, 0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        frame.i420[0, 0] = 1


def test_from_bgr_keeps_index_and_capture_time() -> None:
    """The capture time drives latency; the index tells a viewer it skipped frames."""
    frame = CapturedFrame.from_bgr(noise(64, 48), 17, 1234.5)
    assert frame.index == 17
    assert frame.capture_time == 1234.5


def test_from_bgr_without_a_capture_time_uses_now() -> None:
    """Sources without a timestamp of their own are stamped when the frame is wrapped."""
    before = time.time()
    frame = CapturedFrame.from_bgr(noise(64, 48), 1)
    assert before <= frame.capture_time <= time.time()


# --- TestPatternSource -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "fps", "shown"),
    [
        pytest.param(318, 240, 30.0, "318x240", id="too-narrow"),
        pytest.param(320, 238, 30.0, "320x238", id="too-low"),
        pytest.param(321, 240, 30.0, "321x240", id="odd-width"),
        pytest.param(320, 241, 30.0, "320x241", id="odd-height"),
        pytest.param(0, 0, 30.0, "0x0", id="zero"),
        pytest.param(-640, 480, 30.0, "-640x480", id="negative"),
        pytest.param(640, 480, 0.0, "fps 0", id="fps-zero"),
        pytest.param(640, 480, -30.0, "fps -30", id="fps-negative"),
        pytest.param(640, 480, 121.0, "fps 121", id="fps-too-high"),
        pytest.param(640, 480, math.nan, "fps nan", id="fps-nan"),
        pytest.param(640, 480, math.inf, "fps inf", id="fps-inf"),
    ],
)
def test_test_pattern_refuses_bad_size_or_fps(
    width: int, height: int, fps: float, shown: str
) -> None:
    """A bad --width/--height/--fps is reported at start, naming the value, not on a thread."""
    with pytest.raises(SourceError, match="test pattern") as caught:
        TestPatternSource(width, height, fps)
    assert shown in str(caught.value)


@pytest.mark.parametrize(("width", "height", "fps"), [(320, 240, 120.0), (1920, 1080, 0.5)])
def test_test_pattern_accepts_the_limits(width: int, height: int, fps: float) -> None:
    """The smallest size and the highest frame rate are allowed, not off by one."""
    source = TestPatternSource(width, height, fps)
    assert (source.width, source.height, source.fps) == (width, height, fps)


async def test_test_pattern_publishes_stamped_frames_of_its_size(sources: Sources) -> None:
    """The test pattern is the reference source: right size, rising index, honest time bar."""
    source = sources.start(TestPatternSource(320, 240, fps=30))
    seq, indexes = 0, []
    for _ in range(5):
        seq, frame = await next_frame(source, seq)
        assert (frame.width, frame.height) == (320, 240)
        millis = timebar.read(frame.bgr)
        assert millis is not None
        assert millis == int(frame.capture_time * 1000)
        assert abs(millis / 1000 - time.time()) < 1.0
        indexes.append(frame.index)
    assert indexes == sorted(set(indexes))
    assert source.state == "live"
    status = source.status()
    assert (status["kind"], status["width"], status["height"]) == ("test", 320, 240)


async def test_stop_ends_the_capture_thread_and_closes_the_frames(sources: Sources) -> None:
    """A stopped source leaves no thread behind and tells its readers it is gone."""
    before = set(threading.enumerate())
    source = sources.start(TestPatternSource(320, 240, fps=30))
    seq, _ = await next_frame(source)
    started = [
        thread
        for thread in set(threading.enumerate()) - before
        if thread.name.startswith("peercam-source")
    ]
    assert len(started) == 1
    await asyncio.to_thread(source.stop)
    assert not started[0].is_alive()
    assert source.state == "stopped"
    with pytest.raises(LatestClosed):
        await next_frame(source, seq)


# --- file sources ----------------------------------------------------------------------------

CLIP_FRAMES, CLIP_FPS, CLIP_SIZE = 64, 30, (160, 120)
STRIPES = 8  # the frame number is drawn as 8 black/white stripes, most significant bit left


def draw_number(number: int) -> Image:
    width, height = CLIP_SIZE
    image = np.zeros((height, width, 3), np.uint8)
    stripe = width // STRIPES
    for bit in range(STRIPES):
        if number >> (STRIPES - 1 - bit) & 1:
            image[:, bit * stripe : (bit + 1) * stripe] = 255
    return image


def read_number(image: Image) -> int:
    stripe = image.shape[1] // STRIPES
    columns = image.mean(axis=(0, 2))
    number = 0
    for bit in range(STRIPES):
        middle = columns[bit * stripe + stripe // 4 : (bit + 1) * stripe - stripe // 4]
        number = number << 1 | int(middle.mean() > 128)
    return number


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 64-frame 160x120 clip at 30 fps whose frame N shows the number N."""
    path = tmp_path_factory.mktemp("clip") / "numbers.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=CLIP_FPS)
        stream.width, stream.height = CLIP_SIZE
        stream.pix_fmt = "yuv420p"
        for number in range(CLIP_FRAMES):
            picture = av.VideoFrame.from_ndarray(draw_number(number), format="bgr24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def test_the_clip_fixture_numbers_its_frames() -> None:
    """The file-source tests rely on reading the frame number back from the pixels."""
    for number in (0, 1, 63, 170, 255):
        assert read_number(draw_number(number)) == number


async def test_a_video_file_opens_at_its_own_frame_rate(clip: str, sources: Sources) -> None:
    """A file plays at the speed it was recorded, without the user saying so."""
    source = sources.keep(open_source(SourceSpec.parse(clip)))
    assert isinstance(source, CaptureSource)
    assert source.kind == "file"
    assert source.fps == CLIP_FPS
    assert clip in source.description


async def test_a_video_file_plays_at_a_requested_frame_rate(clip: str, sources: Sources) -> None:
    """--fps overrides the file's own rate (a slow-motion demo, a constrained link)."""
    source = sources.keep(open_source(SourceSpec.parse(clip), fps=10))
    assert source.fps == 10


async def test_a_video_file_loops_past_its_end_in_order(clip: str, sources: Sources) -> None:
    """A clip used as a camera stand-in must run forever, from its first frame, in order."""
    source = sources.start(open_source(SourceSpec.parse(clip)))
    seq = 0
    while seq <= CLIP_FRAMES + 10:
        seq, frame = await next_frame(source, seq)
        assert (frame.width, frame.height) == CLIP_SIZE
        # Frame index 1 is the clip's frame 0; after the end it starts again from frame 0.
        assert read_number(frame.bgr) == (frame.index - 1) % CLIP_FRAMES, f"index {frame.index}"
    assert frame.index > CLIP_FRAMES
    assert source.state == "live"


async def test_a_video_file_is_paced_at_its_frame_rate(clip: str, sources: Sources) -> None:
    """An unpaced file would decode hundreds of frames a second and burn a core for nothing."""
    source = sources.start(open_source(SourceSpec.parse(clip)))
    seq, first = await next_frame(source)
    start = time.monotonic()
    frame = first
    while time.monotonic() - start < 1.5:
        seq, frame = await next_frame(source, seq)
    elapsed = time.monotonic() - start
    produced = frame.index - first.index
    assert produced < 3 * CLIP_FPS * elapsed
    assert produced > CLIP_FPS / 3 * elapsed  # and it does not crawl either


def test_a_file_that_is_not_a_video_gives_a_source_error(tmp_path: Path) -> None:
    """A wrong file is refused at start with its name, not by a thread that dies quietly."""
    path = tmp_path / "notes.mp4"
    path.write_bytes(b"these are not the frames you are looking for\n" * 100)
    with pytest.raises(SourceError) as caught:
        open_source(SourceSpec.parse(str(path)))
    assert str(path) in str(caught.value)


# --- cameras and URLs ------------------------------------------------------------------------


def test_a_missing_camera_device_gives_a_source_error_naming_it() -> None:
    """The most common setup mistake must say which device and why."""
    with pytest.raises(SourceError) as caught:
        open_source(SourceSpec("camera", "/dev/video99"))
    assert "/dev/video99" in str(caught.value)
    assert "no such device" in str(caught.value)


def test_a_missing_camera_index_gives_a_source_error_naming_it() -> None:
    """--source 97 on a machine without camera 97 fails at start, naming the index."""
    with pytest.raises(SourceError) as caught:
        open_source(SourceSpec.parse("97"))
    assert "97" in str(caught.value)


def closed_port() -> int:
    """A loopback TCP port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("url", ["rtsp://127.0.0.1:{port}/stream", "http://127.0.0.1:{port}/v"])
def test_a_url_nobody_serves_gives_a_source_error_quickly(url: str) -> None:
    """A dead camera URL must fail the start promptly, naming the URL, not hang the server."""
    url = url.format(port=closed_port())
    start = time.monotonic()
    with pytest.raises(SourceError) as caught:
        open_source(SourceSpec.parse(url))
    assert time.monotonic() - start < 15
    assert url in str(caught.value)


# --- auto and test ---------------------------------------------------------------------------


async def test_auto_falls_back_to_a_source_that_delivers_frames(sources: Sources) -> None:
    """'auto' must always give a working picture: a camera if one works, else the pattern."""
    source = sources.start(open_source(SourceSpec.parse("auto"), width=320, height=240))
    if not glob.glob("/dev/video[0-9]*"):
        assert source.kind == "test"
        assert isinstance(source, TestPatternSource)
        assert (source.width, source.height) == (320, 240)
    _, frame = await next_frame(source)
    assert frame.width > 0
    assert frame.height > 0


def test_test_spec_makes_a_test_pattern_of_the_requested_shape() -> None:
    """--source test --width/--height/--fps shapes the pattern."""
    source = open_source(SourceSpec("test"), width=320, height=240, fps=15)
    assert isinstance(source, TestPatternSource)
    assert (source.width, source.height, source.fps) == (320, 240, 15)
