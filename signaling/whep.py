"""WHEP (draft-ietf-wish-whep; the rules of WHIP, RFC 9725): a standard player's offer over HTTP.

``POST whep`` with an ``application/sdp`` offer creates a session resource, ``whep/ID``; the
player may then ``PATCH`` it with trickled candidates (``application/trickle-ice-sdpfrag``) and
``DELETE`` it to leave. The viewer is an ordinary peercam viewer: the offer passes the same
checks as a page's (:func:`webrtc.sdpcheck.check_offer`), a :class:`~webrtc.peers.Peer` of the
camera's :class:`~webrtc.peers.PeerManager` answers it (shared encoders, the viewer's own rung),
and the session takes a slot of the same caps as a page's WebSocket (``--max-viewers``,
``--max-per-address``, the TURN credential rate).

Ownership: each session has one owner task, which runs :meth:`Peer.run` and holds the session's
slot. ``DELETE`` asks the peer to end and waits for that task; a peer that ends by itself (not
connected within ``--connect-timeout``, ICE failed, the player vanished) ends the task, which
removes the resource, so a later ``PATCH``/``DELETE`` gets 404. :class:`WhepSessions` owns the
tasks of one camera and ends them all at cleanup.

Registered per camera with one call, :func:`add_routes`; the handlers find their camera through
``request.app[Service.KEY]`` like every other handler.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from aiohttp import web

from webrtc import sdpcheck
from webrtc.errors import NegotiationError
from webrtc.ice import IceServer
from webrtc.peers import Peer, ViewerHints
from webrtc.tasks import cancel_and_wait

from . import limits
from .messages import MAX_SDP_CHARS
from .security import CLIENT_VIEW, ClientLimits
from .state import Service

logger = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
#: A trickle fragment is a few lines per candidate; the offer's limit bounds it generously.
MAX_SDPFRAG_CHARS = MAX_SDP_CHARS
#: PATCH requests a session may send per second, and the burst allowed (a player sends one per
#: batch of gathered candidates: a handful in all).
PATCH_RATE, PATCH_BURST = 10.0, 30.0
#: Seconds a DELETE waits for the session's owner to close its peer before cancelling it.
DELETE_WAIT = 5.0
#: Seconds cleanup waits for the sessions' owners before cancelling them (safe: a peer's close
#: is shielded and owned by the peer). In create_app's order it runs after the PeerManager has
#: closed every peer (for at most its own 2 s), so only a close that still hangs (a TURN
#: allocation whose server is gone) is left to wait for.
CLOSE_WAIT = 1.0
#: Refused offers are logged at INFO at most once per this many seconds.
REFUSALS_LOG_INTERVAL = 10.0
#: CORS preflights may be cached this long (seconds).
PREFLIGHT_MAX_AGE = 600
ALLOW_HEADERS = "Authorization, Content-Type, If-Match"


_STATUSES: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    408: web.HTTPRequestTimeout,
    412: web.HTTPPreconditionFailed,
    415: web.HTTPUnsupportedMediaType,
    422: web.HTTPUnprocessableEntity,
    429: web.HTTPTooManyRequests,
    503: web.HTTPServiceUnavailable,
}


def refused(status: int, reason: str, *, retry_after: int | None = None) -> web.HTTPException:
    """A WHEP request refused with ``status`` and a plain-text reason."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return _STATUSES[status](text=reason + "\n", headers=headers)


def _too_large(limit: int, size: int) -> web.HTTPException:
    return web.HTTPRequestEntityTooLarge(limit, size, text=f"the body is over {limit} bytes\n")


def _negotiation_refused(exc: NegotiationError) -> web.HTTPException:
    if exc.code == "no-udp-port":  # the server is full for now, the offer was fine
        return refused(503, f"{exc.code}: {exc}", retry_after=5)
    return refused(400, f"{exc.code}: {exc}")


