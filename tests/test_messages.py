"""signaling/messages.py: text in, typed message or ProtocolError out; typed message out, JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from signaling.messages import (
    MAX_CANDIDATE_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_SDP_CHARS,
    Bye,
    Candidate,
    Offer,
    ProtocolError,
    answer_message,
    bye_message,
    config_message,
    error_message,
    parse_message,
)

SDP = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CANDIDATE = "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx"


def dumps(data: object) -> str:
    return json.dumps(data)


def padded(data: dict[str, Any], total_chars: int) -> str:
    """``data`` as JSON with an ignored "pad" field making it exactly ``total_chars`` long."""
    bare = dumps({**data, "pad": ""})
    text = dumps({**data, "pad": "x" * (total_chars - len(bare))})
    assert len(text) == total_chars
    return text


# --- bad input: (text, code, in_reply_to) --------------------------------------------------

NOT_A_MESSAGE = [
    pytest.param(b'{"type": "bye"}', "binary-not-allowed", id="bytes"),
    pytest.param("", "bad-json", id="empty"),
    pytest.param("{", "bad-json", id="truncated-json"),
    pytest.param("{'type': 'bye'}", "bad-json", id="single-quotes"),
    pytest.param('{"type": "bye"} trailing', "bad-json", id="trailing-garbage"),
    pytest.param("[" * 15_000, "bad-json", id="deeply-nested-array"),
    pytest.param('{"a":' * 3_000, "bad-json", id="deeply-nested-object"),
    pytest.param("[" * 100_000, "too-large", id="deeply-nested-and-oversized"),
    pytest.param("x" * (MAX_MESSAGE_CHARS + 1), "too-large", id="oversized-garbage"),
    pytest.param(padded({"type": "bye"}, MAX_MESSAGE_CHARS + 1), "too-large", id="oversized"),
    pytest.param("[]", "bad-message", id="list"),
    pytest.param('[{"type": "bye"}]', "bad-message", id="list-of-message"),
    pytest.param("42", "bad-message", id="number"),
    pytest.param('"bye"', "bad-message", id="string"),
    pytest.param("null", "bad-message", id="null"),
    pytest.param("true", "bad-message", id="bool"),
    pytest.param("{}", "bad-message", id="no-type"),
    pytest.param('{"type": null}', "bad-message", id="type-null"),
    pytest.param('{"type": 3}', "bad-message", id="type-number"),
    pytest.param('{"type": ["offer"]}', "bad-message", id="type-list"),
    pytest.param('{"type": {"name": "offer"}}', "bad-message", id="type-object"),
    pytest.param('{"type": "answer", "sdp": "v=0"}', "unknown-type", id="type-answer"),
    pytest.param('{"type": "hello"}', "unknown-type", id="type-unknown"),
    pytest.param('{"type": ""}', "unknown-type", id="type-empty"),
    pytest.param('{"type": "Offer", "sdp": "v=0"}', "unknown-type", id="type-wrong-case"),
]


@pytest.mark.parametrize(("text", "code"), NOT_A_MESSAGE)
def test_text_that_is_not_a_message_raises_protocol_error_with_its_code(
    text: str | bytes, code: str
) -> None:
    """The client is told exactly what was wrong, and nothing but ProtocolError escapes."""
    with pytest.raises(ProtocolError) as caught:
        parse_message(text)
    assert caught.value.code == code
    assert caught.value.message
    assert str(caught.value) == caught.value.message
    assert caught.value.in_reply_to is None  # the type itself is unknown or absent


BAD_FIELDS = [
    # offer
    pytest.param({"type": "offer"}, "invalid-field", id="offer-sdp-missing"),
    pytest.param({"type": "offer", "sdp": None}, "invalid-field", id="offer-sdp-null"),
    pytest.param({"type": "offer", "sdp": 0}, "invalid-field", id="offer-sdp-number"),
    pytest.param({"type": "offer", "sdp": ["v=0"]}, "invalid-field", id="offer-sdp-list"),
    pytest.param({"type": "offer", "sdp": {"sdp": SDP}}, "invalid-field", id="offer-sdp-object"),
    pytest.param({"type": "offer", "sdp": ""}, "invalid-sdp", id="offer-sdp-empty"),
    pytest.param({"type": "offer", "sdp": "hello"}, "invalid-sdp", id="offer-sdp-not-sdp"),
    pytest.param({"type": "offer", "sdp": " " + SDP}, "invalid-sdp", id="offer-sdp-leading-space"),
    pytest.param(
        {"type": "offer", "sdp": "v=0" + "x" * MAX_SDP_CHARS}, "too-large", id="offer-sdp-oversized"
    ),
    # candidate
    pytest.param({"type": "candidate", "candidate": 7}, "invalid-field", id="candidate-number"),
    pytest.param({"type": "candidate", "candidate": True}, "invalid-field", id="candidate-bool"),
    pytest.param(
        {"type": "candidate", "candidate": [CANDIDATE]}, "invalid-field", id="candidate-list"
    ),
    pytest.param(
        {"type": "candidate", "candidate": "c" * (MAX_CANDIDATE_CHARS + 1)},
        "too-large",
        id="candidate-oversized",
    ),
    pytest.param(
        {"type": "candidate", "candidate": CANDIDATE, "sdpMid": 0},
        "invalid-field",
        id="sdpMid-number",
    ),
    pytest.param(
        {"type": "candidate", "candidate": CANDIDATE, "sdpMid": "m" * 33},
        "too-large",
        id="sdpMid-oversized",
    ),
    pytest.param(
        {"type": "candidate", "candidate": CANDIDATE, "sdpMLineIndex": "0"},
        "invalid-field",
        id="sdpMLineIndex-string",
    ),
    pytest.param(
        {"type": "candidate", "candidate": CANDIDATE, "sdpMLineIndex": True},
        "invalid-field",
        id="sdpMLineIndex-true",
    ),
    pytest.param(
        {"type": "candidate", "candidate": CANDIDATE, "sdpMLineIndex": False},
        "invalid-field",
        id="sdpMLineIndex-false",
    ),
    pytest.param(
        {"type": "candidate", "candidate": CANDIDATE, "sdpMLineIndex": 0.0},
        "invalid-field",
        id="sdpMLineIndex-float",
    ),
    pytest.param(
        {"type": "candidate", "candidate": CANDIDATE, "sdpMLineIndex": -1},
        "invalid-field",
        id="sdpMLineIndex-negative",
    ),
    pytest.param(
        {"type": "candidate", "candidate": CANDIDATE, "sdpMLineIndex": 1024},
        "invalid-field",
        id="sdpMLineIndex-too-big",
    ),
    pytest.param(
        {"type": "candidate", "candidate": CANDIDATE, "sdpMLineIndex": 2**64},
        "invalid-field",
        id="sdpMLineIndex-huge",
    ),
]


@pytest.mark.parametrize(("data", "code"), BAD_FIELDS)
def test_a_bad_field_raises_protocol_error_in_reply_to_its_message(
    data: dict[str, Any], code: str
) -> None:
    """A wrong field is reported against the message that carried it, so the client can tell."""
    with pytest.raises(ProtocolError) as caught:
        parse_message(dumps(data))
    assert caught.value.code == code
    assert caught.value.in_reply_to == data["type"]


def test_an_integer_too_long_to_convert_is_bad_json_not_value_error() -> None:
    """Python refuses ints over 4300 digits with ValueError; that must not escape the parser."""
    text = '{"type": "candidate", "candidate": null, "sdpMLineIndex": ' + "9" * 5000 + "}"
    with pytest.raises(ProtocolError) as caught:
        parse_message(text)
    assert caught.value.code == "bad-json"


def test_an_error_message_names_the_offending_field() -> None:
    """'invalid-field' alone does not tell a developer which of four fields to fix."""
    with pytest.raises(ProtocolError) as caught:
        parse_message(dumps({"type": "candidate", "candidate": CANDIDATE, "sdpMid": 1}))
    assert "sdpMid" in caught.value.message


def test_an_unknown_type_is_shown_shortened_in_the_error() -> None:
    """The error echoes the type, but a client cannot make the server echo kilobytes back."""
    with pytest.raises(ProtocolError) as caught:
        parse_message(dumps({"type": "z" * 10_000}))
    assert caught.value.code == "unknown-type"
    assert len(caught.value.message) < 100


def test_a_message_of_exactly_the_limit_is_accepted() -> None:
    """The size limit is inclusive: off-by-one here would refuse legitimate large offers."""
    assert parse_message(padded({"type": "bye"}, MAX_MESSAGE_CHARS)) == Bye()


def test_an_sdp_of_exactly_the_limit_is_accepted() -> None:
    """An SDP at the limit is still an offer; only longer ones are refused."""
    sdp = SDP + "a=x" * ((MAX_SDP_CHARS - len(SDP)) // 3)
    sdp += "a" * (MAX_SDP_CHARS - len(sdp))
    assert len(sdp) == MAX_SDP_CHARS
    assert parse_message(dumps({"type": "offer", "sdp": sdp})) == Offer(sdp)


# --- good input ------------------------------------------------------------------------------


def test_an_offer_parses_to_offer_with_its_sdp() -> None:
    """The browser's offer reaches WebRTC unchanged, CRLFs included."""
    message = parse_message(dumps({"type": "offer", "sdp": SDP}))
    assert message == Offer(SDP)
    assert isinstance(message, Offer)
    assert message.sdp == SDP


