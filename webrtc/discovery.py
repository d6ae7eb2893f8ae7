"""Which V4L2 cameras this machine has, what they offer, and which one ``auto`` would take.

Two halves with a thin seam between them:

- :func:`probe_device` opens one ``/dev/videoN`` with linuxpy, which asks it (QUERYCAP,
  ENUM_FMT, ENUM_FRAMESIZES, ENUM_FRAMEINTERVALS); :func:`describe` turns linuxpy's answers
  into plain :class:`DeviceInfo` data. Opening and the ioctls are the only part that needs a
  real device; nothing else here issues one.
- :func:`list_devices`, :func:`choose_auto` and :func:`format_listing` work on that data
  alone: tests build a fake ``/dev`` + ``/sys`` tree and a probe that reads fixtures.

``--source auto`` (:func:`webrtc.sources.open_source`) walks the same :func:`device_paths` in
the same order and asks each camera for :data:`CAMERA_REQUEST` (unless ``--width``/
``--height``/``--fps`` say otherwise), so what ``--list-cameras`` predicts is what it does.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CameraRequest:
    """What peercam asks a camera for: the driver answers with its nearest offer."""

    fourcc: str = "MJPG"  # lets USB cameras reach full frame rate at high resolutions
    width: int = 1280
    height: int = 720
    fps: float = 30.0

    def with_overrides(
        self, width: int | None = None, height: int | None = None, fps: float | None = None
    ) -> CameraRequest:
        return CameraRequest(
            self.fourcc, width or self.width, height or self.height, fps or self.fps
        )


CAMERA_REQUEST = CameraRequest()


@dataclass(frozen=True, slots=True)
class FrameSize:
    """One discrete size and the frame rates offered at it (empty: the driver did not say)."""

    width: int
    height: int
    fps: tuple[float, ...] = ()

    def __str__(self) -> str:
        rates = ",".join(f"{f:g}" for f in sorted(self.fps, reverse=True))
        return f"{self.width}x{self.height}" + (f"@{rates}" if rates else "")


@dataclass(frozen=True, slots=True)
class SizeRange:
    """A stepwise or continuous size range (drivers such as a Raspberry Pi camera's)."""

    min_width: int
    min_height: int
    max_width: int
    max_height: int
    step_width: int = 1
    step_height: int = 1

    def nearest(self, width: int, height: int) -> tuple[int, int]:
        def clamp(value: int, low: int, high: int, step: int) -> int:
            value = min(max(value, low), high)
            return low + round((value - low) / max(step, 1)) * max(step, 1)

        return (
            clamp(width, self.min_width, self.max_width, self.step_width),
            clamp(height, self.min_height, self.max_height, self.step_height),
        )

    def __str__(self) -> str:
        return (
            f"{self.min_width}x{self.min_height} to {self.max_width}x{self.max_height}"
            f" (steps {self.step_width}x{self.step_height})"
        )


@dataclass(frozen=True, slots=True)
class PixelFormatInfo:
    """One pixel format (``fourcc`` like ``MJPG``, ``YUYV``) and the sizes offered in it."""

    fourcc: str
    description: str
    sizes: tuple[FrameSize, ...] = ()
    size_range: SizeRange | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What one ``/dev/videoN`` is. ``error`` set: it could not be asked (the rest is partial)."""

    path: str
    name: str
    driver: str = ""
    bus: str = ""
    capture: bool = False
    formats: tuple[PixelFormatInfo, ...] = ()
    error: str | None = None

    @property
    def number(self) -> int:
        return _device_number(self.path)


@dataclass(frozen=True, slots=True)
class AutoChoice:
    """The camera, format, size and rate ``--source auto`` would ask for."""

    device: DeviceInfo
    fourcc: str
    width: int
    height: int
    fps: float | None

    def __str__(self) -> str:
        rate = f"@{self.fps:g}" if self.fps else ""
        size = f"{self.width}x{self.height}{rate}"
        return f"{self.device.path} ({self.device.name}): {self.fourcc} {size}"


#: The seam: one device path in, its description out (raises OSError when it cannot be asked).
Probe = Callable[[Path], DeviceInfo]


def _device_number(path: str | Path) -> int:
    return int(re.sub(r"\D", "", Path(path).name) or 0)


def device_paths(dev: Path = Path("/dev")) -> list[Path]:
    """Every ``videoN`` node under ``dev``, in number order (video2 before video10)."""
    return sorted(dev.glob("video[0-9]*"), key=_device_number)


def _sysfs_name(sys: Path, path: Path) -> str:
    """The driver's name for a node from sysfs, readable even when the node itself is not."""
    try:
        return (sys / "class" / "video4linux" / path.name / "name").read_text().strip()
    except OSError:
        return ""


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (add the user to the 'video' group)"
    if exc.errno == errno.ENOTTY:
        return "not a V4L2 device"
    if exc.errno == errno.EBUSY:
        return "busy (another program has it)"
    return exc.strerror or str(exc)


def list_devices(
    dev: Path = Path("/dev"), sys: Path = Path("/sys"), probe: Probe | None = None
) -> list[DeviceInfo]:
    """Describe every ``videoN`` under ``dev`` (blocking: it opens devices)."""
    ask = probe or probe_device
    devices = []
    for path in device_paths(dev):
        try:
            info = ask(path)
        except OSError as exc:
            info = DeviceInfo(str(path), _sysfs_name(sys, path) or path.name, error=_why(exc))
        devices.append(info)
    return devices


def _nearest_rate(rates: Sequence[float], want: float) -> float | None:
    if not rates:
        return None
    return min(rates, key=lambda r: (abs(r - want), -r))


def choose_auto(
    devices: Sequence[DeviceInfo], request: CameraRequest = CAMERA_REQUEST
) -> AutoChoice | None:
    """What ``--source auto`` would take: the first capture device in number order, in the
    requested format when it offers it (else its first), at the offered size nearest the
    requested one (by area, then shape), at the offered rate nearest the requested one.

    ``auto`` still moves on to the next device when this one delivers no frame.
    """
    for device in sorted(devices, key=lambda d: d.number):
        if not device.capture or device.error or not device.formats:
            continue
        fmt = next((f for f in device.formats if f.fourcc == request.fourcc), device.formats[0])
        want_area = request.width * request.height
        candidates: list[FrameSize] = list(fmt.sizes)
        if fmt.size_range is not None:
            candidates.append(FrameSize(*fmt.size_range.nearest(request.width, request.height)))
        if not candidates:
            return AutoChoice(device, fmt.fourcc, request.width, request.height, None)
        size = min(
            candidates,
            key=lambda s: (
                abs(s.width * s.height - want_area),
                abs(s.width - request.width) + abs(s.height - request.height),
            ),
        )
        fps = _nearest_rate(size.fps, request.fps)
        return AutoChoice(device, fmt.fourcc, size.width, size.height, fps)
    return None


def format_listing(devices: Sequence[DeviceInfo], choice: AutoChoice | None) -> str:
    """The text ``peercam --list-cameras`` prints."""
    if not devices:
        return (
            "No V4L2 cameras found (no /dev/video* device); "
            "--source auto would use the test pattern.\n"
        )
    lines = []
    for d in devices:
        where = ", ".join(part for part in (d.driver, d.bus) if part)
        head = f"{d.path}: {d.name}" + (f" ({where})" if where else "")
        if d.error:
            lines.append(f"{head}: cannot be asked: {d.error}")
            continue
        lines.append(f"{head}: " + ("can capture" if d.capture else "cannot capture"))
        for f in d.formats if d.capture else ():
            offers = [str(s) for s in f.sizes]
            if f.size_range is not None:
                offers.append(str(f.size_range))
            lines.append(f"  {f.fourcc} ({f.description}): " + (" ".join(offers) or "no sizes"))
    if choice is None:
        lines.append("--source auto would use the test pattern: no device can capture.")
    else:
        lines.append(
            f"--source auto would use {choice} (the next device if this one delivers no frame)."
        )
    return "\n".join(lines) + "\n"


def _fps(value: object) -> float | None:
    rate = float(Fraction(str(value))) if value else 0.0
    return rate if rate > 0 else None


def probe_device(path: Path) -> DeviceInfo:
    """Ask one device node through linuxpy: name, bus, capabilities, formats, sizes, rates.

    Raises:
        OSError: it cannot be opened or is not a V4L2 device.
    """
    from linuxpy.video import device as v4l2  # imported here: the listing alone needs it

    with v4l2.Device(str(path)) as camera:
        return describe(path, camera.info)


def describe(path: Path, info: Any) -> DeviceInfo:
    """A device's linuxpy ``InfoEx`` (what QUERYCAP and the ENUM ioctls return) as plain data.

    ``info`` is duck-typed so tests can hand in linuxpy's own result types without a device:
    ``card``, ``driver``, ``bus_info``, ``device_capabilities``, ``buffer_formats()``,
    ``format_frame_sizes()`` and ``fps_intervals()``.

    Raises:
        OSError: an ioctl failed.
    """
    from linuxpy.video import device as v4l2

    capture = v4l2.Capability.VIDEO_CAPTURE in info.device_capabilities
    formats = []
    for fmt in info.buffer_formats(v4l2.BufferType.VIDEO_CAPTURE) if capture else ():
        sizes: list[FrameSize] = []
        size_range = None
        for frame_size in info.format_frame_sizes(fmt.pixel_format):
            s = frame_size.info
            if frame_size.type == v4l2.FrameSizeType.DISCRETE:
                rates = {
                    rate
                    for t in info.fps_intervals(fmt.pixel_format, s.width, s.height)
                    for rate in (_fps(t.min_fps), _fps(t.max_fps))
                    if rate is not None
                }
                sizes.append(FrameSize(s.width, s.height, tuple(sorted(rates))))
            else:  # stepwise or continuous: one range for the format
                size_range = SizeRange(
                    s.min_width, s.min_height, s.max_width, s.max_height,
                    s.step_width, s.step_height,
                )  # fmt: skip
        formats.append(
            PixelFormatInfo(
                v4l2.human_pixel_format(fmt.pixel_format),
                fmt.description,
                tuple(sizes),
                size_range,
            )
        )
    return DeviceInfo(str(path), info.card, info.driver, info.bus_info, capture, tuple(formats))
