"""An aiortc viewer for the network lab, run inside a viewer namespace by tests.netlab:

    nsenter -t PID -n python -m tests.netlab_viewer --ws ws://198.51.100.1:PORT/ws [--seconds N]

Decodes peercam's video and prints one JSON object per line about every 0.5 s: ``frames``
decoded so far, ``ages_ms`` (the picture ages, from the capture-time bar, of the frames decoded
since the previous line), ``longest_gap_s`` (the longest time between two decoded frames so
far), ``width``/``height``; ``error`` if it could not connect. Ends after ``--seconds``, on
SIGTERM or when the track ends, closing its peer connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.aiortc_viewer import AiortcViewer
from webrtc import timebar

logger = logging.getLogger("tests.netlab_viewer")

REPORT_EVERY = 0.5  # seconds between lines


class GapViewer(AiortcViewer):
    """tests' aiortc viewer, also recording the ages it has not reported yet and the gaps."""

    def __init__(self, ws_url: str, **kwargs: Any) -> None:
        super().__init__(ws_url, **kwargs)
        self.unreported_ages: list[float] = []
        self.longest_gap_s = 0.0
        self.ended = asyncio.Event()
        self._last_frame: float | None = None

    async def _read(self, track: MediaStreamTrack) -> None:
        # Ends when the track does; always sets `ended` so the main loop stops reporting.
        try:
            while True:
                frame = await track.recv()
                now = time.time()
                if self._last_frame is not None:
                    self.longest_gap_s = max(self.longest_gap_s, now - self._last_frame)
                self._last_frame = now
                received = self.received
                received.frames += 1
                received.width, received.height = frame.width, frame.height  # type: ignore[union-attr]
                millis = timebar.read(frame.to_ndarray(format="gray"))  # type: ignore[union-attr]
                if millis is not None:
                    received.stamped += 1
                    self.unreported_ages.append(round(now * 1000 - millis, 1))
                self.frame_event.set()
        except MediaStreamError:
            pass
        finally:
            self.ended.set()

    def line(self) -> dict[str, Any]:
        ages, self.unreported_ages = self.unreported_ages, []
        return {
            "frames": self.received.frames,
            "ages_ms": ages,
            "longest_gap_s": round(self.longest_gap_s, 4),
            "width": self.received.width,
            "height": self.received.height,
        }


def emit(message: dict[str, Any]) -> None:
    """One line to the parent: this process's only output on stdout."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    viewer = GapViewer(
        args.ws, codec=args.codec, local_addresses=[args.address] if args.address else []
    )
    deadline = None if args.seconds is None else loop.time() + args.seconds
    try:
        try:
            await viewer.connect()
        except (OSError, RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
            emit({"error": f"{type(exc).__name__}: {exc}"})
            return
        while not (stop.is_set() or viewer.ended.is_set()):
            left = REPORT_EVERY if deadline is None else deadline - loop.time()
            timeout = min(REPORT_EVERY, left)
            if timeout <= 0:
                break
            # Waiting for a stop with a bound: the bound is the reporting period itself.
            try:
                await asyncio.wait_for(stop.wait(), timeout)
            except TimeoutError:
                pass
            emit(viewer.line())
        emit(viewer.line())
    finally:
        await viewer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ws", required=True, help="ws://HOST:PORT/ws of the server")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: SIGTERM)")
    parser.add_argument("--codec", choices=["vp8", "h264"])
    parser.add_argument(
        "--address",
        help="the local address ICE announces (default: every interface but loopback)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s viewer[{os.getpid()}] %(name)s: %(message)s"
    )
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