def test_unknown_extra_fields_are_ignored() -> None:
    """A newer client may add fields; an older server must still understand the message."""
    assert parse_message(dumps({"type": "offer", "sdp": SDP, "x-future": 1})) == Offer(SDP)


def test_a_candidate_parses_with_w3c_field_names() -> None:
    """The browser's RTCIceCandidate fields map one-to-one onto Candidate."""
    data = {"type": "candidate", "candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0}
    assert parse_message(dumps(data)) == Candidate(CANDIDATE, "0", 0)


def test_a_candidate_with_only_the_candidate_string_parses() -> None:
    """sdpMid and sdpMLineIndex are optional in the W3C dictionary."""
    assert parse_message(dumps({"type": "candidate", "candidate": CANDIDATE})) == Candidate(
        CANDIDATE, None, None
    )


def test_a_candidate_with_the_largest_index_parses() -> None:
    """The index range ends at 1023 inclusive."""
    data = {"type": "candidate", "candidate": CANDIDATE, "sdpMLineIndex": 1023}
    assert parse_message(dumps(data)) == Candidate(CANDIDATE, None, 1023)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"type": "candidate", "candidate": None}, id="null"),
        pytest.param({"type": "candidate", "candidate": ""}, id="empty-string"),
        pytest.param({"type": "candidate"}, id="absent"),
        pytest.param(
            {"type": "candidate", "candidate": None, "sdpMid": None, "sdpMLineIndex": None},
            id="all-null",
        ),
    ],
)
def test_a_null_or_empty_candidate_means_end_of_candidates(data: dict[str, Any]) -> None:
    """The page sends candidate: null at the end of gathering; browsers may send ""."""
    assert parse_message(dumps(data)) == Candidate(None, None, None)


