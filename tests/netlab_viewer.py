"""An aiortc viewer for the network lab, run inside a viewer namespace by tests.netlab:

    nsenter -t PID -n python -m tests.netlab_viewer --ws ws://198.51.100.1:PORT/ws [--seconds N]

Decodes peercam's video and prints one JSON object per line about every 0.5 s: ``frames``
decoded so far, ``ages_ms`` (the picture ages, from the capture-time bar, of the frames decoded
since the previous line), ``longest_gap_s`` (the longest time between two decoded frames so
far), ``width``/``height``, ``ice`` (the ICE state, the types of the candidates on each side
and the selected pair, once there is one); ``error`` if it could not connect, or, with
``--connect-timeout S``, if no frame was decoded within S s of the answer (then it ends). Ends after
``--seconds``, on SIGTERM or when the track ends, closing its peer connection. ICE servers: the
server's own list (``--config-ice-servers``, as the page does) and/or ``--ice-server URL``;
``--relay`` allows relayed candidates only.
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
from aiortc import RTCIceServer
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

    def ice(self) -> dict[str, Any]:
        """The ICE state, candidate types on each side and the selected pair (aioice internals:
        aiortc has no getStats for candidates)."""
        if self.pc is None:
            return {"state": "new", "local": [], "remote": [], "pair": None}
        transport = self.pc.getTransceivers()[0].receiver.transport.transport
        connection = transport._connection
        pair = connection._nominated.get(1)
        return {
            "state": str(transport.state),
            "local": sorted({c.type for c in connection.local_candidates}),
            "remote": sorted({c.type for c in connection.remote_candidates}),
            "pair": None if pair is None else {
                "local": pair.local_candidate.type,
                "remote": pair.remote_candidate.type,
                "protocol": pair.local_candidate.transport,
                # A relayed candidate's own transport is UDP; this is how it reaches the relay.
                "relayProtocol": (
                    connection.turn_transport if pair.local_candidate.type == "relay" else None
                ),
                "localAddress": f"{pair.local_candidate.host}:{pair.local_candidate.port}",
                "remoteAddress": f"{pair.remote_candidate.host}:{pair.remote_candidate.port}",
            },
        }  # fmt: skip

    def line(self) -> dict[str, Any]:
        ages, self.unreported_ages = self.unreported_ages, []
        return {
            "frames": self.received.frames,
            "ages_ms": ages,
            "longest_gap_s": round(self.longest_gap_s, 4),
            "width": self.received.width,
            "height": self.received.height,
            "ice": self.ice(),
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
        args.ws,
        codec=args.codec,
        local_addresses=[args.address] if args.address else [],
        ice_servers=[RTCIceServer(url) for url in args.ice_server],
        use_config_ice_servers=args.config_ice_servers,
        relay_only=args.relay,
    )
    deadline = None if args.seconds is None else loop.time() + args.seconds
    try:
        try:
            await viewer.connect()
        except (OSError, RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
            emit({"error": f"{type(exc).__name__}: {exc}"})
            return
        started = loop.time()  # the answer is applied: ICE checks begin now
        while not (stop.is_set() or viewer.ended.is_set()):
            waited = loop.time() - started
            if (
                args.connect_timeout
                and not viewer.received.frames
                and waited >= args.connect_timeout
            ):
                emit({**viewer.line(), "error": f"no frame within {args.connect_timeout:g} s"})
                return
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
    parser.add_argument(
        "--config-ice-servers",
        action="store_true",
        help="use the ICE servers the server's config message gives (as the page does)",
    )
    parser.add_argument(
        "--ice-server", action="append", default=[], help="a STUN server URL (repeatable)"
    )
    parser.add_argument("--relay", action="store_true", help="relayed candidates only")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        help="end with an error if no frame is decoded within this many seconds",
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
