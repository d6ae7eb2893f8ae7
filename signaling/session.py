"""One viewer's WebSocket: receive → parse → act → send.

Only this handler's task calls ``ws.receive()``. The viewer's WebRTC media runs in one owned
task, :meth:`webrtc.peers.Peer.run`, which holds the viewer's encoder leases and closes its peer;
when it ends by itself (ICE failed, the viewer vanished) the socket is closed too, as a closed
socket ends the peer. A new offer on the same socket (the page renegotiates after a stall)
replaces the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

from aiohttp import WSMsgType, web

from webrtc import sdpcheck
from webrtc.errors import NegotiationError
from webrtc.jpeg import JpegKey
from webrtc.peers import Peer, RungInfo, ViewerHints
from webrtc.tasks import cancel_and_wait

from . import messages
from .limits import COUNTED_FRAMES, TokenBucket
from .pictures import JpegStream, source_width
from .state import Service

logger = logging.getLogger(__name__)

# aiohttp closes the socket (1009) above this; below it, our own limit answers with an error.
WS_MAX_FRAME = 64 * 1024
#: Signaling messages per second a viewer may send (JPEG acks come at the frame rate, trickled
#: candidates in bursts), and the burst allowed.
RATE, BURST = 60.0, 120.0
#: Messages refused for the rate before the socket is closed as abusive.
MAX_REFUSED = 200
#: A new offer on a socket that has a peer replaces it (renegotiation after a stall), at most
#: this often (seconds): each one costs an ICE gathering and a DTLS handshake.
REOFFER_INTERVAL = 2.0
#: Refused messages of one session logged at INFO (the rest at DEBUG, and counted).
LOGGED_REFUSALS = 3


class ViewerSession:
    """The signaling conversation with one viewer."""

    def __init__(
        self, service: Service, ws: web.WebSocketResponse, remote: str, hints: ViewerHints
    ) -> None:
        self.viewer_id = secrets.token_hex(4)
        self._service = service
        self._ws = ws
        self._remote = remote
        self._hints = hints
        self._peer: Peer | None = None
        self._media: asyncio.Task[None] | None = None
        self._offered_at = -REOFFER_INTERVAL
        self._refusals = 0
        self._jpeg: JpegStream | None = None
        self._ice_servers = service.peers.settings.ice_servers_for(self.viewer_id)
        self._rate = TokenBucket(RATE, BURST)
        #: The viewer's remote candidates, counted and checked before ICE sees them.
        self._candidates: sdpcheck.CandidateBudget | None = None
        #: The last offer was refused and no session runs: the candidates the browser trickles
        #: for it (Firefox sends a dozen after an offer with no codec in common) are dropped
        #: quietly, and counted, instead of earning an error each.
        self._offer_refused = False
        self._dropped_candidates = 0

    async def run(self) -> None:
        config = self._service.config
        settings = self._service.peers.settings
        logger.info("viewer %s connected from %s", self.viewer_id, self._remote)
        try:
            await self._ws.send_str(
                messages.config_message(
                    viewer_id=self.viewer_id,
                    ice_servers=[s.to_json() for s in self._ice_servers],
                    codecs=[str(c) for c in settings.codecs],
                    ice_transport_policy="relay" if settings.relay_only else "all",
                    modes=["webrtc", "jpeg"] if config.webrtc else ["jpeg"],
                )
            )
            async for msg in self._ws:
                if msg.type in COUNTED_FRAMES and not self._rate.allow():
                    if self._rate.refused > MAX_REFUSED:
                        logger.info("viewer %s: closed for flooding", self.viewer_id)
                        await self._ws.close(code=1008, message=b"too many messages")
                        break
                    await self._send_error(
                        messages.ProtocolError(
                            "rate-limited", f"at most {RATE:g} messages per second"
                        )
                    )
                    continue
                if msg.type == WSMsgType.TEXT:
                    await self._handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._send_error(
                        messages.ProtocolError("binary-not-allowed", "signaling is JSON text")
                    )
                elif msg.type == WSMsgType.PING:  # autoping=False: answered under the limit
                    await self._ws.pong(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    logger.info("viewer %s: socket error %s", self.viewer_id, self._ws.exception())
                if self._ws.closed:
                    break
        finally:
            await self._end()

    @property
    def asked_for_video(self) -> bool:
        """Has this viewer made an offer that was answered, or asked for JPEG?"""
        return self._peer is not None or self._jpeg is not None

    async def _handle(self, text: str) -> None:
        try:
            message = messages.parse_message(text)
            logger.debug("viewer %s: < %s", self.viewer_id, type(message).__name__)
            match message:
                case messages.Offer(sdp):
                    try:
                        await self._on_offer(sdp)
                    except messages.ProtocolError:
                        self._offer_refused = self._peer is None
                        raise
                    self._offer_refused = False
                case messages.Candidate(candidate, sdp_mid, index):
                    if self._peer is None and self._offer_refused:
                        self._dropped_candidates += 1  # the offer's error said it all
                        return
                    if self._peer is None or self._candidates is None:
                        raise messages.ProtocolError(
                            "unexpected", "a candidate came before the offer", "candidate"
                        )
                    admitted = self._candidates.admit(candidate, sdp_mid, index)
                    # sdpMid/index were checked against every section of the offer (the peer
                    # knows only the video one): the candidate goes to the bundle.
                    if admitted is not None:
                        await self._peer.add_candidate(admitted, None, None)
                case messages.Bye():
                    logger.info("viewer %s said bye", self.viewer_id)
                    await self._ws.close()
                case messages.JpegRequest():
                    await self._on_jpeg(message)
                case messages.Ack():
                    if self._jpeg is None:
                        raise messages.ProtocolError("unexpected", "ack outside JPEG mode", "ack")
                    self._jpeg.ack()
                case messages.KeyframeRequest():
                    if self._peer is None:
                        raise messages.ProtocolError(
                            "unexpected", "no WebRTC session to send a keyframe on", "keyframe"
                        )
                    self._peer.request_keyframe()
                case messages.ViewerStats():
                    mode = "webrtc" if self._peer else "jpeg" if self._jpeg else None
                    if mode is None:
                        raise messages.ProtocolError(
                            "unexpected", "viewer-stats before any video", "viewer-stats"
                        )
                    self._service.viewer_reports.record(mode, message)
        except messages.ProtocolError as exc:
            await self._send_error(exc)
        except NegotiationError as exc:
            kind = "offer" if self._peer is None or self._peer.codec is None else "candidate"
            await self._send_error(messages.ProtocolError(exc.code, str(exc), kind))

    async def _on_offer(self, sdp: str) -> None:
        if not self._service.config.webrtc:
            raise messages.ProtocolError(
                "webrtc-disabled", 'this server serves JPEG only; send {"type":"jpeg"}', "offer"
            )
        if self._jpeg is not None:
            raise messages.ProtocolError("unexpected", "this socket is in JPEG mode", "offer")
        now = time.monotonic()
        if self._peer is not None and now - self._offered_at < REOFFER_INTERVAL:
            raise messages.ProtocolError(
                "rate-limited",
                f"a new offer replaces the session at most every {REOFFER_INTERVAL:g} s",
                "offer",
            )
        # Checked before any peer connection or socket exists, and before a new offer
        # replaces a session that plays.
        loopback = sdpcheck.is_loopback(self._remote)
        try:
            checked = sdpcheck.check_offer(sdp, allow_loopback=loopback)
        except NegotiationError as exc:
            raise messages.ProtocolError(exc.code, str(exc), "offer") from exc
        if checked.left_out:
            logger.info("viewer %s: %d offer candidates left out, e.g. %s", self.viewer_id,
                        len(checked.left_out), checked.left_out[0])  # fmt: skip
        if self._peer is not None:
            await self._stop_peer("replaced by a new offer")
        self._offered_at = now
        self._candidates = sdpcheck.CandidateBudget(checked, allow_loopback=loopback)
        peer = self._service.peers.create(self.viewer_id, self._ice_servers)
        try:
            answer = await peer.answer(checked.sdp, self._hints)
        except NegotiationError as exc:
            await peer.aclose(f"offer refused: {exc}")
            raise messages.ProtocolError(exc.code, str(exc), "offer") from exc
        self._peer = peer
        await self._ws.send_str(messages.answer_message(answer.sdp, str(answer.codec)))
        self._media = asyncio.get_running_loop().create_task(
            self._serve(peer), name=f"peercam-viewer-{self.viewer_id}"
        )

    async def _on_jpeg(self, request: messages.JpegRequest) -> None:
        """Switch this socket to JPEG: the WebRTC peer (if any) ends, the socket stays."""
        if self._jpeg is not None:
            raise messages.ProtocolError(
                "unexpected", "this socket is already in JPEG mode", "jpeg"
            )
        if request.reason:
            self._service.fallbacks[request.reason] += 1
        await self._stop_peer(f"switched to JPEG ({request.reason or 'asked'})")
        key = JpegKey.normalized(
            request.quality or self._service.config.jpeg_quality,
            request.max_width,
            source_width(self._service),
        )
        self._jpeg = JpegStream(
            self._ws, self._service.jpeg, key, request.max_fps,
            source_fps=self._service.source.fps,
            stall_timeout=self._service.config.stall_timeout,
        )  # fmt: skip
        self._jpeg.start()
        self._service.jpeg_streams.add(self._jpeg)
        logger.info("viewer %s: JPEG mode %s (%s)", self.viewer_id, key, request.reason or "asked")

    async def _stop_peer(self, reason: str) -> None:
        """End the viewer's WebRTC session (if any) and wait until it has let go of
        everything; the socket stays open."""
        peer, media = self._peer, self._media
        self._peer = self._media = None
        if peer is not None:
            peer.end(reason)
            if media is None:  # the offer was refused: nothing runs it
                await peer.aclose(reason)
        if media is not None:
            # It ends by itself once asked; cancelling is for a socket that hangs in a send.
            done, _ = await asyncio.wait((media,), timeout=5.0)
            if not done:
                await cancel_and_wait(media)

    async def _serve(self, peer: Peer) -> None:
        """The viewer's media, from connection to close: the one task that owns it."""
        try:
            await peer.run(on_rung=self._send_rung)
        except ConnectionError:
            peer.end("the socket closed")
        if self._peer is peer and not self._ws.closed:
            # The peer ended by itself (ICE failed, the viewer vanished): so does the socket.
            with contextlib.suppress(ConnectionError):
                await self._ws.send_str(messages.bye_message(peer.close_reason or "closed"))
                await self._ws.close()

    async def _send_rung(self, rung: RungInfo) -> None:
        if not self._ws.closed:
            await self._ws.send_str(messages.rung_message(rung.to_json()))

    async def _send_error(self, error: messages.ProtocolError) -> None:
        self._refusals += 1
        # The first few refusals of a session at INFO, the rest at DEBUG and counted at the end:
        # a client that sends nothing but bad messages must not flood the log.
        log = logger.info if self._refusals <= LOGGED_REFUSALS else logger.debug
        log("viewer %s: refused %s: %s", self.viewer_id, error.code, error.message)
        if not self._ws.closed:
            await self._ws.send_str(
                messages.error_message(error.code, error.message, error.in_reply_to)
            )

    async def _end(self) -> None:
        await self._stop_peer("the socket closed")
        if self._jpeg is not None:
            await self._jpeg.aclose()
            self._service.jpeg_streams.discard(self._jpeg)
        if self._refusals > LOGGED_REFUSALS:
            logger.info("viewer %s: %d messages refused in all", self.viewer_id, self._refusals)
        if self._dropped_candidates:
            logger.debug(
                "viewer %s: %d candidates of a refused offer dropped",
                self.viewer_id, self._dropped_candidates,
            )  # fmt: skip
        logger.info("viewer %s disconnected", self.viewer_id)


