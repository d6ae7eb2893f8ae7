"""The RTSP camera of the pass-through tests and benchmark: tests/rtsp_server.py, run by the
system Python (GStreamer through python3-gi), on a free loopback port."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from types import TracebackType

from tests.processes import stop_process

SERVER = Path(__file__).resolve().parent / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspCamera:
    """``async with RtspCamera() as camera``: serves ``camera.url("h264")`` until the block ends;
    :meth:`stop` and :meth:`start` take it away and bring it back on the same port."""

    def __init__(
        self, gop_seconds: float = 4.0, port: int | None = None, size: str = "640x480"
    ) -> None:
        self.gop_seconds = gop_seconds
        self.size = size
        self.port = port or free_port()
        self._process: asyncio.subprocess.Process | None = None

    def url(self, mount: str = "h264") -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mount}"

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, str(SERVER), str(self.port), str(self.gop_seconds), self.size,
            stdout=asyncio.subprocess.PIPE, stderr=sys.stderr,
        )  # fmt: skip
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 20)
        if line.strip() != b"ready":
            raise RuntimeError(
                f"the RTSP server did not start (python3-gi, gst-rtsp-server?): {line!r}"
            )

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await stop_process(process)

    async def __aenter__(self) -> RtspCamera:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.stop()
