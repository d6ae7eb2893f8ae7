"""The server's configuration: one frozen, validated value built in ``server.main``."""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path

from webrtc.encoders import Codec
from webrtc.ice import IceServer, PortRange, TurnSecret
from webrtc.ladder import LadderSpec
from webrtc.peers import WebRtcSettings
from webrtc.sources import SourceSpec

from .proxy import Network

#: Lifetime of minted TURN credentials (``--turn-ttl``): minutes, so a leaked one soon dies.
DEFAULT_TURN_TTL = 600
#: TCP connections a client may hold beyond its long-lived ones (page, script, snapshots).
SHORT_LIVED_PER_CLIENT = 8

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
#: A camera's name: its routes live under ``/cam/NAME/``.
CAMERA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
#: The name of the one camera a bare ``--source SPEC`` makes.
DEFAULT_CAMERA = "default"


def split_source(text: str) -> tuple[str | None, str]:
    """``NAME=SPEC`` → (NAME, SPEC); a bare SPEC → (None, SPEC).

    Split at the first ``=`` only when what precedes it is a camera name: a URL's query
    (``rtsp://u:p@h/x?a=b``) has ``:`` and ``/`` before its ``=``, which no name has; a file
    that exists under the whole text stays a file.
    """
    name, sep, spec = text.partition("=")
    if sep and CAMERA_NAME.fullmatch(name) and not os.path.isfile(text):
        return name, spec
    return None, text


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """One camera: its source and what it is captured and encoded at.

    ``None`` in codecs, bitrate and ladder means "the server's" (the global flags); a
    :class:`Config` resolves them (:meth:`Config.camera`), so a camera's app sees values only.
    """

    name: str = DEFAULT_CAMERA
    source: SourceSpec = field(default_factory=lambda: SourceSpec("auto"))
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    codecs: tuple[Codec, ...] | None = None
    bitrate: int | None = None
    ladder: LadderSpec | None = None

    def __post_init__(self) -> None:
        if not CAMERA_NAME.fullmatch(self.name) or len(self.name) > 64:
            raise ValueError(
                f"camera name {self.name!r}: lower-case letters, digits, '-' and '_' "
                "(starting with a letter or digit, at most 64)"
            )
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and not 16 <= value <= 7680:
                raise ValueError(f"--{name} {value}: must be 16-7680")
        if self.fps is not None and not 0 < self.fps <= 120:
            raise ValueError(f"--fps {self.fps}: must be > 0 and <= 120")
        if self.bitrate is not None and not 50_000 <= self.bitrate <= 50_000_000:
            raise ValueError(f"--bitrate {self.bitrate}: must be 50000-50000000 bit/s")
        if self.codecs is not None and not self.codecs:
            raise ValueError("at least one codec is needed")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """HTTPS: a certificate and key given, or a self-signed pair made once in ``state_dir``."""

    cert: Path | None = None
    key: Path | None = None
    self_signed: bool = False
    state_dir: Path = field(default_factory=lambda: Path.home() / ".local/state/peercam")

    def __post_init__(self) -> None:
        if self.self_signed and (self.cert or self.key):
            raise ValueError("--tls-self-signed and --cert/--key contradict each other")
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together")

    @property
    def enabled(self) -> bool:
        return self.self_signed or self.cert is not None


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server is told at start.

    Raises ``ValueError`` (with a message meant for the user) when a value is invalid.
    """

    host: str = "127.0.0.1"
    port: int = 9000
    #: The cameras, the default one (today's root routes) first; every camera also has its
    #: routes under /cam/NAME/.
    cameras: tuple[CameraConfig, ...] = (CameraConfig(),)
    #: The server's codecs, bitrate and ladder: a camera's own values replace them.
    codecs: tuple[Codec, ...] = (Codec.VP8, Codec.H264)
    bitrate: int | None = None
    ladder: LadderSpec = field(default_factory=LadderSpec)
    ice_servers: tuple[IceServer, ...] = ()
    turn_secret: TurnSecret | None = None
    ice_addresses: tuple[str, ...] = ()
    ice_advertise: tuple[str, ...] = ()
    #: The UDP ports every ICE host socket is bound in (``--udp-ports``); None: ephemeral.
    udp_ports: PortRange | None = None
    relay_only: bool = False
    max_viewers: int = 50
    connect_timeout: float = 20.0
    webrtc: bool = True
    #: The access token; None turns access control off (server.main makes one by default).
    token: str | None = None
    allow_origins: tuple[str, ...] = ()
    #: Long-lived consumers (viewers, streams) per client (IPv4 address, IPv6 /64); the
    #: client's TCP connections are capped at this plus ``SHORT_LIVED_PER_CLIENT``.
    max_per_address: int = 10
    #: TCP connections at once; None: ``limits.DEFAULT_MAX_CONNECTIONS``. Either way lowered
    #: to what the file-descriptor limit allows (``limits.connection_budget``).
    max_connections: int | None = None
    #: Seconds a connection has to send a complete request (at open and between requests).
    header_timeout: float = 5.0
    #: Seconds a WebSocket may go without asking for video (no offer or jpeg on /ws, no
    #: request on /video) before it is closed.
    idle_timeout: float = 15.0
    #: Seconds a picture consumer may take nothing (MJPEG not read, JPEG not acked, /video
    #: not read) before it is dropped and its encoder released.
    stall_timeout: float = 10.0
    #: Snapshots per second per client (bursts of twice as many).
    snapshot_rate: float = 10.0
    #: With access control off, Host names served besides the loopback ones.
    allow_hosts: tuple[str, ...] = ()
    #: Reverse proxies whose X-Forwarded-* / Forwarded headers are believed (none by default,
    #: not even loopback): see ``signaling/proxy.py``.
    trusted_proxies: tuple[Network, ...] = ()
    per_viewer_encoding: bool = False
    #: Pass a camera's H.264 through to WebRTC viewers where it can be (``--passthrough``).
    passthrough: bool = True
    #: The FFmpeg H.264 encoder (``--video-encoder``, resolved at start: never "auto" here).
    video_encoder: str = "libx264"
    #: What a V4L2 camera is asked for (``--input-format``); "h264" reads it with PyAV.
    input_format: str | None = None
    jpeg_quality: int = 75
    #: Janus HTTP API URLs (``--janus``), each fed the top rung over RTP (signaling/janus.py).
    janus: tuple[str, ...] = ()
    static_dir: Path = STATIC_DIR
    tls: TlsConfig = field(default_factory=TlsConfig)
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port}: must be 0-65535")
        if not self.cameras:
            raise ValueError("at least one camera is needed")
        names = [camera.name for camera in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must differ: {', '.join(names)}")
        if self.bitrate is not None and not 50_000 <= self.bitrate <= 50_000_000:
            raise ValueError(f"--bitrate {self.bitrate}: must be 50000-50000000 bit/s")
        if not self.codecs:
            raise ValueError("at least one codec is needed")
        for flag, addresses in (
            ("--ice-address", self.ice_addresses),
            ("--ice-advertise", self.ice_advertise),
        ):
            for address in addresses:
                try:
                    ipaddress.ip_address(address)
                except ValueError:
                    raise ValueError(f"{flag} {address!r} is not an IP address") from None
        if self.relay_only and not (
            self.turn_secret
            or any(url.startswith(("turn:", "turns:")) for s in self.ice_servers for url in s.urls)
        ):
            raise ValueError("--ice-transport-policy relay needs a TURN server")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("--token must be at least 8 characters")
        if self.max_per_address < 1:
            raise ValueError(f"--max-per-address {self.max_per_address}: must be at least 1")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"--max-connections {self.max_connections}: must be at least 1")
        for flag, seconds in (
            ("--header-timeout", self.header_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--stall-timeout", self.stall_timeout),
            ("--snapshot-rate", self.snapshot_rate),
        ):
            if not 0 < seconds <= 3600:
                raise ValueError(f"{flag} {seconds}: must be > 0 and <= 3600")
        if self.max_viewers < 1:
            raise ValueError(f"--max-viewers {self.max_viewers}: must be at least 1")
        if self.connect_timeout <= 0:
            raise ValueError("the connect timeout must be positive")
        if self.input_format not in (None, "mjpeg", "h264"):
            raise ValueError(f"--input-format {self.input_format}: must be mjpeg or h264")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg-quality {self.jpeg_quality}: must be 1-100")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level {self.log_level}: one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format {self.log_format}: one of {', '.join(LOG_FORMATS)}")

        for url in self.janus:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"--janus {url!r}: give the HTTP API URL, e.g. http://host:8088/janus"
                )

    @property
    def default_camera(self) -> CameraConfig:
        """The camera today's root routes (/ws, /snapshot.jpg, …) serve: the first one."""
        return self.camera(self.cameras[0].name)

    def camera(self, name: str) -> CameraConfig:
        """Camera ``name`` with the server's codecs, bitrate and ladder where it has none.

        Raises:
            KeyError: no camera has that name.
        """
        for camera in self.cameras:
            if camera.name == name:
                return replace(
                    camera,
                    codecs=camera.codecs or self.codecs,
                    bitrate=camera.bitrate if camera.bitrate is not None else self.bitrate,
                    ladder=camera.ladder or self.ladder,
                )
        raise KeyError(name)

    @property
    def connections_per_client(self) -> int:
        """TCP connections one client may hold: its long-lived ones and a page's worth."""
        return self.max_per_address + SHORT_LIVED_PER_CLIENT

    def webrtc_settings(self, camera: CameraConfig | None = None) -> WebRtcSettings:
        return WebRtcSettings(
            codecs=(camera.codecs if camera else None) or self.codecs,
            ice_servers=self.ice_servers,
            turn_secret=self.turn_secret,
            ice_addresses=self.ice_addresses,
            advertise_addresses=self.ice_advertise,
            udp_ports=self.udp_ports,
            relay_only=self.relay_only,
            per_viewer_encoding=self.per_viewer_encoding,
            connect_timeout=self.connect_timeout,
        )
