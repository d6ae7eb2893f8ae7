"""Offers and remote candidates, checked before aiortc or aioice see them (pure: no I/O).

aiortc answers whatever an offer holds (a section per m-line, each with its own transceiver and
codecs) and aioice sends connectivity checks to every address and port a client names, with the
client's ``ice-ufrag`` inside, resolving mDNS names on the way; neither has a hook to refuse.
So peercam filters first:

- :func:`check_offer` accepts exactly one video section and at most one audio section (as WHEP
  players send; the server has no audio, so the section must be ``recvonly`` or ``inactive`` and
  aiortc answers it ``inactive``), validates ``ice-ufrag``/``ice-pwd`` as RFC 8839 §5.4 says,
  bounds the ``a=candidate`` lines, and returns the offer with only the candidates ICE may use.
- :func:`parse_candidate` accepts a UDP candidate whose address is a unicast IP literal of a
  scope a viewer can have, on a port an ICE agent can have.
- :class:`CandidateBudget` is one viewer's count of remote candidates (the offer's, then the
  trickled ones): at most :data:`MAX_REMOTE_CANDIDATES` distinct addresses ever get checks.

Every refusal is a :class:`~webrtc.errors.NegotiationError` with the wire code; messages never
echo more than a few characters of what the client sent. The limits are listed in
``docs/design.md`` ("SDP and ICE limits").
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum

from .errors import NegotiationError

#: m-lines in an offer: one video, plus one audio section as WHEP players send.
MAX_SECTIONS = 2
#: ``a=candidate`` lines in an offer. A browser that waits for gathering lists a few per
#: interface (UDP and TCP, IPv4 and IPv6, mDNS or not, STUN, TURN); more is an attack.
MAX_OFFER_CANDIDATE_LINES = 32
#: Distinct remote candidate addresses per viewer that get connectivity checks. A browser needs
#: a host, a server-reflexive and a relay candidate or two per interface; the server also learns
#: the viewer's address peer-reflexively from the viewer's own checks.
MAX_REMOTE_CANDIDATES = 16
#: Lowest remote port: below it are services (DNS 53, NTP 123, SNMP 161…), never an ICE agent's
#: ephemeral port, and a check sent there is a packet into someone else's service.
MIN_REMOTE_PORT = 1024
#: RTP payload types per section (the whole dynamic and static range is 0-127).
MAX_PAYLOAD_TYPES = 128
#: RFC 8839 §5.4: ``ice-ufrag = 4*256ice-char``, ``ice-pwd = 22*256ice-char``.
UFRAG_CHARS = (4, 256)
PWD_CHARS = (22, 256)
#: Audio codecs aiortc can negotiate (an audio section without one makes aiortc refuse), by
#: their a=rtpmap names: aiortc does not know static payload types without one.
AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma", "g722"})

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]{1,32}")
_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _shown(value: str, limit: int = 24) -> str:
    """A client's text, short enough to quote in an error."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _refuse_candidate(reason: str) -> NegotiationError:
    return NegotiationError("invalid-candidate", reason)


class Use(Enum):
    """What becomes of a candidate that parses."""

    CHECK = "check"  # a UDP candidate of component 1: it gets connectivity checks
    IGNORE = "ignore"  # TCP, or RTCP's component 2: nothing local pairs with it, no traffic


@dataclass(frozen=True, slots=True)
class RemoteCandidate:
    """A remote candidate that passed :func:`parse_candidate`."""

    text: str  # without the "candidate:" prefix, as aiortc's candidate_from_sdp takes it
    address: str  # canonical form
    port: int
    kind: str  # host, srflx or relay
    use: Use

    @property
    def target(self) -> tuple[str, int]:
        return (self.address, self.port)


