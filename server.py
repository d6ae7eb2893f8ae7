"""peercam: stream a camera to any browser, live, over WebRTC.

    python server.py [--source [NAME=]auto|test|0|/dev/video74|FILE|rtsp://…]… [--port 9000] …

Thin: flags, environment and file (``signaling/options.py``) → :class:`Config` →
``create_app`` → run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import re
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ifaddr
from pythonjsonlogger.json import JsonFormatter

from signaling import limits, tls
from signaling.announce import announce
from signaling.app import create_app, open_sources
from signaling.config import (
    DEFAULT_CAMERA,
    DEFAULT_TURN_TTL,
    CameraConfig,
    Config,
    TlsConfig,
    split_source,
)
from signaling.listener import serve
from signaling.options import CameraTable, Layered, OptionError, layered
from signaling.proxy import parse_network
from signaling.security import generate_token, normalize_host, normalize_origin
from webrtc import discovery
from webrtc.encoders import Codec, select_h264_encoder
from webrtc.errors import SourceError
from webrtc.ice import IceServer, PortRange, TurnSecret
from webrtc.ladder import LadderSpec
from webrtc.sources import SourceSpec, redact_url

logger = logging.getLogger("peercam")

M_ARENA_MAX = -8  # glibc's mallopt() parameter number

#: Every flag is also PEERCAM_<FLAG> and a key of the --config file (signaling/options.py).
#: Secrets (--token, --turn-secret, --ice-credential) have no argparse default, which
#: ``--help`` would print: their variables are read after parsing, like every other.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peercam",
        description="Stream a camera to any browser, live, over WebRTC. Every flag is also "
        "a PEERCAM_<FLAG> variable and a key of the --config file; flags win over variables, "
        "variables over the file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--source",
        action="append",
        metavar="[NAME=]SPEC",
        help="auto, test, a camera index, /dev/videoN, a video file or an rtsp:// / http(s):// "
        "URL; repeat as NAME=SPEC for several cameras, served at /cam/NAME/ (the first also at "
        "/ws, /snapshot.jpg…; the page / then shows them all) (default: auto)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a TOML file: top-level keys are these flags' names, one [cameras.NAME] table per "
        "camera (or PEERCAM_CONFIG)",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="print the configuration peercam would run with (secrets hidden) and exit",
    )
    p.add_argument(
        "--list-cameras",
        action="store_true",
        help="list every V4L2 camera, its formats, sizes and rates, and which one --source "
        "auto would take (at --width/--height/--fps), then exit",
    )
    p.add_argument("--width", type=int, help="capture width (camera 1280, test pattern 640)")
    p.add_argument("--height", type=int, help="capture height (camera 720, test pattern 480)")
    p.add_argument("--fps", type=float, help="frames per second (camera and test pattern 30)")
    p.add_argument(
        "--host",
        help="address to listen on (default: all interfaces with access control, "
        "127.0.0.1 with --no-auth)",
    )
    p.add_argument("--port", type=int, default=9000, help="port to listen on")
    p.add_argument(
        "--codec",
        choices=["auto", "vp8", "h264"],
        default="auto",
        help="restrict WebRTC to one codec",
    )
    p.add_argument(
        "--bitrate", type=int, help="bitrate of the ladder's top rung, bit/s (default: by size)"
    )
    p.add_argument(
        "--ladder",
        default="auto",
        metavar="auto|off|RUNGS",
        help="shared encodings per codec for viewers' links: auto (from the source size: full, "
        "half its height at 40%%, 3/8 at 15%%, a quarter at 7%% and half rate), off (one, as "
        "--bitrate), or rungs like 720p@2500k,360p@500k,180p@80k/15 (HEIGHTp@BITRATE[/FPS])",
    )
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
        default=argparse.SUPPRESS,  # no "(default: …)" in --help
        help="credential for every turn:/turns: server (or PEERCAM_ICE_CREDENTIAL)",
    )
    p.add_argument(
        "--turn-secret",
        default=argparse.SUPPRESS,  # no "(default: …)" in --help
        help="shared secret of the TURN server (coturn static-auth-secret): every turn:/turns: "
        "URL then gets time-limited credentials per viewer (or PEERCAM_TURN_SECRET)",
    )
    p.add_argument(
        "--turn-ttl",
        type=int,
        default=DEFAULT_TURN_TTL,
        help="lifetime of minted TURN credentials, s",
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
        "--udp-ports",
        metavar="LO-HI",
        help="bind every ICE socket in these UDP ports (inclusive; one per viewer and ICE "
        "address): the range to forward to this machine (or PEERCAM_UDP_PORTS)",
    )
    p.add_argument(
        "--no-webrtc",
        action="store_true",
        help="serve JPEG pictures only (viewers fall back at once)",
    )
    p.add_argument("--jpeg-quality", type=int, default=75, help="JPEG quality of pictures (1-100)")
    p.add_argument(
        "--encoder",
        choices=["shared", "per-viewer"],
        default="shared",
        help="per-viewer: aiortc encodes for each viewer (only to measure what sharing saves)",
    )
    p.add_argument(
        "--passthrough",
        choices=["auto", "off"],
        default="auto",
        help="auto: an H.264 camera (rtsp://, or --input-format h264) goes to WebRTC viewers "
        "as it is, no decode, no encode (B-frames, H.265 or an odd profile: transcoded); "
        "off: always decode and encode",
    )
    p.add_argument(
        "--video-encoder",
        default="auto",
        metavar="auto|libx264|h264_v4l2m2m|h264_nvenc|h264_qsv|h264_vaapi|…",
        help="FFmpeg's H.264 encoder; auto: the first hardware encoder that passes a test "
        "encode at start, else libx264",
    )
    p.add_argument(
        "--input-format",
        choices=["mjpeg", "h264"],
        help="what a V4L2 camera is asked for (default: MJPG when it offers it); h264: its "
        "H.264 is passed through",
    )
    p.add_argument(
        "--token",
        default=argparse.SUPPRESS,  # no "(default: …)" in --help
        help="access token (or PEERCAM_TOKEN; default: a random one, printed at start)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="turn access control off (anyone who reaches the port sees the camera)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="another site allowed to embed the viewer (repeatable), e.g. https://example.org",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=argparse.SUPPRESS,
        metavar="CIDR",
        help="a reverse proxy whose X-Forwarded-For/-Proto/-Host (or Forwarded) headers are "
        "believed, e.g. 127.0.0.1 (repeatable; or PEERCAM_TRUSTED_PROXY, comma-separated; "
        "default: none, not even loopback)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="with --no-auth, also answer to this Host name (repeatable; the loopback names "
        "127.0.0.1, localhost and [::1] always work)",
    )
    p.add_argument(
        "--max-per-address",
        type=int,
        default=10,
        help="viewers and streams per client (an IPv4 address or an IPv6 /64); its TCP "
        "connections are capped at this plus 8",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        help=f"TCP connections at once (default {limits.DEFAULT_MAX_CONNECTIONS}, lowered to "
        "what the file-descriptor limit allows)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=5.0,
        help="seconds a connection has to send a complete request (also the keep-alive time)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=15.0,
        help="seconds a WebSocket may stay without asking for video",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        help="seconds a picture consumer may take nothing before it is dropped",
    )
    p.add_argument(
        "--snapshot-rate",
        type=float,
        default=10.0,
        help="snapshots per second per client (bursts of twice as many)",
    )
    p.add_argument("--cert", type=Path, help="TLS certificate (PEM)")
    p.add_argument("--key", type=Path, help="TLS private key (PEM)")
    p.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve HTTPS with a self-signed certificate, made once in --state-dir",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
        / "peercam",
        help="where peercam keeps its self-signed certificate",
    )
    p.add_argument("--max-viewers", type=int, default=50, help="viewers served at once")
    p.add_argument(
        "--janus",
        action="append",
        default=[],
        metavar="URL",
        help="feed a Janus streaming mountpoint over RTP (its HTTP API, e.g. "
        "http://host:8088/janus; repeatable)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=20.0,
        help="seconds a viewer has to complete WebRTC",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(or PEERCAM_LOG_LEVEL, or the older PEERCAM_LOG)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object a line (for journald, Loki, …)",
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


def _udp_ports(text: str | None) -> PortRange | None:
    if not text:
        return None
    try:
        return PortRange.parse(text)
    except ValueError as exc:
        raise ValueError(f"--udp-ports: {exc}") from None


def _codecs(text: str) -> tuple[Codec, ...]:
    if text == "auto":
        return (Codec.VP8, Codec.H264)
    try:
        return (Codec(text),)
    except ValueError:
        raise ValueError(f"codec {text!r}: auto, vp8 or h264") from None


def _cameras(options: Layered, args: argparse.Namespace) -> tuple[CameraConfig, ...]:
    """The cameras: from --source flags or PEERCAM_SOURCE, else the file's tables or source."""
    size = {"width": args.width, "height": args.height, "fps": args.fps}
    if options.cameras:
        return tuple(_camera_from_table(table, size) for table in options.cameras)
    texts: list[str] = args.source or ["auto"]
    if sum(split_source(t)[0] is None for t in texts) > 1:
        raise ValueError(f"{options.origin('source')}: name each of several cameras (NAME=SPEC)")
    cameras = []
    for text in texts:
        name, spec = split_source(text)
        try:
            cameras.append(
                CameraConfig(name=name or DEFAULT_CAMERA, source=SourceSpec.parse(spec), **size)
            )
        except (ValueError, SourceError) as exc:
            raise ValueError(f"{options.origin('source')}: {exc}") from None
    return tuple(cameras)


