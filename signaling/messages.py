"""Signaling messages, sans-I/O: text in, typed message out, and back.

No event loop and no sockets here: :func:`parse_message` turns one WebSocket text message into
a typed message or raises :class:`ProtocolError`, whose ``code`` and ``message`` go back to the
client as ``{"type": "error", ...}``. Field names follow the W3C dictionaries (``sdp``,
``candidate``, ``sdpMid``, ``sdpMLineIndex``) so a browser passes them straight through. The
wire format is documented in ``docs/protocol.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

MAX_MESSAGE_CHARS = 16 * 1024  # Chrome's recvonly offer is ~5.3 KB with its candidates
MAX_SDP_CHARS = 15 * 1024
MAX_CANDIDATE_CHARS = 1024


class ProtocolError(Exception):
    """A client message that cannot be accepted; tells the client why."""

    def __init__(self, code: str, message: str, in_reply_to: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.in_reply_to = in_reply_to


@dataclass(frozen=True, slots=True)
class Offer:
    """The viewer's SDP offer (recvonly video)."""

    sdp: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """A trickled ICE candidate; ``candidate`` None means the end of candidates."""

    candidate: str | None
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


@dataclass(frozen=True, slots=True)
class Bye:
    """The viewer is leaving."""


#: Why a client left WebRTC for JPEG, as it reports it (counted by the server).
FALLBACK_REASONS = frozenset(
    {
        "no-webrtc",
        "offer-error",
        "no-codec",
        "no-udp-port",
        "failed",
        "no-video",
        "stalled",
        "forced",
        "webrtc-disabled",
    }
)


@dataclass(frozen=True, slots=True)
class JpegRequest:
    """Switch this socket to JPEG pictures (binary messages, flow-controlled by acks)."""

    quality: int | None = None
    max_width: int | None = None
    max_fps: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """A JPEG picture was drawn: one more credit."""


@dataclass(frozen=True, slots=True)
class KeyframeRequest:
    """The page saw no new picture for a while (WebRTC): an IDR, please."""


@dataclass(frozen=True, slots=True)
class ViewerStats:
    """What the viewer saw over the last few seconds, as the page measured it (for /metrics)."""

    fps: float
    #: Pictures that froze (no new frame for 2 s) since the previous report.
    freezes: int
    #: Capture-to-display time of the newest picture, ms, where the page can measure it.
    picture_age_ms: float | None = None


ClientMessage: TypeAlias = (
    Offer | Candidate | Bye | JpegRequest | Ack | KeyframeRequest | ViewerStats
)


def _field(
    data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], type_name: str, *,
    required: bool, max_chars: int | None = None,
) -> Any:  # fmt: skip
    message_type = str(data["type"])
    if name not in data or (data[name] is None and not required):
        if required:
            raise ProtocolError("invalid-field", f"'{name}' is required", message_type)
        return None
    value = data[name]
    # bool is an int in Python, never on this wire.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError("invalid-field", f"'{name}' must be {type_name}", message_type)
    if max_chars is not None and isinstance(value, str) and len(value) > max_chars:
        raise ProtocolError(
            "too-large", f"'{name}' is longer than {max_chars} characters", message_type
        )
    return value


def _parse_offer(data: Mapping[str, Any]) -> Offer:
    sdp = _field(data, "sdp", str, "a string", required=True, max_chars=MAX_SDP_CHARS)
    if not sdp.startswith("v=0"):
        raise ProtocolError("invalid-sdp", "'sdp' is not an SDP description", "offer")
    return Offer(sdp)


def _parse_candidate(data: Mapping[str, Any]) -> Candidate:
    candidate = _field(
        data, "candidate", str, "a string or null", required=False, max_chars=MAX_CANDIDATE_CHARS
    )
    sdp_mid = _field(data, "sdpMid", str, "a string or null", required=False, max_chars=32)
    index = _field(data, "sdpMLineIndex", int, "an integer or null", required=False)
    if index is not None and not 0 <= index < 1024:
        raise ProtocolError("invalid-field", "'sdpMLineIndex' is out of range", "candidate")
    return Candidate(candidate or None, sdp_mid, index)


