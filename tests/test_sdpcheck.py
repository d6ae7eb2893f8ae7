"""The offer and candidate checks (webrtc/sdpcheck.py), pure: no server, no sockets."""

from __future__ import annotations

import ipaddress

import pytest
from aiortc.sdp import SessionDescription, candidate_from_sdp
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile_sdp import host_candidate, offer
from webrtc import sdpcheck
from webrtc.errors import NegotiationError


def _refused(code: str, sdp: str, *, allow_loopback: bool = True) -> str:
    with pytest.raises(NegotiationError) as caught:
        sdpcheck.check_offer(sdp, allow_loopback=allow_loopback)
    assert caught.value.code == code, str(caught.value)
    return str(caught.value)


def test_a_plain_offer_passes_with_its_candidate() -> None:
    """The offer aiortc and browsers send: unchanged but for what ICE must not see."""
    checked = sdpcheck.check_offer(offer(candidates=[host_candidate(50_000)]), allow_loopback=True)
    assert checked.mids == ("0",)
    assert checked.video_mid == "0"
    assert [c.target for c in checked.candidates] == [("127.0.0.1", 50_000)]
    assert checked.left_out == ()
    assert SessionDescription.parse(checked.sdp).media[0].ice_candidates[0].port == 50_000


@pytest.mark.parametrize(
    ("sdp", "code", "why"),
    [
        (offer(videos=135, compact=True), "unsupported-media", "135 sections"),
        (offer(videos=2), "unsupported-media", "one video section"),
        (offer(videos=0, audio="recvonly"), "invalid-sdp", "no video"),
        (offer(audio="sendrecv"), "unsupported-media", "sends no audio"),
        (offer(audio="sendonly"), "unsupported-media", "sends no audio"),
        (offer(audio="recvonly").replace("opus/48000/2", "AMR/8000"), "unsupported-media", "opus"),
        (
            offer(audio="recvonly").replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0"),
            "invalid-sdp",
            "bundled",
        ),
        (offer().replace("m=video", "m=application"), "invalid-sdp", "no video"),
        (offer(audio="recvonly").replace("m=audio", "m=application"), "unsupported-media", "not"),
        (offer().replace("a=recvonly", "a=sendonly"), "invalid-sdp", "must receive"),
        (offer().replace("a=mid:0\r\n", ""), "invalid-sdp", "a=mid"),
        (offer().replace("a=mid:0", "a=mid:0\r\na=mid:1"), "invalid-sdp", "two a=mid"),
        (offer().replace("96\r\n", "96 x\r\n", 1), "invalid-sdp", "payload types"),
        (offer().replace("96\r\n", "96 300\r\n", 1), "invalid-sdp", "payload types"),
        (offer(ufrag="abc"), "invalid-sdp", "ice-ufrag"),
        (offer(ufrag="a" * 257), "invalid-sdp", "ice-ufrag"),
        (offer(ufrag="ab-d"), "invalid-sdp", "ice-ufrag"),
        (offer(pwd="a" * 21), "invalid-sdp", "ice-pwd"),
        (offer(pwd="a" * 257), "invalid-sdp", "ice-pwd"),
        (offer().replace("a=ice-pwd:", "a=x-pwd:"), "invalid-sdp", "no ice-ufrag or ice-pwd"),
        (
            offer().replace("a=ice-ufrag:abcd", "a=ice-ufrag:abcd\r\na=ice-ufrag:efgh"),
            "invalid-sdp",
            "two ice-ufrag",
        ),
        (
            offer(candidates=[host_candidate(40_000 + n, n=n) for n in range(33)]),
            "invalid-sdp",
            "33 candidates",
        ),
        ("v=1\r\n", "invalid-sdp", "v=0"),
        (offer() + "garbage\r\n", "invalid-sdp", "not an SDP line"),
    ],
)
def test_offers_that_are_refused(sdp: str, code: str, why: str) -> None:
    """Each shape is refused with its typed code and a reason."""
    assert why in _refused(code, sdp)


@pytest.mark.parametrize(("ufrag", "pwd"), [("a" * 4, "b" * 22), ("+/Az" * 64, "09+/" * 64)])
def test_ice_credentials_at_the_rfc_8839_bounds_pass(ufrag: str, pwd: str) -> None:
    """4 and 256 characters of ufrag, 22 and 256 of password: the RFC's bounds, inclusive."""
    sdpcheck.check_offer(offer(ufrag=ufrag, pwd=pwd), allow_loopback=True)


