"""`peercam --list-cameras`: every V4L2 device, what it offers, and what `auto` would take.

A fake /dev + /sys tree stands in for the hardware: each fake node holds a JSON fixture that a
fake probe reads into the same :class:`DeviceInfo` the linuxpy probe returns. The probe's
conversion is fed linuxpy's own result types; the probe itself runs against a real character
device that is not a camera, and against real cameras where the machine has one (vivid or
v4l2loopback; this kernel has no loadable modules).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from webrtc import discovery
from webrtc.discovery import (
    CAMERA_REQUEST,
    DeviceInfo,
    FrameSize,
    PixelFormatInfo,
    SizeRange,
    choose_auto,
    format_listing,
    list_devices,
)

ROOT = Path(__file__).resolve().parent.parent

#: A USB webcam (uvcvideo): a capture node and its metadata node, as the kernel makes them.
WEBCAM: dict[str, Any] = {
    "name": "HD Webcam C525",
    "driver": "uvcvideo",
    "bus": "usb-0000:00:14.0-1",
    "capture": True,
    "formats": [
        {
            "fourcc": "YUYV",
            "description": "YUYV 4:2:2",
            "sizes": [[640, 480, [30, 15]], [1280, 720, [10, 5]]],
        },
        {
            "fourcc": "MJPG",
            "description": "Motion-JPEG",
            "sizes": [[640, 480, [30, 15]], [1280, 720, [30, 15]], [1920, 1080, [30]]],
        },
    ],
}
METADATA: dict[str, Any] = {
    "name": "HD Webcam C525",
    "driver": "uvcvideo",
    "bus": "usb-0000:00:14.0-1",
    "capture": False,
}


def _fake_probe(path: Path) -> DeviceInfo:
    """Reads the fixture the fake node holds; a fixture with "errno" fails like open() would."""
    data = json.loads(path.read_text())
    if "errno" in data:
        raise OSError(data["errno"], os.strerror(data["errno"]))
    return DeviceInfo(
        path=str(path),
        name=data["name"],
        driver=data["driver"],
        bus=data["bus"],
        capture=data["capture"],
        formats=tuple(
            PixelFormatInfo(
                f["fourcc"],
                f["description"],
                tuple(FrameSize(w, h, tuple(map(float, rates))) for w, h, rates in f["sizes"]),
                SizeRange(*f["range"]) if "range" in f else None,
            )
            for f in data.get("formats", [])
        ),
    )


def _tree(root: Path, nodes: dict[str, dict[str, Any]]) -> tuple[Path, Path]:
    """A fake /dev (fixtures as nodes) and /sys/class/video4linux (names) under ``root``."""
    dev, sys_dir = root / "dev", root / "sys"
    dev.mkdir()
    for node, data in nodes.items():
        (dev / node).write_text(json.dumps(data))
        named = sys_dir / "class" / "video4linux" / node
        named.mkdir(parents=True)
        (named / "name").write_text(data.get("name", "unnamed") + "\n")
    (dev / "null").write_text("")  # not a video node: never listed
    return dev, sys_dir


def test_lists_every_node_in_number_order_with_name_bus_and_offers(tmp_path: Path) -> None:
    """video2 comes before video10, as `auto` tries them; each shows what it offers."""
    dev, sys_dir = _tree(tmp_path, {"video10": WEBCAM, "video2": WEBCAM, "video3": METADATA})
    devices = list_devices(dev, sys_dir, _fake_probe)
    assert [Path(d.path).name for d in devices] == ["video2", "video3", "video10"]
    text = format_listing(devices, choose_auto(devices))
    lines = text.splitlines()
    assert lines[0] == (f"{dev}/video2: HD Webcam C525 (uvcvideo, usb-0000:00:14.0-1): can capture")
    assert "  MJPG (Motion-JPEG): 640x480@30,15 1280x720@30,15 1920x1080@30" in lines
    assert "  YUYV (YUYV 4:2:2): 640x480@30,15 1280x720@10,5" in lines
    assert f"{dev}/video3: HD Webcam C525 (uvcvideo, usb-0000:00:14.0-1): cannot capture" in lines
    assert lines[-1] == (
        f"--source auto would use {dev}/video2 (HD Webcam C525): MJPG 1280x720@30 "
        "(the next device if this one delivers no frame)."
    )


def test_no_devices_is_a_sentence(tmp_path: Path) -> None:
    dev, sys_dir = _tree(tmp_path, {})
    devices = list_devices(dev, sys_dir, _fake_probe)
    assert devices == []
    assert format_listing(devices, choose_auto(devices)) == (
        "No V4L2 cameras found (no /dev/video* device); --source auto would use the test pattern.\n"
    )


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.EACCES, "permission denied (add the user to the 'video' group)"),
        (errno.EBUSY, "busy (another program has it)"),
        (errno.ENOTTY, "not a V4L2 device"),
    ],
)
def test_a_node_that_cannot_be_asked_is_named_from_sysfs_and_skipped_by_auto(
    tmp_path: Path, code: int, reason: str
) -> None:
    """The first node failing must not hide the next camera, and the user learns why."""
    dev, sys_dir = _tree(tmp_path, {"video0": {"name": "Locked Cam", "errno": code}})
    (dev / "video1").write_text(json.dumps(WEBCAM))
    devices = list_devices(dev, sys_dir, _fake_probe)
    assert devices[0] == DeviceInfo(f"{dev}/video0", "Locked Cam", error=reason)
    choice = choose_auto(devices)
    assert choice is not None
    assert choice.device.path == f"{dev}/video1"
    assert f"{dev}/video0: Locked Cam: cannot be asked: {reason}" in format_listing(devices, choice)


def test_only_metadata_nodes_mean_the_test_pattern(tmp_path: Path) -> None:
    dev, sys_dir = _tree(tmp_path, {"video0": METADATA})
    devices = list_devices(dev, sys_dir, _fake_probe)
    assert choose_auto(devices) is None
    assert format_listing(devices, None).splitlines()[-1] == (
        "--source auto would use the test pattern: no device can capture."
    )


def _camera(*formats: PixelFormatInfo) -> list[DeviceInfo]:
    return [DeviceInfo("/dev/video0", "cam", capture=True, formats=formats)]


def test_auto_prefers_mjpg_and_falls_back_to_the_first_format() -> None:
    yuyv = PixelFormatInfo("YUYV", "YUYV 4:2:2", (FrameSize(1280, 720, (10.0,)),))
    mjpg = PixelFormatInfo("MJPG", "Motion-JPEG", (FrameSize(1280, 720, (30.0,)),))
    with_mjpg = choose_auto(_camera(yuyv, mjpg))
    assert with_mjpg is not None
    assert (with_mjpg.fourcc, with_mjpg.fps) == ("MJPG", 30.0)
    without = choose_auto(_camera(yuyv))
    assert without is not None
    assert (without.fourcc, without.fps) == ("YUYV", 10.0)


def test_auto_takes_the_offered_size_and_rate_nearest_the_request() -> None:
    """Drivers answer S_FMT with their nearest size; the prediction must say which."""
    sizes = (FrameSize(640, 480, (30.0, 15.0)), FrameSize(1024, 768, (25.0,)))
    cam = _camera(PixelFormatInfo("MJPG", "Motion-JPEG", sizes))
    default = choose_auto(cam)
    assert default is not None
    assert (default.width, default.height, default.fps) == (1024, 768, 25.0)
    small = choose_auto(cam, CAMERA_REQUEST.with_overrides(640, 480, 20))
    assert small is not None
    assert (small.width, small.height, small.fps) == (640, 480, 15.0)
    assert str(small) == "/dev/video0 (cam): MJPG 640x480@15"


def test_auto_within_a_stepwise_range() -> None:
    """Continuous-size drivers (a Raspberry Pi camera) give the request, clamped to steps."""
    wide = SizeRange(32, 32, 2592, 1944, 2, 2)
    fmt = PixelFormatInfo("YU12", "Planar YUV 4:2:0", (), wide)
    choice = choose_auto(_camera(fmt), CAMERA_REQUEST.with_overrides(1281, 4000))
    assert choice is not None
    assert (choice.width, choice.height, choice.fps) == (1280, 1944, None)
    assert "YU12 (Planar YUV 4:2:0): 32x32 to 2592x1944 (steps 2x2)" in format_listing(
        _camera(fmt), choice
    )


def test_the_linuxpy_probe_on_a_device_that_is_no_camera(tmp_path: Path) -> None:
    """The real ioctl path: linuxpy opens the node, QUERYCAP fails, the listing says why."""
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "video0").symlink_to("/dev/null")
    with pytest.raises(OSError, match="Inappropriate ioctl") as raised:
        discovery.probe_device(dev / "video0")
    assert raised.value.errno == errno.ENOTTY
    (device,) = list_devices(dev, tmp_path / "sys")
    assert device == DeviceInfo(f"{dev}/video0", "video0", error="not a V4L2 device")


def _real_nodes() -> list[Path]:
    return discovery.device_paths()


@pytest.mark.skipif(
    not _real_nodes(),
    reason="no /dev/video* here (no camera, and no vivid or v4l2loopback: "
    + (
        "the kernel has no module directory)"
        if not Path("/lib/modules").exists()
        else "not loaded)"
    ),
)
def test_the_linuxpy_probe_on_the_real_devices() -> None:
    """Where a real or virtual camera exists, linuxpy reads its formats and sizes."""
    devices = list_devices()
    assert [d.path for d in devices] == [str(p) for p in _real_nodes()]
    for d in devices:
        if d.error is None and d.capture:
            assert d.name
            assert d.formats, d
            assert all(f.sizes or f.size_range for f in d.formats), d


def test_the_cli_lists_this_machines_cameras_and_exits_0() -> None:
    """`peercam --list-cameras` runs without starting a server, whatever the machine has."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--list-cameras"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    nodes = _real_nodes()
    if not nodes:
        assert done.stdout == (
            "No V4L2 cameras found (no /dev/video* device); "
            "--source auto would use the test pattern.\n"
        )
    for node in nodes:
        assert f"{node}:" in done.stdout
    assert "--source auto would use" in done.stdout.splitlines()[-1]