def parse_candidate(text: str, *, allow_loopback: bool) -> RemoteCandidate:
    """Check one candidate (RFC 8839 §5.1), with or without its ``candidate:`` prefix.

    ``allow_loopback``: the viewer itself is on loopback (signals from 127.0.0.0/8 or ::1), so a
    loopback candidate names the viewer; from anyone else it names the server's own services.

    Raises:
        NegotiationError: ``invalid-candidate`` with the reason.
    """
    value = text.removeprefix("a=").removeprefix("candidate:")
    fields = value.split()
    if len(fields) < 8 or fields[6] != "typ":
        raise _refuse_candidate("the candidate does not parse (RFC 8839: foundation component"
                                " transport priority address port typ type)")  # fmt: skip
    foundation, component, transport, priority, host, port_text, _typ, kind = fields[:8]
    if not (len(foundation) <= 32 and _ICE_CHARS.fullmatch(foundation)):
        raise _refuse_candidate(f"bad foundation {_shown(foundation)}")
    if not (component.isascii() and component.isdigit() and len(component) <= 3):
        raise _refuse_candidate(f"bad component {_shown(component)}")
    if not (priority.isascii() and priority.isdigit() and 1 <= int(priority[:11]) < 2**32):
        raise _refuse_candidate(f"bad priority {_shown(priority)}")
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text[:6]) <= 65535):
        raise _refuse_candidate(f"the port must be 1-65535, not {_shown(port_text, 8)}")
    port = int(port_text)
    if transport.lower() == "tcp" or (transport.lower() == "udp" and component == "2"):
        # Browsers signal these routinely; aioice has no local TCP or component-2 candidate to
        # pair them with, so they cause no traffic: accepted and left out, without an error.
        return RemoteCandidate(value, host, port, kind, Use.IGNORE)
    if transport.lower() != "udp":
        raise _refuse_candidate(f"transport {_shown(transport, 8)}: only UDP is used")
    if component != "1":
        raise _refuse_candidate(f"component {component}: RTP and RTCP share component 1")
    if kind == "prflx":
        raise _refuse_candidate("peer-reflexive candidates are learnt from checks, not signalled")
    if kind not in ("host", "srflx", "relay"):
        raise _refuse_candidate(f"unknown candidate type {_shown(kind, 12)}")
    address = check_address(host, allow_loopback=allow_loopback)
    if port < MIN_REMOTE_PORT:
        raise _refuse_candidate(f"port {port} is below 1024: a service's port, not an ICE agent's")
    return RemoteCandidate(value, address, port, kind, Use.CHECK)


def check_address(host: str, *, allow_loopback: bool) -> str:
    """The canonical form of a remote candidate's address, if checks may go there.

    Raises:
        NegotiationError: ``invalid-candidate``: not an IP literal, or not a unicast address of a
        scope a viewer can have.
    """
    if host.lower().endswith(".local"):
        raise _refuse_candidate(
            f"mDNS name {_shown(host)} is not resolved: the server learns the viewer's address"
            " from the viewer's own checks"
        )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _refuse_candidate(
            f"only IP addresses are used: hostname {_shown(host)} is not resolved"
        ) from None
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        raise _refuse_candidate(f"{ip} is an unspecified address")
    if ip.is_multicast:
        raise _refuse_candidate(f"{ip} is a multicast address")
    if ip.version == 4 and (ip == ipaddress.IPv4Address("255.255.255.255") or ip.is_reserved):
        raise _refuse_candidate(f"{ip} is a broadcast or reserved address")
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            raise _refuse_candidate(f"{ip} is an IPv4-mapped address: send the IPv4 address")
        if ip.scope_id is not None or ip.is_link_local or ip.is_site_local:
            # fe80::/10 needs a zone (an interface of ours) that a viewer cannot name.
            raise _refuse_candidate(f"{ip} is a link-local IPv6 address, unusable without a zone")
    if ip.is_loopback and not allow_loopback:
        raise _refuse_candidate(f"{ip} is a loopback address: it names this server, not a viewer")
    return str(ip)


def check_ice_credentials(ufrag: str, pwd: str) -> None:
    """RFC 8839 §5.4 for ``ice-ufrag`` and ``ice-pwd`` (aiortc and aioice check neither).

    Raises:
        NegotiationError: ``invalid-sdp``, naming the attribute and its length.
    """
    for name, value, (low, high) in (
        ("ice-ufrag", ufrag, UFRAG_CHARS),
        ("ice-pwd", pwd, PWD_CHARS),
    ):
        if not (low <= len(value) <= high and _ICE_CHARS.fullmatch(value)):
            raise NegotiationError(
                "invalid-sdp",
                f"{name} must be {low}-{high} characters of A-Z a-z 0-9 + / (RFC 8839),"
                f" not {len(value)} characters",
            )


@dataclass(frozen=True, slots=True)
class CheckedOffer:
    """An offer that passed :func:`check_offer`."""

    sdp: str  # the offer with only the candidates that get checks
    mids: tuple[str, ...]  # of its sections, in m-line order
    video_mid: str
    candidates: tuple[RemoteCandidate, ...]  # in ``sdp``, at most MAX_REMOTE_CANDIDATES
    left_out: tuple[str, ...]  # why each other a=candidate line was left out