def test_session_level_credentials_count_for_every_section() -> None:
    """Compact offers name ufrag and pwd once, at session level: that is valid SDP."""
    checked = sdpcheck.check_offer(offer(compact=True, audio="inactive"), allow_loopback=True)
    assert checked.mids == ("0", "1")
    _refused("invalid-sdp", offer(compact=True, ufrag="x" * 300))


def test_a_whep_offer_with_audio_first_names_both_mids() -> None:
    """WHEP players may put audio first: both mids are known, video is found by kind."""
    sdp = offer(audio="recvonly")
    video, audio = sdp.split("m=video")[1].split("m=audio")
    reordered = sdp.split("m=video")[0] + "m=audio" + audio + "m=video" + video
    checked = sdpcheck.check_offer(
        reordered.replace("a=mid:0", "a=mid:v").replace("BUNDLE 0", "BUNDLE v"), allow_loopback=True
    )
    assert checked.video_mid == "v"
    assert set(checked.mids) == {"v", "1"}


def test_offer_candidates_that_ice_must_not_use_are_left_out() -> None:
    """A browser's complete offer carries mDNS names and TCP candidates: not an error, but
    only usable ones reach aiortc, no end-of-candidates either."""
    sdp = offer(
        candidates=[
            "1 1 udp 2122260223 0b6e1d7c-5e5c-4b86-9f8a-3a2d1c0b0a09.local 54321 typ host",
            "2 1 tcp 1518280447 192.0.2.10 9 typ host tcptype active",
            host_candidate(50_000, "192.0.2.10", n=3),
            host_candidate(50_000, "192.0.2.10", n=4),  # the same address again
            host_candidate(60_000, "127.0.0.1", n=5),
        ]
    ).replace("a=rtcp-mux", "a=rtcp-mux\r\na=end-of-candidates")
    checked = sdpcheck.check_offer(sdp, allow_loopback=False)
    assert [c.target for c in checked.candidates] == [("192.0.2.10", 50_000)]
    assert len(checked.left_out) == 2  # the mDNS name, and loopback from a remote viewer
    assert "mDNS" in checked.left_out[0]
    assert "loopback" in checked.left_out[1]
    assert "end-of-candidates" not in checked.sdp
    assert ".local" not in checked.sdp
    assert checked.sdp.count("a=candidate:") == 1


def test_the_offer_keeps_at_most_the_per_viewer_number_of_candidates() -> None:
    limit = sdpcheck.MAX_REMOTE_CANDIDATES
    many = [host_candidate(40_000 + n, "192.0.2.1", n=n) for n in range(limit + 4)]
    checked = sdpcheck.check_offer(offer(candidates=many), allow_loopback=False)
    assert len(checked.candidates) == limit
    assert checked.sdp.count("a=candidate:") == limit
    assert len(checked.left_out) == 4


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        ("garbage", "does not parse"),
        ("1 1 udp 1 127.0.0.1 50000 host x", "does not parse"),
        (host_candidate(99_999), "1-65535"),
        (host_candidate(0), "1-65535"),
        ("1 1 udp 2130706431 127.0.0.1 -5 typ host", "1-65535"),
        ("1 1 udp 2130706431 127.0.0.1 ５００００ typ host", "1-65535"),
        (host_candidate(1023), "below 1024"),
        ("1 1 udp 0 127.0.0.1 50000 typ host", "priority"),
        ("1 1 udp 4294967296 127.0.0.1 50000 typ host", "priority"),
        ("1 1000 udp 1 127.0.0.1 50000 typ host", "component"),
        ("1 3 udp 1 127.0.0.1 50000 typ host", "component 3"),
        ("a-b 1 udp 1 127.0.0.1 50000 typ host", "foundation"),
        ("1 1 sctp 1 127.0.0.1 50000 typ host", "only UDP"),
        ("1 1 udp 1 127.0.0.1 50000 typ prflx", "peer-reflexive"),
        ("1 1 udp 1 127.0.0.1 50000 typ magic", "unknown candidate type"),
        (host_candidate(50_000, "x.local"), "mDNS"),
        (host_candidate(50_000, "camera.example.org"), "hostname"),
        (host_candidate(50_000, "0.0.0.0"), "unspecified"),
        (host_candidate(50_000, "0.1.2.3"), "unspecified"),
        (host_candidate(50_000, "::"), "unspecified"),
        (host_candidate(50_000, "255.255.255.255"), "broadcast"),
        (host_candidate(50_000, "240.0.0.1"), "reserved"),
        (host_candidate(50_000, "224.0.0.251"), "multicast"),
        (host_candidate(50_000, "ff02::fb"), "multicast"),
        (host_candidate(50_000, "fe80::1"), "link-local"),
        (host_candidate(50_000, "fe80::1%eth0"), "link-local"),
        (host_candidate(50_000, "::ffff:192.0.2.1"), "IPv4-mapped"),
    ],
)
def test_candidates_that_are_refused(candidate: str, why: str) -> None:
    """Each is an invalid-candidate with a reason that says which rule."""
    with pytest.raises(NegotiationError) as caught:
        sdpcheck.parse_candidate("candidate:" + candidate, allow_loopback=True)
    assert caught.value.code == "invalid-candidate"
    assert why in str(caught.value), str(caught.value)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "::1"])
