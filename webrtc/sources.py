"""Where frames come from: a camera, a video file, a stream URL, or the test pattern.

Every source captures on its own thread and publishes :class:`CapturedFrame`s into its
:class:`Latest`; nothing here runs on the event loop. A source is an object, not a global, so a
server can hold several named ones.

Spec forms (``--source``): ``auto``, ``test``, a camera index (``0``) or device
(``/dev/video74``), a file path, or an ``rtsp://``, ``http://``, ``https://`` URL.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import cv2
import numpy as np

from . import discovery, timebar
from .errors import SourceError
from .frames import CapturedFrame, Image
from .latest import Latest

if TYPE_CHECKING:
    from .passthrough import StreamSource

logger = logging.getLogger(__name__)

SourceKind = Literal["test", "camera", "file", "url"]
SourceState = Literal["starting", "live", "reconnecting", "stopped"]
RETRY_MIN, RETRY_MAX = 0.25, 1.0
NO_SIGNAL_PERIOD = 0.2


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A parsed ``--source`` value."""

    kind: SourceKind | Literal["auto"]
    target: str | int = ""

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """Parse a ``--source`` value.

        Raises:
            SourceError: the text names no source peercam knows.
        """
        text = text.strip()
        if text in ("", "auto"):
            return cls("auto")
        if text == "test":
            return cls("test")
        if re.fullmatch(r"[0-9]+", text):
            return cls("camera", int(text))
        if re.fullmatch(r"/dev/video\d+", text):
            return cls("camera", text)
        if re.match(r"^(rtsp|rtsps|http|https)://.+", text, re.IGNORECASE):
            return cls("url", text)
        if "://" in text:
            raise SourceError(f"unsupported source URL scheme in {text!r} (rtsp, http, https)")
        if not os.path.isfile(text):
            raise SourceError(
                f"source {text!r} is neither 'auto', 'test', a camera index, /dev/videoN, "
                "a URL, nor an existing video file"
            )
        return cls("file", text)