class _LinuxpyInfo:
    """What linuxpy's ``InfoEx`` returns for a device, in linuxpy's own types (no ioctl)."""

    def __init__(self, capabilities: Any, formats: dict[Any, list[Any]]) -> None:
        from linuxpy.video import device as v4l2

        self.v4l2 = v4l2
        self.card, self.driver, self.bus_info = "Cam", "uvcvideo", "usb-0000:00:14.0-1"
        self.device_capabilities = capabilities
        self._formats = formats  # pixel format → [(size struct, [fps, …]) …]

    def buffer_formats(self, buffer_type: Any) -> list[Any]:
        v4l2 = self.v4l2
        assert buffer_type == v4l2.BufferType.VIDEO_CAPTURE
        names = {v4l2.PixelFormat.MJPEG: "Motion-JPEG", v4l2.PixelFormat.YUV420: "Planar YUV"}
        return [
            v4l2.ImageFormat(buffer_type, names[pf], v4l2.ImageFormatFlag(0), pf)
            for pf in self._formats
        ]

    def format_frame_sizes(self, pixel_format: Any) -> list[Any]:
        v4l2 = self.v4l2
        out = []
        for i, (size, _) in enumerate(self._formats[pixel_format]):
            stepwise = isinstance(size, v4l2.raw.v4l2_frmsize_stepwise)
            kind = v4l2.FrameSizeType.STEPWISE if stepwise else v4l2.FrameSizeType.DISCRETE
            out.append(v4l2.FrameSize(i, pixel_format, kind, size))
        return out

    def fps_intervals(self, pixel_format: Any, width: int, height: int) -> list[Any]:
        v4l2 = self.v4l2
        for size, rates in self._formats[pixel_format]:
            if getattr(size, "width", None) == width and size.height == height:
                return [
                    v4l2.FrameType(
                        v4l2.FrameIntervalType.DISCRETE, pixel_format, width, height, r, r, r
                    )
                    for r in rates
                ]
        raise AssertionError("asked for a size the device did not offer")


