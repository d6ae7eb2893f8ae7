"""peercam: stream a camera to any browser, live, over WebRTC.

    python server.py [--source auto|test|0|/dev/video74|FILE|rtsp://…] [--port 9000] …

Thin: flags and environment → :class:`Config` → ``create_app`` → run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from signaling.app import create_app
from signaling.config import Config
from webrtc.encoders import Codec
from webrtc.errors import SourceError
from webrtc.ice import IceServer, TurnSecret
from webrtc.sources import SourceSpec, open_source

logger = logging.getLogger("peercam")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peercam",
        description="Stream a camera to any browser, live, over WebRTC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--source",
        default=os.environ.get("PEERCAM_SOURCE", "auto"),
        help="auto, test, a camera index, /dev/videoN, a video file or an rtsp:// / http(s):// URL",
    )
    p.add_argument("--width", type=int, help="capture width (camera 1280, test pattern 640)")
    p.add_argument("--height", type=int, help="capture height (camera 720, test pattern 480)")
    p.add_argument("--fps", type=float, help="frames per second (camera and test pattern 30)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=9000, help="port to listen on")
    p.add_argument(
        "--codec",
        choices=["auto", "vp8", "h264"],
        default="auto",
        help="restrict WebRTC to one codec",
    )
    p.add_argument("--bitrate", type=int, help="video bitrate in bit/s (default: by size)")
    p.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server URL (repeatable), e.g. stun:stun.example.org:3478 "
        "or turn:turn.example.org:3478?transport=tcp",
    )
    p.add_argument("--ice-username", help="username for every turn:/turns: server")
    p.add_argument(
        "--ice-credential",
        default=os.environ.get("PEERCAM_ICE_CREDENTIAL"),
        help="credential for every turn:/turns: server (or PEERCAM_ICE_CREDENTIAL)",
    )
    p.add_argument(
        "--turn-secret",
        default=os.environ.get("PEERCAM_TURN_SECRET"),
        help="shared secret of the TURN server (coturn static-auth-secret): every turn:/turns: "
        "URL then gets time-limited credentials per viewer (or PEERCAM_TURN_SECRET)",
    )
    p.add_argument(
        "--turn-ttl", type=int, default=86400, help="lifetime of minted TURN credentials, s"
    )
    p.add_argument(
        "--ice-transport-policy",
        choices=["all", "relay"],
        default="all",
        help="relay: the server uses TURN relays only",
    )
    p.add_argument(
        "--ice-advertise",
        action="append",
        default=[],
        metavar="IP",
        help="also advertise this address for each host candidate (repeatable): the public "
        "address of a server behind port forwarding or in a container",
    )
    p.add_argument(
        "--ice-address",
        action="append",
        default=[],
        metavar="IP",
        help="local address ICE announces (repeatable; default: every interface but loopback)",
    )
    p.add_argument(
        "--no-webrtc",
        dest="webrtc",
        action="store_false",
        help="serve JPEG pictures only (viewers fall back at once)",
    )
    p.add_argument("--jpeg-quality", type=int, default=75, help="JPEG quality of pictures (1-100)")
    p.add_argument("--max-viewers", type=int, default=50, help="viewers served at once")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=20.0,
        help="seconds a viewer has to complete WebRTC",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("PEERCAM_LOG", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    return p


def _ice_servers(args: argparse.Namespace) -> tuple[tuple[IceServer, ...], TurnSecret | None]:
    """Static STUN/TURN servers, and the TURN URLs whose credentials are minted per viewer."""
    is_turn = [url.startswith(("turn:", "turns:")) for url in args.ice_server]
    if args.turn_secret:
        if args.ice_username or args.ice_credential:
            raise ValueError("--turn-secret replaces --ice-username/--ice-credential")
        turn_urls = tuple(u for u, turn in zip(args.ice_server, is_turn, strict=True) if turn)
        if not turn_urls:
            raise ValueError("--turn-secret needs at least one --ice-server turn: URL")
        static = tuple(
            IceServer((u,)) for u, turn in zip(args.ice_server, is_turn, strict=True) if not turn
        )
        return static, TurnSecret(turn_urls, args.turn_secret, args.turn_ttl)
    servers = tuple(
        IceServer(
            urls=(url,),
            username=args.ice_username if turn else None,
            credential=args.ice_credential if turn else None,
        )
        for url, turn in zip(args.ice_server, is_turn, strict=True)
    )
    return servers, None


def build_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """Flags and environment → a validated :class:`Config`; exits with usage on bad input."""
    try:
        ice_servers, turn_secret = _ice_servers(args)
        return Config(
            host=args.host,
            port=args.port,
            source=SourceSpec.parse(args.source),
            width=args.width,
            height=args.height,
            fps=args.fps,
            codecs=(Codec.VP8, Codec.H264) if args.codec == "auto" else (Codec(args.codec),),
            bitrate=args.bitrate,
            ice_servers=ice_servers,
            turn_secret=turn_secret,
            ice_addresses=tuple(args.ice_address),
            ice_advertise=tuple(args.ice_advertise),
            relay_only=args.ice_transport_policy == "relay",
            max_viewers=args.max_viewers,
            connect_timeout=args.connect_timeout,
            webrtc=args.webrtc,
            per_viewer_encoding=args.encoder == "per-viewer",
            jpeg_quality=args.jpeg_quality,
        )
    except (ValueError, SourceError) as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    config = build_config(parser, args)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        source = open_source(
            config.source, width=config.width, height=config.height, fps=config.fps
        )
    except SourceError as exc:
        logger.error("%s", exc)
        return 2
    app = create_app(config, source=source)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    logger.info("peercam: open http://%s:%d/ to watch %s", shown, config.port, source.description)
    web.run_app(app, host=config.host, port=config.port, print=None, shutdown_timeout=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