class Source(abc.ABC):
    """A stream of frames captured on a thread of its own."""

    kind: SourceKind

    def __init__(self, description: str, fps: float) -> None:
        self.description = description
        self.fps = fps
        self.frames: Latest[CapturedFrame] = Latest()
        self.state: SourceState = "starting"
        self.last_error: str | None = None
        #: Times the source was lost and reconnecting began (read by /metrics).
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._index = 0

    def start(self) -> None:
        """Start capturing on a daemon thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._guarded_run, name=f"peercam-source-{self.kind}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capturing and wait for the thread (blocking: call off the event loop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = "stopped"
        self.frames.close()

    def _guarded_run(self) -> None:
        try:
            self._run()
        except Exception:
            # The thread must never die silently: viewers would freeze with no clue why.
            logger.exception("source %s stopped after an unexpected error", self.description)
            self.state = "stopped"

    @abc.abstractmethod
    def _run(self) -> None:
        """Capture until ``self._stop`` is set."""

    def _publish(self, bgr: Image, capture_time: float | None = None) -> None:
        if self.state != "live":  # before publishing: a reader that wakes sees "live"
            logger.info("source %s is live", self.description)
            self.state = "live"
            self.last_error = None
        self._index += 1
        self.frames.publish(CapturedFrame.from_bgr(bgr, self._index, capture_time))

    def status(self) -> dict[str, object]:
        newest = self.frames.get()
        return {
            "kind": self.kind,
            "description": self.description,
            "state": self.state,
            "error": self.last_error,
            "fps": self.fps,
            "width": newest[1].width if newest else None,
            "height": newest[1].height if newest else None,
            "frames": self._index,
        }


class TestPatternSource(Source):
    """A moving picture with a clock, a frame counter and the capture-time bar."""

    kind: SourceKind = "test"
    __test__ = False  # not a pytest test class

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        # The capture-time bar needs 66 blocks of at least 4 px across.
        if width < 320 or height < 240 or width % 2 or height % 2:
            raise SourceError(f"test pattern size {width}x{height}: need even sizes >= 320x240")
        if not 0 < fps <= 120:
            raise SourceError(f"test pattern fps {fps}: need 0 < fps <= 120")
        super().__init__(f"test pattern {width}x{height}@{fps:g}", fps)
        self.width = width
        self.height = height
        self._background = self._make_background(width, height)

    @staticmethod
    def _make_background(width: int, height: int) -> Image:
        colours = [(192, 192, 192), (0, 192, 192), (192, 192, 0), (0, 192, 0), (192, 0, 192),
                   (0, 0, 192), (192, 0, 0)]  # fmt: skip
        image = np.zeros((height, width, 3), np.uint8)
        for i, colour in enumerate(colours):
            image[:, i * width // len(colours) : (i + 1) * width // len(colours)] = colour
        ramp = np.linspace(0, 255, width, dtype=np.uint8)
        image[height * 3 // 4 :, :] = ramp[None, :, None]
        return image

    def render(self, index: int, now: float) -> Image:
        """The picture for frame ``index`` captured at wall-clock time ``now``."""
        w, h = self.width, self.height
        image = self._background.copy()
        # A square that sweeps across: motion makes a frozen stream obvious to the eye.
        size = h // 6
        x = int((index * 4) % (w + size)) - size
        y = int(h / 2 + math.sin(index / 15) * h / 6) - size // 2
        cv2.rectangle(image, (x, y), (x + size, y + size), (255, 255, 255), -1)
        scale = h / 480
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        font = cv2.FONT_HERSHEY_SIMPLEX
        thickness = max(1, round(2 * scale))
        for text, row in ((stamp, 0.2), (f"frame {index}", 0.3), ("peercam", 0.4)):
            (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
            x0, y0 = int(w * 0.05), int(h * row)
            cv2.rectangle(image, (x0 - 6, y0 - th - 6), (x0 + tw + 6, y0 + base + 4), (0, 0, 0), -1)
            cv2.putText(image, text, (x0, y0), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
        timebar.stamp(image, int(now * 1000))
        return image

    def _run(self) -> None:
        period = 1.0 / self.fps
        deadline = time.monotonic()
        while not self._stop.is_set():
            now = time.time()
            self._publish(self.render(self._index + 1, now), now)
            deadline += period
            delay = deadline - time.monotonic()
            if delay < -period:  # fell far behind (a stalled machine): do not burst to catch up
                deadline = time.monotonic()
            elif delay > 0:
                self._stop.wait(delay)


class CaptureDevice(Protocol):
    """What peercam uses of ``cv2.VideoCapture`` (tests inject a double to cause faults)."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...

    def get(self, prop: int) -> float: ...

    def set(self, prop: int, value: float) -> bool: ...


