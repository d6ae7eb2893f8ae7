"""A real WebRTC viewer made with aiortc: signals over /ws like the page does, decodes video."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from webrtc import timebar
from webrtc.ice import announce_only


@dataclass
class Received:
    """What a viewer decoded."""

    frames: int = 0
    stamped: int = 0  # frames whose capture-time bar decoded: pixels of the test pattern
    latencies_ms: list[float] = field(default_factory=list)
    width: int = 0
    height: int = 0
    first_frame_at: float | None = None
    last_luma: float = 0.0  # mean brightness of the lower half of the newest decoded frame
    keyframes: int = 0  # decoded frames that were keyframes (IDRs)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # each new size, in order


class AiortcViewer:
    """Connects to peercam's /ws and receives its video as a browser would."""

    def __init__(
        self,
        ws_url: str,
        *,
        codec: str | None = None,
        decode_bar: bool = True,
        user_agent: str | None = None,
        ice_servers: list[RTCIceServer] | None = None,
        use_config_ice_servers: bool = False,
        relay_only: bool = False,
        local_addresses: Sequence[str] = ("127.0.0.1",),
    ) -> None:
        self.ws_url = ws_url
        #: The addresses ICE announces; empty: aioice's own choice (every non-loopback one).
        self.local_addresses = tuple(local_addresses)
        self.codec = codec
        self.decode_bar = decode_bar
        self.user_agent = user_agent
        self.ice_servers = ice_servers or []
        self.use_config_ice_servers = use_config_ice_servers
        self.relay_only = relay_only
        self.received = Received()
        self.config: dict[str, Any] = {}
        self.answer: dict[str, Any] = {}
        self.pc: RTCPeerConnection | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._reader: asyncio.Task[None] | None = None
        self._track: asyncio.Future[MediaStreamTrack] | None = None
        self.frame_event = asyncio.Event()
        #: False: never apply the answer, so ICE can never complete (for timeout tests).
        self.apply_answer = True
        #: The rung notices the server sent, in order.
        self.rungs: list[dict[str, Any]] = []
        #: Rewrites the offer before it is sent (to offer what a browser would, e.g. extensions).
        self.edit_offer: Callable[[str], str] = lambda sdp: sdp

    async def connect(self) -> None:
        """Signal until the answer is applied; raises if the server answers with an error."""
        headers = {"User-Agent": self.user_agent} if self.user_agent else {}
        self._http = aiohttp.ClientSession(headers=headers)
        self.ws = await self._http.ws_connect(self.ws_url)
        self.config = await self.ws.receive_json(timeout=10)
        assert self.config["type"] == "config", self.config
        await self.negotiate()

    async def negotiate(self) -> None:
        """Offer with a new peer connection on the open socket (again: a renegotiation)."""
        assert self.ws is not None
        await self._close_peer()
        ice_servers = list(self.ice_servers)
        if self.use_config_ice_servers:
            ice_servers += [RTCIceServer(**s) for s in self.config["iceServers"]]
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=ice_servers,
                iceTransportPolicy=(
                    RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
                ),
            )
        )
        self._track = asyncio.get_running_loop().create_future()
        track_future = self._track

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if not track_future.done():
                track_future.set_result(track)

        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        if self.codec:
            mime = "video/VP8" if self.codec == "vp8" else "video/H264"
            caps = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences(
                [c for c in caps if c.mimeType == mime]
                + [c for c in caps if c.mimeType == "video/rtx"]
            )
        with announce_only(self.local_addresses):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.edit_offer(self.pc.localDescription.sdp)
        await self.ws.send_json({"type": "offer", "sdp": offer})
        self.answer = await self.next_server_message(timeout=10)
        if self.answer.get("type") != "answer":
            raise RuntimeError(f"no answer: {self.answer}")
        if not self.apply_answer:
            return
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=self.answer["sdp"], type="answer")
        )
        track = await asyncio.wait_for(self._track, 10)
        self._reader = asyncio.get_running_loop().create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.time()
                received = self.received
                received.frames += 1
                if received.first_frame_at is None:
                    received.first_frame_at = time.monotonic()
                received.width, received.height = frame.width, frame.height  # type: ignore[union-attr]
                received.keyframes += bool(frame.key_frame)  # type: ignore[union-attr]
                if not received.sizes or received.sizes[-1] != (received.width, received.height):
                    received.sizes.append((received.width, received.height))
                if self.decode_bar:
                    luma = frame.to_ndarray(format="gray")  # type: ignore[union-attr]
                    received.last_luma = float(luma[luma.shape[0] // 2 :].mean())
                    millis = timebar.read(luma)
                    if millis is not None:
                        received.stamped += 1
                        received.latencies_ms.append(now * 1000 - millis)
                self.frame_event.set()
        except MediaStreamError:
            pass

    async def wait_frames(self, count: int, timeout: float) -> None:
        """Wait until ``count`` frames have been decoded (raises TimeoutError)."""
        async with asyncio.timeout(timeout):
            while self.received.frames < count:
                self.frame_event.clear()
                await self.frame_event.wait()

    async def next_server_message(self, timeout: float) -> dict[str, Any]:
        """The next message other than a rung notice (those are kept in ``rungs``)."""
        assert self.ws is not None
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return {"type": f"<{msg.type.name}>"}
            data: dict[str, Any] = json.loads(msg.data)
            if data.get("type") != "rung":
                return data
            self.rungs.append(data)

    async def wait_rung(
        self, predicate: Callable[[dict[str, Any]], bool] = lambda rung: True, timeout: float = 10
    ) -> dict[str, Any]:
        """The first rung notice (already received or to come) that satisfies ``predicate``."""
        assert self.ws is not None
        for rung in self.rungs:
            if predicate(rung):
                return rung
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"socket ended: {msg.type.name}")
                data: dict[str, Any] = json.loads(msg.data)
                if data.get("type") == "rung":
                    self.rungs.append(data)
                    if predicate(data):
                        return data

    def selected_local_candidate_type(self) -> str | None:
        """The type of the local candidate of the nominated ICE pair (aioice internals)."""
        assert self.pc is not None
        transport = self.pc.getTransceivers()[0].receiver.transport.transport
        pair = transport._connection._nominated.get(1)
        return None if pair is None else str(pair.local_candidate.type)

    async def _close_peer(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        if self.pc is not None:
            await self.pc.close()
            self.pc = None

    async def close(self) -> None:
        await self._close_peer()
        if self.ws is not None:
            await self.ws.close()
        if self._http is not None:
            await self._http.close()


async def assert_serves_a_viewer(ws_url: str, frames: int = 5) -> None:
    """A fresh viewer still gets video: the server carried on after whatever came before."""
    viewer = AiortcViewer(ws_url, decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(frames, timeout=15)
    finally:
        await viewer.close()