async def close_if_idle(
    ws: web.WebSocketResponse, asked: Callable[[], bool], timeout: float
) -> None:
    """After ``timeout`` s, close a socket that has not asked for video, with a typed error.

    A socket that never offers nor asks for JPEG would otherwise hold a viewer slot forever.
    """
    await asyncio.sleep(timeout)  # a deadline, not synchronisation
    if asked() or ws.closed:
        return
    logger.info("closing a socket that asked for no video in %g s", timeout)
    with contextlib.suppress(ConnectionError):
        await ws.send_str(
            messages.error_message(
                "idle-timeout", f"no offer nor jpeg request within {timeout:g} s"
            )
        )
        await ws.close(code=1008, message=b"idle: no offer nor jpeg request")


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    service = request.app[Service.KEY]
    # No per-message deflate: JPEG pictures do not compress, and deflating them per viewer
    # would undo "encode once".
    # autoping=False: the session answers pings itself, under its rate limit.
    ws = web.WebSocketResponse(
        heartbeat=20.0, max_msg_size=WS_MAX_FRAME, compress=False, autoping=False
    )
    await ws.prepare(request)
    if len(service.viewers) >= service.config.max_viewers:
        await ws.send_str(
            messages.error_message(
                "too-many-viewers",
                f"this server serves at most {service.config.max_viewers} viewers",
            )
        )
        await ws.close(code=1013, message=b"too many viewers")  # 1013: try again later
        return ws
    hints = ViewerHints.from_user_agent(request.headers.get("User-Agent", ""))
    session = ViewerSession(service, ws, request.remote or "?", hints)
    service.viewers.add(ws)
    idle = asyncio.get_running_loop().create_task(
        close_if_idle(ws, lambda: session.asked_for_video, service.config.idle_timeout)
    )
    try:
        await session.run()
    finally:
        await cancel_and_wait(idle)
        service.viewers.discard(ws)
    return ws