def test_linuxpy_results_become_device_info() -> None:
    """The conversion behind the probe, fed linuxpy's own result types: discrete sizes with
    their rates (30000/1001 stays 29.97), a stepwise range, and a node that cannot capture."""
    from fractions import Fraction

    from linuxpy.video import device as v4l2

    raw = v4l2.raw
    info = _LinuxpyInfo(
        v4l2.Capability.VIDEO_CAPTURE | v4l2.Capability.STREAMING,
        {
            v4l2.PixelFormat.MJPEG: [
                (raw.v4l2_frmsize_discrete(1280, 720), [Fraction(30), Fraction(15)]),
                (raw.v4l2_frmsize_discrete(640, 480), [Fraction(30000, 1001)]),
                (raw.v4l2_frmsize_discrete(320, 240), []),  # the driver gave no rates
            ],
            v4l2.PixelFormat.YUV420: [(raw.v4l2_frmsize_stepwise(32, 2592, 2, 32, 1944, 2), [])],
        },
    )
    device = discovery.describe(Path("/dev/video0"), info)
    assert device == DeviceInfo(
        "/dev/video0",
        "Cam",
        "uvcvideo",
        "usb-0000:00:14.0-1",
        True,
        (
            PixelFormatInfo(
                "MJPG",
                "Motion-JPEG",
                (
                    FrameSize(1280, 720, (15.0, 30.0)),
                    FrameSize(640, 480, (30000 / 1001,)),
                    FrameSize(320, 240, ()),
                ),
            ),
            PixelFormatInfo("YU12", "Planar YUV", (), SizeRange(32, 32, 2592, 1944, 2, 2)),
        ),
    )
    assert "640x480@29.97 320x240" in format_listing([device], choose_auto([device]))
    metadata = _LinuxpyInfo(v4l2.Capability.META_CAPTURE | v4l2.Capability.STREAMING, {})
    assert discovery.describe(Path("/dev/video1"), metadata).capture is False