class CaptureSource(Source):
    """A camera, file or stream URL read through OpenCV.

    When reading fails (unplugged, a stream that stops) viewers stay connected and see a
    generated "no signal" picture with the time since the loss, while the device is reopened
    with backoff (0.25 s doubling to 1 s, so video is back within about a second of the device).
    """

    def __init__(
        self,
        kind: Literal["camera", "file", "url"],
        target: str | int,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        device_factory: Callable[[], CaptureDevice] | None = None,
    ) -> None:
        self.kind = kind
        self.target = target
        self._want = (width, height, fps)
        self._device_factory = device_factory or self._open_opencv
        self._capture: CaptureDevice | None = None
        self._lost_at: float | None = None
        self._size = (width or 640, height or 480)
        name = f"camera {target}" if kind == "camera" else f"{kind} {redact_url(str(target))}"
        super().__init__(name, fps or 30.0)

    def open(self) -> None:
        """Open the device now, so a bad source fails at start with a clear error.

        Raises:
            SourceError: it cannot be opened or delivers no frame.
        """
        if self._capture is None:
            self._capture = self._open_capture()

    def _open_opencv(self) -> CaptureDevice:
        if self.kind == "camera":
            return cv2.VideoCapture(self.target, cv2.CAP_V4L2)
        return cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG)

    def _open_capture(self) -> CaptureDevice:
        capture = self._device_factory()
        if not capture.isOpened():
            capture.release()
            hint = ""
            if self.kind == "camera" and isinstance(self.target, str):
                if not os.path.exists(self.target):
                    hint = ": no such device"
                elif not os.access(self.target, os.R_OK | os.W_OK):
                    hint = ": permission denied (add the user to the 'video' group)"
            raise SourceError(f"cannot open {self.description}{hint}")
        if self.kind == "camera":
            # What --list-cameras predicts from (webrtc.discovery.CAMERA_REQUEST): MJPG lets USB
            # cameras reach full frame rate at high resolutions; a camera that does not offer
            # it keeps its own format.
            want = discovery.CAMERA_REQUEST.with_overrides(*self._want)
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*want.fourcc))
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, want.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, want.height)
            capture.set(cv2.CAP_PROP_FPS, want.fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest picture, not a stale queue
            self.fps = capture.get(cv2.CAP_PROP_FPS) or want.fps
        elif self.kind == "file":
            native = capture.get(cv2.CAP_PROP_FPS)
            self.fps = self._want[2] or (native if 0 < native <= 240 else 30.0)
        else:
            native = capture.get(cv2.CAP_PROP_FPS)
            self.fps = native if 0 < native <= 240 else 30.0
        ok, image = capture.read()
        if not ok or image is None:
            capture.release()
            raise SourceError(f"{self.description} opened but delivered no frame")
        if self.kind == "file":
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        else:
            self._publish(np.asarray(image, dtype=np.uint8))  # a camera's first picture counts
        return capture

    def _run(self) -> None:
        retry = RETRY_MIN
        while not self._stop.is_set():
            capture = self._capture
            if capture is None:
                try:
                    capture = self._capture = self._open_capture()
                except SourceError as exc:
                    self._set_failed(str(exc))
                    self._show_no_signal(retry)
                    retry = min(RETRY_MAX, retry * 2)
                    continue
            retry = RETRY_MIN
            self._read_until_failure(capture)
            capture.release()
            self._capture = None

    def _read_until_failure(self, capture: CaptureDevice) -> None:
        period = 1.0 / self.fps if self.kind == "file" else 0.0
        deadline = time.monotonic()
        while not self._stop.is_set():
            ok, image = capture.read()
            if not ok or image is None:
                if (
                    self.kind == "file"
                    and self._index > 0
                    and capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ):
                    ok, image = capture.read()  # looped back to the start
                if not ok or image is None:
                    self._set_failed(f"{self.description}: read failed")
                    return
            picture = np.asarray(image, dtype=np.uint8)
            self._size = (picture.shape[1], picture.shape[0])
            self._publish(picture)
            if period:
                # A file is paced at its own frame rate; cameras and streams pace themselves.
                deadline += period
                delay = deadline - time.monotonic()
                if delay < -period:
                    deadline = time.monotonic()
                elif delay > 0:
                    self._stop.wait(delay)

    def _publish(self, bgr: Image, capture_time: float | None = None) -> None:
        if self._lost_at is not None:
            logger.info(
                "%s is back after %.1f s", self.description, time.monotonic() - self._lost_at
            )
            self._lost_at = None
        super()._publish(bgr, capture_time)

    def _set_failed(self, message: str) -> None:
        if self.state != "reconnecting" or self.last_error != message:
            logger.warning("%s; retrying", message)
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            self.reconnects += 1
        self.state = "reconnecting"
        self.last_error = message

    def _show_no_signal(self, duration: float) -> None:
        """Publish "no signal" pictures for ``duration`` seconds (5 a second): viewers stay
        connected and see how long the source has been gone."""
        end = time.monotonic() + duration
        while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
            lost_for = time.monotonic() - (self._lost_at or time.monotonic())
            now = time.time()
            self._index += 1
            self.frames.publish(
                CapturedFrame.from_bgr(
                    no_signal_picture(*self._size, self.description, lost_for, now),
                    self._index,
                    now,
                    live=False,
                )
            )
            self._stop.wait(min(NO_SIGNAL_PERIOD, left))

    def status(self) -> dict[str, object]:
        lost = None if self._lost_at is None else round(time.monotonic() - self._lost_at, 1)
        return super().status() | {"lostForSeconds": lost}

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if self._capture is not None and (self._thread is None or not self._thread.is_alive()):
            self._capture.release()
            self._capture = None


def no_signal_picture(
    width: int, height: int, description: str, lost_for: float, now: float
) -> Image:
    """The picture viewers see while a source is gone: what, since when, and the clock."""
    image = np.full((height, width, 3), 40, np.uint8)
    scale = max(0.4, height / 480)
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = max(1, round(2 * scale))
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    lines = [("NO SIGNAL", 1.6), (description, 0.7), (f"lost {lost_for:.0f} s ago", 0.9),
             (clock, 0.7)]  # fmt: skip
    y = int(height * 0.35)
    for text, size in lines:
        (tw, th), _ = cv2.getTextSize(text, font, scale * size, thickness)
        cv2.putText(image, text, ((width - tw) // 2, y), font, scale * size, (230, 230, 230),
                    thickness, cv2.LINE_AA)  # fmt: skip
        y += int(th * 1.9)
    timebar.stamp(image, int(now * 1000))
    return image


def redact_url(text: str) -> str:
    """``rtsp://user:secret@host/x`` → ``rtsp://user:***@host/x``: descriptions are logged and
    shown in /api/status, and a stream URL's password must not be."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", text)


def _video_devices() -> list[str]:
    # The order --list-cameras shows and predicts from (webrtc.discovery).
    return [str(path) for path in discovery.device_paths()]


def open_source(
    spec: SourceSpec,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    passthrough: bool = True,
    input_format: str | None = None,
    retry: bool = False,
) -> Source:
    """Make the source a spec names, opening devices now (blocking: call before serving).

    ``auto`` takes the first ``/dev/video*`` that opens and delivers a frame, otherwise the
    test pattern; the log says which. ``rtsp://`` URLs (unless ``passthrough`` is off) and
    cameras with ``input_format="h264"`` are read with PyAV's demuxer and their H.264 passed
    through where it can be (:mod:`webrtc.passthrough`). With ``retry``, a camera, file or
    stream that cannot be opened now is returned all the same: once started it shows "no
    signal" and keeps trying (a camera plugged in later, an RTSP server that comes up).

    Raises:
        SourceError: the source cannot be opened (never with ``retry``).
    """
    if spec.kind == "auto":
        for device in _video_devices():
            try:
                source = open_source(
                    SourceSpec("camera", device), width=width, height=height, fps=fps
                )
            except SourceError as exc:
                logger.info("auto: %s", exc)
                continue
            logger.info("auto: using %s", source.description)
            return source
        logger.info("auto: no camera delivers frames; using the test pattern")
        return TestPatternSource(width or 640, height or 480, fps or 30.0)
    if spec.kind == "test":
        return TestPatternSource(width or 640, height or 480, fps or 30.0)
    rtsp = spec.kind == "url" and str(spec.target).lower().startswith(("rtsp://", "rtsps://"))
    if (rtsp and passthrough) or (spec.kind == "camera" and input_format == "h264"):
        from .passthrough import StreamSource  # it builds on this module

        kind: Literal["camera", "url"] = "camera" if spec.kind == "camera" else "url"
        stream = StreamSource(
            kind, spec.target, passthrough=passthrough, input_format=input_format,
            width=width, height=height, fps=fps,
        )  # fmt: skip
        _open_or_retry(stream, retry)
        return stream
    source = CaptureSource(spec.kind, spec.target, width=width, height=height, fps=fps)
    _open_or_retry(source, retry)
    return source


def _open_or_retry(source: CaptureSource | StreamSource, retry: bool) -> None:
    """Open ``source`` now; with ``retry``, a failure is logged and left to its reader thread,
    which shows "no signal" and reopens with backoff."""
    try:
        source.open()
    except SourceError as exc:
        if not retry:
            raise
        logger.warning("%s; showing 'no signal' and retrying", exc)