# -- the trickle fragment (RFC 8840), pure ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SdpFrag:
    """An ``application/trickle-ice-sdpfrag`` body."""

    ufrag: str | None
    pwd: str | None
    #: (the ``a=mid`` of the section it came in, or None; the ``a=candidate:`` line's value)
    candidates: tuple[tuple[str | None, str], ...]
    end_of_candidates: bool


def parse_sdpfrag(text: str) -> SdpFrag:
    """Parse a trickle fragment: ICE credentials, sections named by ``a=mid``, candidates.

    Candidates themselves are checked later, one by one (:class:`sdpcheck.CandidateBudget`).

    Raises:
        ValueError: not an SDP fragment (with the reason, quoting little of the text).
    """
    ufrags: set[str] = set()
    pwds: set[str] = set()
    candidates: list[tuple[str | None, str]] = []
    end = False
    mid: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise ValueError(f"not an SDP line: {line[:24]!r}")
        if line.startswith("m="):
            mid = None
            continue
        if not line.startswith("a="):
            continue
        name, _, value = line[2:].partition(":")
        if name == "mid":
            mid = value.strip()
        elif name == "ice-ufrag":
            ufrags.add(value.strip())
        elif name == "ice-pwd":
            pwds.add(value.strip())
        elif name == "candidate":
            if len(candidates) >= sdpcheck.MAX_OFFER_CANDIDATE_LINES:
                raise ValueError(
                    f"more than {sdpcheck.MAX_OFFER_CANDIDATE_LINES} candidates in one fragment"
                )
            candidates.append((mid, line[2:]))
        elif name == "end-of-candidates":
            end = True
    if len(ufrags) > 1 or len(pwds) > 1:
        raise ValueError("the fragment has two different ice-ufrag or ice-pwd values")
    return SdpFrag(
        ufrag=next(iter(ufrags), None),
        pwd=next(iter(pwds), None),
        candidates=tuple(candidates),
        end_of_candidates=end,
    )


def _ice_credentials(sdp: str) -> tuple[str | None, str | None]:
    """The first ``ice-ufrag`` and ``ice-pwd`` of an offer (one bundled transport)."""
    ufrag = pwd = None
    for line in sdp.split("\r\n"):
        if ufrag is None and line.startswith("a=ice-ufrag:"):
            ufrag = line.removeprefix("a=ice-ufrag:").strip()
        elif pwd is None and line.startswith("a=ice-pwd:"):
            pwd = line.removeprefix("a=ice-pwd:").strip()
    return ufrag, pwd