def _camera_from_table(table: CameraTable, size: Mapping[str, Any]) -> CameraConfig:
    values = table.values
    try:
        return CameraConfig(
            name=table.name,
            source=SourceSpec.parse(values["source"]),
            width=values.get("width", size["width"]),
            height=values.get("height", size["height"]),
            fps=float(values["fps"]) if "fps" in values else size["fps"],
            codecs=_codecs(values["codec"]) if "codec" in values else None,
            bitrate=values.get("bitrate"),
            ladder=LadderSpec.parse(values["ladder"]) if "ladder" in values else None,
        )
    except (ValueError, SourceError) as exc:
        raise ValueError(f"{table.origin}: {exc}") from None


def _with_origin(message: str, options: Layered) -> str:
    """Name where the value a message is about came from when it was not a flag."""
    match = re.search(r"--([a-z][a-z0-9-]*)", message)
    if match:
        origin = options.origin(match.group(1).replace("-", "_"))
        if not origin.startswith("--"):
            return f"{origin}: {message}"
    return message


def build_config(
    parser: argparse.ArgumentParser, options: Layered, args: argparse.Namespace
) -> Config:
    """The layered settings → a validated :class:`Config`; exits with usage on bad input."""
    for dest in ("token", "turn_secret", "ice_credential", "trusted_proxy"):
        if getattr(args, dest, None) in (None, ""):
            setattr(args, dest, None)
    trusted = args.trusted_proxy or []
    try:
        ice_servers, turn_secret = _ice_servers(args)
        if args.no_auth and args.token:
            raise ValueError("--no-auth and --token contradict each other")
        token = None if args.no_auth else (args.token or generate_token())
        return Config(
            host=args.host or ("127.0.0.1" if args.no_auth else "0.0.0.0"),
            token=token,
            allow_origins=tuple(normalize_origin(o) for o in args.allow_origin),
            allow_hosts=tuple(normalize_host(h) for h in args.allow_host),
            trusted_proxies=tuple(parse_network(t) for t in trusted),
            max_per_address=args.max_per_address,
            max_connections=args.max_connections,
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
            stall_timeout=args.stall_timeout,
            snapshot_rate=args.snapshot_rate,
            port=args.port,
            cameras=_cameras(options, args),
            codecs=_codecs(args.codec),
            bitrate=args.bitrate,
            ladder=LadderSpec.parse(args.ladder),
            ice_servers=ice_servers,
            turn_secret=turn_secret,
            ice_addresses=tuple(args.ice_address),
            ice_advertise=tuple(args.ice_advertise),
            udp_ports=_udp_ports(args.udp_ports),
            relay_only=args.ice_transport_policy == "relay",
            max_viewers=args.max_viewers,
            connect_timeout=args.connect_timeout,
            webrtc=not args.no_webrtc,
            per_viewer_encoding=args.encoder == "per-viewer",
            passthrough=args.passthrough == "auto",
            video_encoder=select_h264_encoder(args.video_encoder),
            input_format=args.input_format,
            jpeg_quality=args.jpeg_quality,
            tls=TlsConfig(
                cert=args.cert,
                key=args.key,
                self_signed=args.tls_self_signed,
                state_dir=args.state_dir,
            ),
            log_level=args.log_level,
            log_format=args.log_format,
            janus=tuple(args.janus),
        )
    except (ValueError, SourceError) as exc:
        parser.error(_with_origin(str(exc), options))