@dataclass
class _Section:
    kind: str
    formats: list[str]
    lines: list[str]
    mid: str | None = None
    direction: str = "sendrecv"  # RFC 4566's default
    ufrag: str | None = None
    pwd: str | None = None
    codecs: set[str] | None = None


def _attribute(line: str) -> tuple[str, str]:
    name, _, value = line[2:].partition(":")
    return name, value.strip()


def check_offer(sdp: str, *, allow_loopback: bool) -> CheckedOffer:
    """Check an offer's structure, ICE credentials and candidates before any peer exists.

    Raises:
        NegotiationError: ``unsupported-media`` (sections other than one video and at most one
        audio, or audio that would be sent), ``invalid-sdp`` (anything else wrong).
    """
    lines = sdp.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != "v=0":
        raise NegotiationError("invalid-sdp", "an SDP description starts with v=0")
    m_lines = sum(1 for line in lines if line.startswith("m="))
    if m_lines > MAX_SECTIONS:
        raise NegotiationError(
            "unsupported-media",
            f"the offer has {m_lines} sections: one video section is served, plus at most one"
            " audio section (answered inactive)",
        )
    candidate_lines = sum(1 for line in lines if line.startswith("a=candidate:"))
    if candidate_lines > MAX_OFFER_CANDIDATE_LINES:
        raise NegotiationError(
            "invalid-sdp",
            f"the offer has {candidate_lines} candidates (at most {MAX_OFFER_CANDIDATE_LINES})",
        )
    head: list[str] = []
    sections: list[_Section] = []
    session_ufrag: list[str] = []
    session_pwd: list[str] = []
    bundle: list[str] = []
    for line in lines:
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise NegotiationError("invalid-sdp", f"not an SDP line: {_shown(line)}")
        if line.startswith("m="):
            fields = line[2:].split()
            if len(fields) < 4:
                raise NegotiationError("invalid-sdp", f"bad m-line {_shown(line)}")
            sections.append(_Section(fields[0], fields[3:], [line]))
            continue
        name, value = _attribute(line) if line.startswith("a=") else ("", "")
        if not sections:
            if name == "ice-ufrag":
                session_ufrag.append(value)
            elif name == "ice-pwd":
                session_pwd.append(value)
            elif name == "group" and value.startswith("BUNDLE"):
                bundle = value.split()[1:]
            if name not in ("candidate", "end-of-candidates"):
                head.append(line)
            continue
        section = sections[-1]
        section.lines.append(line)
        if name == "mid":
            if section.mid is not None:
                raise NegotiationError("invalid-sdp", "a section has two a=mid lines")
            section.mid = value
        elif name in _DIRECTIONS and not value:
            section.direction = name
        elif name == "ice-ufrag":
            if section.ufrag is not None:
                raise NegotiationError("invalid-sdp", "a section has two ice-ufrag lines")
            section.ufrag = value
        elif name == "ice-pwd":
            if section.pwd is not None:
                raise NegotiationError("invalid-sdp", "a section has two ice-pwd lines")
            section.pwd = value
        elif name == "rtpmap":
            codec = value.partition(" ")[2].partition("/")[0].lower()
            section.codecs = (section.codecs or set()) | {codec}
    if len(session_ufrag) > 1 or len(session_pwd) > 1:
        raise NegotiationError("invalid-sdp", "the session has two ice-ufrag or ice-pwd lines")
    _check_sections(sections, bundle)
    for section in sections:
        ufrag = section.ufrag if section.ufrag is not None else next(iter(session_ufrag), None)
        pwd = section.pwd if section.pwd is not None else next(iter(session_pwd), None)
        if ufrag is None or pwd is None:
            raise NegotiationError("invalid-sdp", "a section has no ice-ufrag or ice-pwd")
        check_ice_credentials(ufrag, pwd)
    return _with_usable_candidates(head, sections, allow_loopback=allow_loopback)