def test_loopback_candidates_only_from_a_loopback_viewer(address: str) -> None:
    """From a remote viewer, 127.0.0.1 names the server's own services."""
    candidate = host_candidate(50_000, address)
    assert sdpcheck.parse_candidate(candidate, allow_loopback=True).use is sdpcheck.Use.CHECK
    with pytest.raises(NegotiationError, match="loopback"):
        sdpcheck.parse_candidate(candidate, allow_loopback=False)


@pytest.mark.parametrize(
    "candidate",
    [
        "842163049 1 udp 1677729535 203.0.113.7 61234 typ srflx raddr 192.168.1.5 rport 61234"
        " generation 0 ufrag 8hhY network-cost 999",
        "1 1 UDP 2122260223 2001:db8::5 50000 typ host",
        "3 1 udp 41885439 198.51.100.2 49170 typ relay raddr 203.0.113.7 rport 61234",
        host_candidate(50_000, "169.254.10.20"),  # a board on a direct cable, no DHCP
        host_candidate(65_535, "10.0.0.2"),
    ],
)
def test_browser_candidates_pass_and_aiortc_parses_them(candidate: str) -> None:
    parsed = sdpcheck.parse_candidate("candidate:" + candidate, allow_loopback=False)
    assert parsed.use is sdpcheck.Use.CHECK
    assert candidate_from_sdp(parsed.text).port == parsed.port


@pytest.mark.parametrize(
    "candidate",
    [
        "2 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active",
        "2 1 tcp 1518280447 0b6e1d7c.local 9 typ host tcptype active",
        "1 2 udp 2122260222 192.168.1.5 50001 typ host",
    ],
)
def test_tcp_and_rtcp_candidates_are_ignored_without_an_error(candidate: str) -> None:
    """Browsers send them; nothing local pairs with them, so they cause no traffic."""
    parsed = sdpcheck.parse_candidate(candidate, allow_loopback=False)
    assert parsed.use is sdpcheck.Use.IGNORE


def test_the_budget_counts_distinct_addresses_across_offer_and_trickle() -> None:
    """The per-viewer cap holds however candidates arrive; repeats cost nothing."""
    checked = sdpcheck.check_offer(
        offer(candidates=[host_candidate(40_000, "192.0.2.1")]), allow_loopback=False
    )
    budget = sdpcheck.CandidateBudget(checked, allow_loopback=False, limit=3)
    assert len(budget) == 1
    first = host_candidate(40_001, "192.0.2.1")
    assert budget.admit("candidate:" + first, "0", 0) == first
    assert budget.admit("candidate:" + first, None, None) == first  # again: not counted
    assert budget.admit(host_candidate(40_000, "192.0.2.1"), "0", None) is not None  # offer's
    assert budget.admit(host_candidate(40_002, "192.0.2.1"), None, 0) is not None
    assert len(budget) == 3
    with pytest.raises(NegotiationError, match="too many candidates"):
        budget.admit(host_candidate(40_003, "192.0.2.1"), "0", 0)
    assert budget.admit("2 1 tcp 1 192.0.2.9 9 typ host tcptype active", "0", 0) is None
    assert budget.admit(None, "0", 0) is None  # end of candidates
    assert budget.admit("", None, None) is None
    assert len(budget) == 3


def test_the_budget_knows_every_section_of_the_offer() -> None:
    """Browsers trickle for the first bundled section, which may be audio."""
    budget = sdpcheck.CandidateBudget(
        sdpcheck.check_offer(offer(audio="recvonly"), allow_loopback=True), allow_loopback=True
    )
    assert budget.admit(host_candidate(50_000), "1", 1) is not None
    for mid, index in (("2", None), (None, 2), ("0", 1), ("x" * 40, None)):
        with pytest.raises(NegotiationError) as caught:
            budget.admit(host_candidate(50_001), mid, index)
        assert caught.value.code == "invalid-candidate"


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("192.0.2.1", False), ("?", False), ("", False)],
)
def test_is_loopback(remote: str, loopback: bool) -> None:
    assert sdpcheck.is_loopback(remote) is loopback


