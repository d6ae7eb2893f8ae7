"""Hostile input, generated: whatever a client sends, it gets an error or a policy close, and
the server keeps serving with nothing left behind."""

from __future__ import annotations

import asyncio
import json
import string
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling.messages import ProtocolError, parse_message
from signaling.session import WS_MAX_FRAME
from tests.aiortc_viewer import assert_serves_a_viewer
from tests.conftest import eventually, service_of, ws_url

# A real offer's shape, to mutate: aiortc and browsers must never crash the server with it.
OFFER_LINES = [
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "a=group:BUNDLE 0", "a=msid-semantic: WMS", "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0", "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24"
    ":C2:43:F0:A1:58:D0:A1:2C:19:08", "a=setup:actpass", "a=mid:0", "a=recvonly",
    "a=rtcp-mux", "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack pli", "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
]  # fmt: skip

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
types = st.sampled_from(["offer", "candidate", "bye", "jpeg", "ack", "Offer", "", "x" * 40])
valid_in_any_order = st.sampled_from([
    '{"type":"jpeg"}', '{"type":"ack"}', '{"type":"candidate","candidate":null}',
    '{"type":"jpeg","quality":50,"maxFps":5,"reason":"forced"}',
    '{"type":"candidate","candidate":"candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",'
    '"sdpMid":"0","sdpMLineIndex":0}',
])  # fmt: skip
messages = st.one_of(
    valid_in_any_order,
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.fixed_dictionaries(
        {"type": types},
        optional={
            "sdp": st.text(max_size=50) | st.integers(),
            "candidate": json_values,
            "sdpMid": json_values,
            "sdpMLineIndex": json_values,
            "quality": json_values,
            "maxWidth": json_values,
            "maxFps": json_values,
            "reason": json_values,
        },
    ).map(json.dumps),
    st.lists(st.sampled_from(OFFER_LINES), min_size=1, max_size=25).map(
        lambda lines: json.dumps({"type": "offer", "sdp": "\r\n".join(lines) + "\r\n"})
    ),
    st.integers(min_value=17_000, max_value=80_000).map(lambda n: "x" * n),
)


@given(st.one_of(st.text(), st.binary(), json_values.map(json.dumps)))
@settings(max_examples=500, deadline=None)
def test_the_parser_raises_only_protocol_errors(data: str | bytes) -> None:
    """Sans-I/O: any input gives a typed message or ProtocolError, never anything else."""
    try:
        parse_message(data)
    except ProtocolError as error:
        code, message = error.code, error.message
    else:
        return
    assert code
    assert message


class Tally:
    sent = 0
    answered = 0
    silent = 0  # valid messages that need no reply (a JPEG switch, an ack, a candidate)
    closed = 0


PROBE = '{"type":"__probe__"}'


async def _fuzz_session(server: TestServer, batch: list[str | bytes], tally: Tally) -> None:
    """One socket, hostile messages, each followed by a probe whose error marks the end of
    that message's replies: every reply is accounted for without waiting on a clock."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "config"
        for payload in batch:
            tally.sent += 1
            if isinstance(payload, bytes):
                await ws.send_bytes(payload)
            else:
                await ws.send_str(payload)
            await ws.send_str(PROBE)
            replies = 0
            while True:
                msg = await ws.receive(timeout=15)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_json({"type": "ack"})  # a JPEG picture, not a reply
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    tally.closed += 1  # a policy close (1008/1009) is an accepted outcome
                    if msg.type == aiohttp.WSMsgType.CLOSE:
                        assert msg.data in (1000, 1008, 1009), msg
                    else:
                        # The server may close (1009) while the client is still writing an
                        # oversized frame: the client then sees its connection drop.
                        assert len(payload) > WS_MAX_FRAME, (msg, payload[:80])
                    return
                reply: dict[str, Any] = json.loads(msg.data)
                if reply.get("code") == "unknown-type" and "__probe__" in reply["message"]:
                    break
                assert reply["type"] in ("error", "answer", "bye"), reply
                if reply["type"] == "error":
                    assert reply["code"]
                    assert reply["message"]
                replies += 1
            if replies:
                tally.answered += 1
            else:
                tally.silent += 1
                assert _is_valid(payload), f"no reply to an invalid message: {payload!r:.200}"


def _is_valid(payload: str | bytes) -> bool:
    try:
        parse_message(payload)
    except ProtocolError:
        return False
    return True


async def test_fuzzed_signaling_never_breaks_the_server(server: TestServer) -> None:
    """Random JSON, text, bytes, huge and out-of-order messages, mutated offers: answered."""
    batches: list[list[str | bytes]] = []

    @given(st.lists(messages, min_size=1, max_size=10))
    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def collect(batch: list[str | bytes]) -> None:
        batches.append(batch)

    collect()
    tally = Tally()
    for start in range(0, len(batches), 8):
        await asyncio.gather(*(_fuzz_session(server, b, tally) for b in batches[start : start + 8]))
    assert tally.sent >= 120
    assert tally.answered + tally.silent + tally.closed >= tally.sent - tally.closed
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fuzz-signaling.json").write_text(
        json.dumps(
            {
                "sessions": len(batches),
                "sent": tally.sent,
                "answered": tally.answered,
                "silentValid": tally.silent,
                "policyCloses": tally.closed,
            }
        )
    )
    service = service_of(server)
    await eventually(lambda: len(service.peers) == 0 and len(service.viewers) == 0)
    await eventually(lambda: not service.encoders.running() and not service.jpeg.running())
    await assert_serves_a_viewer(ws_url(server), 10)


def _examples(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """Draw ``count`` examples with hypothesis (shrinking is not needed to find a crash)."""
    drawn: list[Any] = []

    @given(strategy)
    @settings(max_examples=count, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn


async def test_fuzzed_picture_queries_get_400_or_a_picture(server: TestServer) -> None:
    """Bad ?quality=/?width= values over real HTTP: a 400 with a reason, never a 500."""
    values = _examples(
        st.text(alphabet=string.printable + "٣²", max_size=12) | st.integers().map(str), 80
    )
    statuses: set[int] = set()
    async with aiohttp.ClientSession() as http:
        for n, value in enumerate(values):
            path = "/snapshot.jpg" if n % 2 else "/stream.mjpg"
            name = "quality" if n % 4 < 2 else "width"
            async with http.get(server.make_url(path), params={name: value}) as response:
                statuses.add(response.status)
                if response.status == 400:
                    assert "must be an integer" in await response.text()
                else:
                    assert response.status == 200, (path, name, value, response.status)
                    assert value.isascii()
                    assert value.isdigit()
    assert 400 in statuses
    await assert_serves_a_viewer(ws_url(server), 5)


async def test_fuzzed_legacy_video_requests_get_pictures_or_a_close(server: TestServer) -> None:
    """The original protocol answers anything with a picture; oversize frames are refused."""
    payloads = _examples(st.text(max_size=300) | st.binary(max_size=300), 40)
    payloads.append("x" * 5000)  # over /video's 4 KiB message cap
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(str(server.make_url("/video"))) as ws,
    ):
        for payload in payloads:
            if isinstance(payload, bytes):
                await ws.send_bytes(payload)
            else:
                await ws.send_str(payload)
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                # The close frame says 1009, unless the line dropped while still writing.
                assert msg.type != aiohttp.WSMsgType.CLOSE or msg.data == 1009, msg
                assert payload == "x" * 5000
                break
            assert json.loads(msg.data)["img"].startswith("data:image/jpeg;base64,")
    service = service_of(server)
    await eventually(lambda: not service.legacy_viewers and not service.jpeg.running())