def test_bye_parses_to_bye() -> None:
    """A viewer that says goodbye is told apart from one that vanished."""
    assert parse_message('{"type":"bye"}') == Bye()


# --- server messages -------------------------------------------------------------------------


def test_config_message_carries_every_setting_in_camel_case() -> None:
    """The page hands iceServers and iceTransportPolicy straight to RTCPeerConnection."""
    ice: list[dict[str, Any]] = [
        {"urls": ["stun:stun.example.org:3478"]},
        {"urls": "turn:t.example", "username": "u"},
    ]
    text = config_message(
        viewer_id="v7",
        ice_servers=ice,
        codecs=("vp8", "h264"),
        ice_transport_policy="relay",
        modes=("webrtc",),
    )
    assert json.loads(text) == {
        "type": "config",
        "viewerId": "v7",
        "iceServers": ice,
        "iceTransportPolicy": "relay",
        "codecs": ["vp8", "h264"],
        "modes": ["webrtc"],
    }


def test_answer_message_carries_sdp_and_codec() -> None:
    """The page passes sdp to setRemoteDescription and shows the codec."""
    assert json.loads(answer_message(SDP, "vp8")) == {"type": "answer", "sdp": SDP, "codec": "vp8"}


@pytest.mark.parametrize("in_reply_to", ["offer", None])
def test_error_message_carries_code_message_and_in_reply_to(in_reply_to: str | None) -> None:
    """inReplyTo is always present, null when the error answers no particular message."""
    text = error_message("invalid-sdp", "'sdp' is not an SDP description", in_reply_to)
    assert json.loads(text) == {
        "type": "error",
        "code": "invalid-sdp",
        "message": "'sdp' is not an SDP description",
        "inReplyTo": in_reply_to,
    }


def test_error_message_round_trips_a_protocol_error() -> None:
    """What parse_message refuses is what the client is told, field for field."""
    with pytest.raises(ProtocolError) as caught:
        parse_message('{"type": "offer", "sdp": 1}')
    error = caught.value
    assert json.loads(error_message(error.code, error.message, error.in_reply_to)) == {
        "type": "error",
        "code": "invalid-field",
        "message": error.message,
        "inReplyTo": "offer",
    }


def test_bye_message_carries_the_reason() -> None:
    """The page logs why the server ended the session."""
    assert json.loads(bye_message("shutting down")) == {"type": "bye", "reason": "shutting down"}


def test_server_messages_are_compact_json_text() -> None:
    """Messages go out as single-line text frames without wasted spaces."""
    text = error_message("c", "m")
    assert isinstance(text, str)
    assert "\n" not in text
    assert ": " not in text
    assert ", " not in text