# -- generated input ---------------------------------------------------------------------------

_OFFER_LINES = offer(audio="recvonly", candidates=[host_candidate(50_000)]).split("\r\n")[:-1]
_HOSTILE_LINES = [
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "m=audio 9 UDP/TLS/RTP/SAVPF 0", "m=application 9 x 1",
    "a=mid:0", "a=mid:1", "a=sendrecv", "a=inactive", "a=ice-ufrag:" + "u" * 300,
    "a=ice-pwd:short", "a=group:BUNDLE 0", "a=end-of-candidates", "a=rtpmap:96 VP8/90000",
    "a=candidate:" + host_candidate(99_999), "a=candidate:x.local", "a=candidate:",
    "a=candidate:1 1 udp 1 ::ffff:1.2.3.4 5000 typ host", "c=IN IP4 0.0.0.0", "a=", "m=",
]  # fmt: skip
_addresses = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["x.local", "example.org", "::ffff:1.2.3.4", "fe80::1%1", "", "1.2.3"]),
)
_candidates = st.builds(
    lambda f, c, t, p, a, port, kind, rest: f"{f} {c} {t} {p} {a} {port} typ {kind}{rest}",
    st.sampled_from(["1", "abc+/", "x" * 40, "é"]),
    st.sampled_from(["1", "2", "0", "999", "1a"]),
    st.sampled_from(["udp", "UDP", "tcp", "sctp"]),
    st.integers(min_value=-1, max_value=2**33).map(str),
    _addresses,
    st.integers(min_value=-1, max_value=200_000).map(str),
    st.sampled_from(["host", "srflx", "relay", "prflx", "x"]),
    st.sampled_from(["", " raddr 0.0.0.0 rport 0", " generation 0", " tcptype active"]),
)


@given(st.one_of(_candidates, st.text(max_size=120)))
@settings(max_examples=600, deadline=None)
def test_any_candidate_is_refused_typed_or_is_safe_to_check(candidate: str) -> None:
    """Whatever the text: a NegotiationError, or a candidate aiortc parses that names a
    unicast address on a port 1024-65535 (nothing else ever reaches aioice)."""
    try:
        parsed = sdpcheck.parse_candidate(candidate, allow_loopback=False)
    except NegotiationError as exc:
        code, message = exc.code, str(exc)
    else:
        code = message = ""
    if code:
        assert code == "invalid-candidate"
        assert len(message) < 200
        return
    if parsed.use is sdpcheck.Use.IGNORE:
        return
    assert sdpcheck.MIN_REMOTE_PORT <= parsed.port <= 65535
    aiortc_view = candidate_from_sdp(parsed.text)
    assert aiortc_view.port == parsed.port
    assert ipaddress.ip_address(aiortc_view.ip) == ipaddress.ip_address(parsed.address)
    assert sdpcheck.check_address(parsed.address, allow_loopback=False) == parsed.address


@given(
    st.lists(st.sampled_from(_OFFER_LINES + _HOSTILE_LINES), max_size=40),
    st.lists(_candidates, max_size=40),
)
@settings(max_examples=300, deadline=None)
def test_any_offer_is_refused_typed_or_is_one_aiortc_can_take(
    lines: list[str], candidates: list[str]
) -> None:
    """Mutated offers: a NegotiationError, or an offer aiortc parses with one video section,
    at most one audio section and only checked candidates."""
    sdp = "\r\n".join(["v=0", *lines, *(f"a=candidate:{c}" for c in candidates)]) + "\r\n"
    try:
        checked = sdpcheck.check_offer(sdp, allow_loopback=False)
    except NegotiationError as exc:
        code, message = exc.code, str(exc)
    else:
        code = message = ""
    if code:
        assert code in ("invalid-sdp", "unsupported-media")
        assert len(message) < 200
        return
    kinds = [m.kind for m in SessionDescription.parse(checked.sdp).media]
    assert kinds.count("video") == 1
    assert set(kinds) <= {"video", "audio"}
    assert len(checked.candidates) <= sdpcheck.MAX_REMOTE_CANDIDATES
    assert checked.sdp.count("a=candidate:") == len(checked.candidates)
    assert "a=end-of-candidates" not in checked.sdp