def _check_sections(sections: list[_Section], bundle: list[str]) -> None:
    kinds = [s.kind for s in sections]
    if "video" not in kinds:
        raise NegotiationError("invalid-sdp", "the offer has no video section")
    if kinds.count("video") > 1 or kinds.count("audio") > 1:
        raise NegotiationError(
            "unsupported-media", "one video section is served, plus at most one audio section"
        )
    for section in sections:
        if section.kind not in ("video", "audio"):
            raise NegotiationError(
                "unsupported-media", f"a {_shown(section.kind, 12)} section is not served"
            )
        if section.mid is None or not _TOKEN.fullmatch(section.mid):
            raise NegotiationError("invalid-sdp", "every section needs an a=mid of 1-32 tokens")
        if len(section.formats) > MAX_PAYLOAD_TYPES or not all(
            f.isascii() and f.isdigit() and int(f[:4]) <= 127 for f in section.formats
        ):
            raise NegotiationError(
                "invalid-sdp", "RTP payload types are 0-127, at most 128 of them"
            )
        if section.kind == "video" and section.direction not in ("recvonly", "sendrecv"):
            raise NegotiationError(
                "invalid-sdp", f"the video section is {section.direction}: it must receive"
            )
        if section.kind == "audio":
            if section.direction not in ("recvonly", "inactive"):
                raise NegotiationError(
                    "unsupported-media",
                    f"the audio section is {section.direction}: this server sends no audio and"
                    " takes none (recvonly or inactive only)",
                )
            if not (section.codecs or set()) & AUDIO_CODECS:
                raise NegotiationError(
                    "unsupported-media", "the audio section has none of opus, PCMU, PCMA, G722"
                )
    mids = [s.mid for s in sections]
    if len(set(mids)) != len(mids):
        raise NegotiationError("invalid-sdp", "two sections have the same a=mid")
    if len(sections) > 1 and sorted(bundle) != sorted(str(m) for m in mids):
        # Unbundled, aiortc would gather and check on a second transport for a silent section.
        raise NegotiationError("invalid-sdp", "the audio and video sections must be bundled")


def _with_usable_candidates(
    head: list[str], sections: list[_Section], *, allow_loopback: bool
) -> CheckedOffer:
    """The offer rebuilt with only the candidates that get checks (and no end-of-candidates:
    as for trickled candidates, aioice would fail at once when the viewer's only usable
    address is still to be learnt peer-reflexively; the connect timeout ends such a peer)."""
    out = list(head)
    kept: list[RemoteCandidate] = []
    left_out: list[str] = []
    for section in sections:
        for line in section.lines:
            if line == "a=end-of-candidates":
                continue
            if not line.startswith("a=candidate:"):
                out.append(line)
                continue
            try:
                candidate = parse_candidate(line, allow_loopback=allow_loopback)
            except NegotiationError as exc:
                left_out.append(str(exc))
                continue
            if candidate.use is Use.IGNORE:
                continue
            if candidate.target in {c.target for c in kept}:
                continue  # the same address again: aioice ignores it too
            if len(kept) >= MAX_REMOTE_CANDIDATES:
                left_out.append(f"more than {MAX_REMOTE_CANDIDATES} candidates")
                continue
            kept.append(candidate)
            out.append(line)
    video = next(s for s in sections if s.kind == "video")
    return CheckedOffer(
        sdp="\r\n".join(out) + "\r\n",
        mids=tuple(str(s.mid) for s in sections),
        video_mid=str(video.mid),
        candidates=tuple(kept),
        left_out=tuple(left_out),
    )


class CandidateBudget:
    """One viewer's remote candidates: those of its offer, then the trickled ones."""

    def __init__(
        self, offer: CheckedOffer, *, allow_loopback: bool, limit: int = MAX_REMOTE_CANDIDATES
    ) -> None:
        self._mids = offer.mids
        self._allow_loopback = allow_loopback
        self._limit = limit
        self._targets = {c.target for c in offer.candidates}

    def __len__(self) -> int:
        return len(self._targets)

    def admit(
        self, candidate: str | None, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> str | None:
        """The candidate to hand to ICE (without ``candidate:``), or None when there is
        nothing to add (end of candidates, or one that causes no traffic).

        Raises:
            NegotiationError: ``invalid-candidate`` with the reason, including "too many
            candidates" beyond the limit.
        """
        if sdp_mid is not None and sdp_mid not in self._mids:
            raise _refuse_candidate(f"unknown sdpMid {_shown(sdp_mid)}")
        if sdp_mline_index is not None and (
            sdp_mline_index >= len(self._mids)
            or (sdp_mid is not None and self._mids[sdp_mline_index] != sdp_mid)
        ):
            raise _refuse_candidate(f"unknown sdpMLineIndex {sdp_mline_index}")
        if not candidate:
            return None
        parsed = parse_candidate(candidate, allow_loopback=self._allow_loopback)
        if parsed.use is Use.IGNORE:
            return None
        if parsed.target not in self._targets:
            if len(self._targets) >= self._limit:
                raise _refuse_candidate(f"too many candidates: at most {self._limit} per viewer")
            self._targets.add(parsed.target)
        return parsed.text


def is_loopback(remote: str) -> bool:
    """Whether a viewer's signaling address (aiohttp's ``request.remote``) is loopback."""
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False