def _local_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback, for the printed URLs."""
    return [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]


def _ssl_context(config: TlsConfig) -> ssl.SSLContext | None:
    if config.self_signed:
        cert, key = tls.self_signed(config.state_dir, _local_addresses())
    elif config.cert is not None and config.key is not None:
        cert, key = config.cert, config.key
    else:
        return None
    context = tls.server_context(cert, key)
    logger.info("TLS certificate %s, SHA-256 fingerprint %s", cert, tls.fingerprint(cert))
    return context


def _viewing_urls(config: Config, secure: bool) -> list[str]:
    scheme = "https" if secure else "http"
    if config.host in ("0.0.0.0", "::", ""):
        hosts = ["127.0.0.1", *_local_addresses()]
    else:
        hosts = [config.host]
    query = f"?token={config.token}" if config.token else ""
    return [f"{scheme}://{f'[{h}]' if ':' in h else h}:{config.port}/{query}" for h in hosts]


def _list_cameras(args: argparse.Namespace) -> int:
    """``--list-cameras``: the CLI's own output, on stdout."""
    devices = discovery.list_devices()
    request = discovery.CAMERA_REQUEST.with_overrides(args.width, args.height, args.fps)
    sys.stdout.write(discovery.format_listing(devices, discovery.choose_auto(devices, request)))
    return 0