def _quoted(value: str) -> str:
    """An RFC 8288 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def link_headers(servers: tuple[IceServer, ...]) -> list[str]:
    """``Link: <url>; rel="ice-server"`` values, one per URL, with credentials where given
    (RFC 9725 §4.6)."""
    links = []
    for server in servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                link += (
                    f"; username={_quoted(server.username)}"
                    f"; credential={_quoted(server.credential)}"
                    '; credential-type="password"'
                )
            links.append(link)
    return links


# -- sessions ----------------------------------------------------------------------------------


class _Slot:
    """One long-lived consumer of a client, counted where the security middleware counts the
    page's WebSockets and MJPEG streams (``Service.connections``), so a WHEP session is under
    the same ``--max-viewers`` and ``--max-per-address`` caps."""

    def __init__(self, connections: Counter[str], client: str) -> None:
        self._connections = connections
        self._client = client
        self._held = True
        connections[client] += 1

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        self._connections[self._client] -= 1
        if self._connections[self._client] <= 0:
            del self._connections[self._client]


class WhepSession:
    """One WHEP resource: its peer, the candidates it was given, its ETag and PATCH rate."""

    def __init__(
        self, resource_id: str, peer: Peer, offer: sdpcheck.CheckedOffer, *, allow_loopback: bool
    ) -> None:
        self.resource_id = resource_id
        self.peer = peer
        self.etag = f'"{secrets.token_hex(8)}"'
        self.ufrag, self.pwd = _ice_credentials(offer.sdp)
        self.candidates = sdpcheck.CandidateBudget(offer, allow_loopback=allow_loopback)
        self.patches = limits.TokenBucket(PATCH_RATE, PATCH_BURST)
        self.refused_candidates = 0
        #: The owner: runs the peer, releases the slot, removes the resource (WhepSessions).
        self.task: asyncio.Task[None] | None = None


class WhepSessions:
    """The WHEP sessions of one camera, and the one owner task of each."""

    KEY: ClassVar[web.AppKey[WhepSessions]]

    def __init__(self) -> None:
        self._sessions: dict[str, WhepSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Refused offers: a client's mistake, at INFO at most once per 10 s (the rest at DEBUG).
        self._refusals = limits.QuietWarning(logger, REFUSALS_LOG_INTERVAL, logging.INFO)

    def refused(self, message: str, *args: object) -> None:
        logger.debug(message, *args)
        self._refusals.warn(message, *args)

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, resource_id: str) -> WhepSession | None:
        return self._sessions.get(resource_id)

    def sessions(self) -> list[WhepSession]:
        return list(self._sessions.values())

    def start(self, session: WhepSession, slot: _Slot) -> None:
        """Serve ``session`` in its own task, which from now on owns its peer and ``slot``."""
        self._sessions[session.resource_id] = session
        task = session.task = asyncio.get_running_loop().create_task(
            self._serve(session, slot), name=f"peercam-whep-{session.peer.viewer_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, session: WhepSession, slot: _Slot) -> None:
        try:
            await session.peer.run()
        except Exception:  # a bug, not a player's doing: logged, and the session still ends
            logger.exception("viewer %s: WHEP session failed", session.peer.viewer_id)
        finally:
            # The resource is gone with its peer: PATCH and DELETE now get 404.
            if self._sessions.get(session.resource_id) is session:
                del self._sessions[session.resource_id]
            slot.release()
            logger.info(
                "viewer %s: WHEP session ended (%s)",
                session.peer.viewer_id,
                session.peer.close_reason,
            )

    async def end(self, session: WhepSession, reason: str) -> None:
        """End ``session`` and wait until its peer is closed and its slot released."""
        if self._sessions.get(session.resource_id) is session:
            del self._sessions[session.resource_id]
        session.peer.end(reason)
        if session.task is None:
            return
        # Peer.run ends by itself within a controller tick once asked; cancelling is the
        # last resort (its close is shielded, so a cancel never breaks aiortc's own).
        done, _ = await asyncio.wait((session.task,), timeout=DELETE_WAIT)
        if not done:
            await cancel_and_wait(session.task)

    async def aclose(self) -> None:
        """End every session and wait for their owners (bounded: then cancelled)."""
        for session in list(self._sessions.values()):
            session.peer.end("server shutting down")
        self._sessions.clear()
        tasks = list(self._tasks)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT)
        for task in pending:
            await cancel_and_wait(task)


WhepSessions.KEY = web.AppKey("peercam_whep_sessions", WhepSessions)


# -- handlers ----------------------------------------------------------------------------------


def _require_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise refused(415, f"Content-Type must be {expected}, not {request.content_type!r}")


async def _read_text(request: web.Request, limit: int) -> str:
    """The body as text, at most ``limit`` bytes, read within the header timeout."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit, request.content_length)
    body = bytearray()
    try:
        async with asyncio.timeout(request.app[Service.KEY].config.header_timeout):
            while chunk := await request.content.read(limit + 1 - len(body)):
                body += chunk
                if len(body) > limit:
                    raise _too_large(limit, len(body))
    except TimeoutError:
        raise refused(408, "the body did not arrive in time") from None
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise refused(400, "the body is not UTF-8 text") from None