def _parse_jpeg(data: Mapping[str, Any]) -> JpegRequest:
    quality = _field(data, "quality", int, "an integer or null", required=False)
    if quality is not None and not 1 <= quality <= 100:
        raise ProtocolError("invalid-field", "'quality' must be 1-100", "jpeg")
    max_width = _field(data, "maxWidth", int, "an integer or null", required=False)
    if max_width is not None and not 16 <= max_width <= 7680:
        raise ProtocolError("invalid-field", "'maxWidth' must be 16-7680", "jpeg")
    max_fps = _field(data, "maxFps", (int, float), "a number or null", required=False)
    if max_fps is not None and not 0.1 <= max_fps <= 120:
        raise ProtocolError("invalid-field", "'maxFps' must be 0.1-120", "jpeg")
    reason = _field(data, "reason", str, "a string or null", required=False, max_chars=32)
    if reason is not None and reason not in FALLBACK_REASONS:
        known = ", ".join(sorted(FALLBACK_REASONS))
        raise ProtocolError("invalid-field", f"'reason' must be one of {known}", "jpeg")
    return JpegRequest(quality, max_width, None if max_fps is None else float(max_fps), reason)


#: Bounds of a viewer's report: beyond them it is a broken or lying client, refused.
MAX_REPORTED_FPS = 240.0
MAX_REPORTED_FREEZES = 1000
MAX_REPORTED_AGE_MS = 3_600_000.0


def _parse_viewer_stats(data: Mapping[str, Any]) -> ViewerStats:
    kind = "viewer-stats"
    fps = _field(data, "fps", (int, float), "a number", required=True)
    if not 0 <= fps <= MAX_REPORTED_FPS:  # also refuses NaN
        raise ProtocolError("invalid-field", f"'fps' must be 0-{MAX_REPORTED_FPS:g}", kind)
    freezes = _field(data, "freezes", int, "an integer", required=True)
    if not 0 <= freezes <= MAX_REPORTED_FREEZES:
        raise ProtocolError("invalid-field", f"'freezes' must be 0-{MAX_REPORTED_FREEZES}", kind)
    age = _field(data, "pictureAgeMs", (int, float), "a number or null", required=False)
    # A few ms below zero is two clocks that disagree (the page's and the capture's): clamp.
    if age is not None and not -1000 <= age <= MAX_REPORTED_AGE_MS:
        raise ProtocolError(
            "invalid-field", f"'pictureAgeMs' must be -1000-{MAX_REPORTED_AGE_MS:g}", kind
        )
    return ViewerStats(float(fps), freezes, None if age is None else max(0.0, float(age)))


_PARSERS: dict[str, Callable[[Mapping[str, Any]], ClientMessage]] = {
    "offer": _parse_offer,
    "candidate": _parse_candidate,
    "bye": lambda data: Bye(),
    "jpeg": _parse_jpeg,
    "ack": lambda data: Ack(),
    "keyframe": lambda data: KeyframeRequest(),
    "viewer-stats": _parse_viewer_stats,
}


def parse_message(text: str | bytes) -> ClientMessage:
    """Parse one client message.

    Raises:
        ProtocolError: the message is not valid; nothing else is raised.
    """
    if isinstance(text, bytes):
        raise ProtocolError("binary-not-allowed", "signaling messages are JSON text")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError("too-large", f"messages are limited to {MAX_MESSAGE_CHARS} characters")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad-json", f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("bad-message", "a message must be a JSON object")
    message_type = data.get("type")
    if not isinstance(message_type, str):
        raise ProtocolError("bad-message", "a message needs a string 'type'")
    parser = _PARSERS.get(message_type)
    if parser is None:
        shown = message_type if len(message_type) <= 32 else message_type[:32] + "…"
        raise ProtocolError("unknown-type", f"unknown message type {shown!r}", None)
    return parser(data)


def _dump(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def config_message(
    *, viewer_id: str, ice_servers: Sequence[Mapping[str, Any]], codecs: Sequence[str],
    ice_transport_policy: str, modes: Sequence[str],
) -> str:  # fmt: skip
    return _dump(
        {
            "type": "config",
            "viewerId": viewer_id,
            "iceServers": list(ice_servers),
            "iceTransportPolicy": ice_transport_policy,
            "codecs": list(codecs),
            "modes": list(modes),
        }
    )


def answer_message(sdp: str, codec: str) -> str:
    return _dump({"type": "answer", "sdp": sdp, "codec": codec})


def rung_message(rung: Mapping[str, Any]) -> str:
    """The viewer's rung of the ladder changed (or is first known): for the page's overlay."""
    return _dump({"type": "rung", **rung})


def error_message(code: str, message: str, in_reply_to: str | None = None) -> str:
    return _dump({"type": "error", "code": code, "message": message, "inReplyTo": in_reply_to})


def bye_message(reason: str) -> str:
    return _dump({"type": "bye", "reason": reason})