def _limit_malloc_arenas() -> None:
    """Two glibc malloc arenas instead of eight per core.

    Encoder and capture threads otherwise each get an arena, and memory freed by viewers that
    left stays spread over them. Measured over 1,200 viewers coming and going (200 at a time):
    RSS wandered between 277 and 370 MB with eight arenas, and settled at ~327 MB with two.
    Must run before any thread starts; a no-op where libc is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def _setup_logging(level: str, form: str) -> None:
    text = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if form == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format=text)


def _describe(config: Config) -> str:
    """``--check-config``'s output: every setting, secrets and stream passwords hidden."""
    lines = []
    for name in Config.__dataclass_fields__:
        value: object = getattr(config, name)
        if name in ("token", "turn_secret") and value is not None:
            value = "(set)"
        elif name == "ice_servers":
            value = [url for server in config.ice_servers for url in server.urls]
        elif name == "cameras":
            for camera in config.cameras:
                c = config.camera(camera.name)
                size = f"{c.width or '-'}x{c.height or '-'}@{c.fps or '-'}"
                codecs = ",".join(str(codec) for codec in c.codecs or ())
                lines.append(
                    f"camera {c.name}: {c.source.kind} {redact_url(str(c.source.target))} "
                    f"size {size} codecs {codecs} bitrate {c.bitrate or 'auto'} "
                    f"ladder {c.ladder.mode if c.ladder else 'auto'}"
                )
            continue
        lines.append(f"{name} = {value}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    _limit_malloc_arenas()
    parser = _parser()
    # Warnings about unknown PEERCAM_* variables come before logging is set up: a plain line.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        options = layered(parser, _parser(), argv, os.environ)
    except OptionError as exc:
        parser.error(str(exc))
    args = options.namespace()
    if args.list_cameras:
        return _list_cameras(args)
    config = build_config(parser, options, args)
    logging.getLogger().handlers.clear()
    _setup_logging(config.log_level, config.log_format)
    if args.check_config:
        logger.info("the configuration is valid: %d camera(s)", len(config.cameras))
        sys.stdout.write(_describe(config) + "\n")
        return 0
    try:
        ssl_context = _ssl_context(config.tls)
    except ValueError as exc:
        parser.error(_with_origin(str(exc), options))
    if config.token is None:
        logger.warning(
            "access control is OFF (--no-auth): anyone who reaches the port sees the camera"
        )
    # A camera that cannot be opened yet shows "no signal" and is retried; /healthz names it.
    sources = open_sources(config)
    app = create_app(config, sources=sources)
    watching = ", ".join(f"{name}: {s.description}" for name, s in sources.items())
    fds = limits.raise_fd_limit()
    logger.debug("file-descriptor limit %d", fds)
    # The one place the token is logged: the URLs the user opens (and a QR code on a terminal).
    announce(_viewing_urls(config, ssl_context is not None), watching, sys.stdout)
    asyncio.run(serve(app, config, ssl_context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