def _admit(request: web.Request, service: Service, client: str) -> _Slot:
    """A slot for a new session, or the refusal the page's WebSocket gets at the same cap."""
    config = service.config
    client_limits = request.app[ClientLimits.KEY]
    if service.connections[client] >= config.max_per_address:
        client_limits.refused(request.path, client, "connections per client")
        raise refused(
            429,
            f"too many sessions from {client} (at most {config.max_per_address})",
            retry_after=5,
        )
    if service.connections.total() >= config.max_viewers:
        client_limits.refused(request.path, client, "viewers")
        raise refused(
            503,
            f"this server serves at most {config.max_viewers} viewers",
            retry_after=5,
        )
    if config.turn_secret is not None and not client_limits.turn_credentials.allow(client):
        # Each session mints TURN credentials (they go out in its Link headers).
        client_limits.refused(request.path, client, "TURN credentials")
        raise refused(429, "too many new sessions: try again in a few seconds", retry_after=5)
    return _Slot(service.connections, client)


async def post_offer(request: web.Request) -> web.Response:
    """``POST whep``: the offer in, ``201 Created`` with the answer and the resource out."""
    service = request.app[Service.KEY]
    sessions = request.app[WhepSessions.KEY]
    _require_type(request, SDP)
    if not service.config.webrtc:
        raise refused(403, "webrtc-disabled: this server serves JPEG only (--no-webrtc)")
    text = await _read_text(request, MAX_SDP_CHARS)
    remote = request.remote or "?"
    loopback = sdpcheck.is_loopback(remote)
    try:
        # Checked before any peer connection or socket exists, as a page's offer is.
        checked = sdpcheck.check_offer(text, allow_loopback=loopback)
    except NegotiationError as exc:
        sessions.refused("refused a WHEP offer from %s: %s: %s", remote, exc.code, exc)
        raise _negotiation_refused(exc) from exc
    slot = _admit(request, service, limits.client_of(remote))
    try:
        viewer_id = f"whep-{secrets.token_hex(4)}"
        ice_servers = service.peers.settings.ice_servers_for(viewer_id)
        peer = service.peers.create(viewer_id, ice_servers)
        hints = ViewerHints.from_user_agent(request.headers.get("User-Agent", ""))
        try:
            answer = await peer.answer(checked.sdp, hints)
        except BaseException as exc:
            await asyncio.shield(peer.aclose(f"offer refused: {exc}"))
            if isinstance(exc, NegotiationError):
                sessions.refused("viewer %s: refused WHEP offer: %s: %s", viewer_id, exc.code, exc)
                raise _negotiation_refused(exc) from exc
            raise
        session = WhepSession(secrets.token_urlsafe(16), peer, checked, allow_loopback=loopback)
        sessions.start(session, slot)  # the session's task owns the peer and the slot now
    except BaseException:
        slot.release()
        raise
    logger.info(
        "viewer %s: WHEP session from %s (%s, %d offer candidates%s)",
        viewer_id,
        remote,
        answer.codec,
        len(checked.candidates),
        f", {len(checked.left_out)} left out" if checked.left_out else "",
    )
    response = web.Response(
        status=201,
        body=answer.sdp.encode(),
        content_type=SDP,
        headers={
            "Location": _location(request, session.resource_id),
            "ETag": session.etag,
            "Accept-Patch": SDPFRAG,
            "Cache-Control": "no-store",
        },
    )
    for link in link_headers(ice_servers):
        response.headers.add("Link", link)
    return response


def _location(request: web.Request, resource_id: str) -> str:
    """The resource's URL: an absolute path when the client reached peercam directly (the
    path it asked for, so players that resolve a Location against their page's origin rather
    than the endpoint's, as Eyevinn's does, still find it); relative through a reverse proxy,
    whose prefix peercam cannot know (resolved against the POST's URL, RFC 9110 §10.2.2)."""
    view = request.get(CLIENT_VIEW)
    if view is not None and view.proxy is not None:
        return f"whep/{resource_id}"
    return f"{request.rel_url.raw_path.rstrip('/')}/{resource_id}"  # still percent-encoded


def _session_of(request: web.Request) -> WhepSession:
    session = request.app[WhepSessions.KEY].get(request.match_info["resource"])
    if session is None or session.peer.close_reason is not None:  # unknown, or ending
        raise refused(404, "no such WHEP session (it ended, or never existed)")
    return session


async def patch_candidates(request: web.Request) -> web.Response:
    """``PATCH whep/ID``: trickled candidates → ``204 No Content``.

    Candidates that ICE may not use (mDNS names, TCP, past the per-viewer budget) are left out
    as they are from an offer, without failing the request; an ICE restart is refused (aiortc
    has none).
    """
    session = _session_of(request)
    _require_type(request, SDPFRAG)
    viewer_id = session.peer.viewer_id
    if not session.patches.allow():
        raise refused(429, f"at most {PATCH_RATE:g} PATCH requests a second", retry_after=1)
    if_match = request.headers.get("If-Match")
    if if_match is not None and if_match.strip() not in ("*", session.etag):
        raise refused(412, "If-Match does not name this session's ICE session (ETag)")
    try:
        frag = parse_sdpfrag(await _read_text(request, MAX_SDPFRAG_CHARS))
    except ValueError as exc:
        raise refused(400, f"not a trickle-ice-sdpfrag: {exc}") from exc
    if (frag.ufrag is not None and frag.ufrag != session.ufrag) or (
        frag.pwd is not None and frag.pwd != session.pwd
    ):
        # RFC 9725 §4.3.1: a session that trickles but cannot restart ICE answers 422.
        raise refused(422, "ICE restarts are not supported: make a new session")
    added = 0
    for mid, candidate in frag.candidates:
        try:
            # Under any section's mid (players trickle under the first one, often audio): the
            # offer is bundled, so every candidate is for the one transport.
            admitted = session.candidates.admit(candidate, mid, None)
            if admitted is not None:
                await session.peer.add_candidate(admitted, None, None)
                added += 1
        except NegotiationError as exc:
            session.refused_candidates += 1
            log = logger.info if session.refused_candidates <= 3 else logger.debug
            log("viewer %s: candidate left out: %s", viewer_id, exc)
    logger.debug("viewer %s: PATCH added %d of %d candidates%s", viewer_id, added,
                 len(frag.candidates), ", end" if frag.end_of_candidates else "")  # fmt: skip
    return web.Response(status=204)


async def delete_session(request: web.Request) -> web.Response:
    """``DELETE whep/ID``: the session ends; its peer is closed when this answers."""
    session = _session_of(request)
    await request.app[WhepSessions.KEY].end(session, "the player ended the WHEP session")
    return web.Response(status=200)


def _preflight(methods: str, **extra: str) -> web.Response:
    """CORS preflight (and plain OPTIONS): needs no token; browsers send none with it. The
    ``Access-Control-Allow-Origin`` header is added for ``--allow-origin`` origins only
    (:func:`signaling.security.add_cors_headers`)."""
    return web.Response(
        status=204,
        headers={
            "Allow": methods,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
            **extra,
        },
    )


async def options_endpoint(request: web.Request) -> web.Response:
    return _preflight("OPTIONS, POST", **{"Accept-Post": SDP})


async def options_resource(request: web.Request) -> web.Response:
    return _preflight("OPTIONS, PATCH, DELETE", **{"Accept-Patch": SDPFRAG})


async def _sessions_lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[WhepSessions.KEY].aclose()


def add_routes(app: web.Application) -> None:
    """WHEP on ``app`` (one camera's): ``whep`` and ``whep/{resource}``, and the sessions'
    owner, closed with the app."""
    app[WhepSessions.KEY] = WhepSessions()
    app.router.add_route("POST", "/whep", post_offer)
    app.router.add_route("OPTIONS", "/whep", options_endpoint)
    app.router.add_route("PATCH", "/whep/{resource}", patch_candidates)
    app.router.add_route("DELETE", "/whep/{resource}", delete_session)
    app.router.add_route("OPTIONS", "/whep/{resource}", options_resource)
    app.cleanup_ctx.append(_sessions_lifetime)
