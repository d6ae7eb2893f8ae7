"""Fan-out through Janus: each ``--janus URL`` gets the top rung of the ladder as plain RTP.

For every URL one :class:`JanusFeed` owns one task: it opens a Janus session over the HTTP
API, attaches the streaming plugin, creates a public RTP mountpoint (numeric id, "peercam" in
its description) and feeds it with an :class:`webrtc.rtp_out.RtpSender`, which holds one lease
on the shared encoder of the top rung, exactly as a page viewer on that rung does: the encode
is shared with every viewer and every other Janus. Janus makes the offers to its own viewers
(attach, ``watch``, answer, ``start``), forwards their PLI/FIR to the feed's RTCP socket and
replays the last keyframe to late joiners (``bufferkf``).

A Janus that is away, restarts or loses the mountpoint is noticed by the session keepalive or
by the ICMP "port unreachable" the RTP socket gets, and retried with backoff; none of it
touches peercam's own viewers. No admin key or API secret is assumed.

Why the rung is fixed (the top one): Janus relays one stream to all its viewers; it forwards
their keyframe requests and the lowest REMB, but a ladder per Janus viewer would be Janus'
simulcast, which this feed does not do.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import secrets
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from webrtc.encoders import Codec, EncoderPool, VideoKey
from webrtc.latest import LatestClosed
from webrtc.rtp_out import (
    PAYLOAD_TYPE,
    RtpCounters,
    RtpOutputError,
    RtpSender,
    RtpTarget,
    first_of,
)

if TYPE_CHECKING:
    from .state import Service

logger = logging.getLogger(__name__)

STREAMING_PLUGIN = "janus.plugin.streaming"
#: Janus drops a session after 60 s without a request (its default ``session_timeout``).
KEEPALIVE_INTERVAL = 15.0
REQUEST_TIMEOUT = 5.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0
#: The fmtp of the mountpoint: what the shared H.264 encoder makes (constrained baseline).
H264_FMTP = "profile-level-id=42e01f;packetization-mode=1"
#: Janus' error code for a mountpoint that does not exist.
NO_SUCH_MOUNTPOINT = 455


class JanusError(Exception):
    """Janus refused a request, answered nonsense, or cannot be reached.

    ``code``: the streaming plugin's error code, when it gave one.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Mountpoint:
    """A mountpoint this feed created: its id and the ports Janus listens on for it."""

    id: int
    port: int
    rtcp_port: int


class JanusSession:
    """One Janus API session over HTTP with the streaming plugin attached.

    ``async with JanusSession(http, url) as janus``: creates the session and the handle;
    leaving destroys the session (best effort: Janus may be gone).
    """

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self._http = http
        self.url = url.rstrip("/")
        self.session_id: int | None = None
        self.handle_id: int | None = None

    async def __aenter__(self) -> JanusSession:
        reply = await self._post(self.url, {"janus": "create"})
        self.session_id = _integer(reply.get("data"), "id")
        try:
            reply = await self._post(
                f"{self.url}/{self.session_id}", {"janus": "attach", "plugin": STREAMING_PLUGIN}
            )
            self.handle_id = _integer(reply.get("data"), "id")
        except BaseException:
            await self._destroy()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._destroy()

    async def _destroy(self) -> None:
        if self.session_id is None:
            return
        session, self.session_id, self.handle_id = self.session_id, None, None
        with contextlib.suppress(JanusError):
            await self._post(f"{self.url}/{session}", {"janus": "destroy"})

    async def keepalive(self) -> None:
        """Raises :class:`JanusError` when the session is gone (Janus restarted)."""
        await self._post(f"{self.url}/{self.session_id}", {"janus": "keepalive"})

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous streaming-plugin request (create, list, info, destroy); its data.

        Raises:
            JanusError: the transport failed, or Janus or the plugin answered an error
                (the plugin's code in ``args[1]``).
        """
        reply = await self._post(
            f"{self.url}/{self.session_id}/{self.handle_id}", {"janus": "message", "body": body}
        )
        plugindata = reply.get("plugindata")
        data = plugindata.get("data") if isinstance(plugindata, dict) else None
        if not isinstance(data, dict):
            raise JanusError(f"{body.get('request')}: no plugin data in {reply}")
        if "error_code" in data or "error" in data:
            code = data.get("error_code")
            raise JanusError(
                f"{body.get('request')}: {data.get('error')}",
                code if isinstance(code, int) else None,
            )
        return data

    async def create_mountpoint(self, description: str, codec: Codec) -> Mountpoint:
        """A public RTP mountpoint with one video stream on ports Janus picks."""
        media: dict[str, Any] = {
            "type": "video",
            "mid": "v",
            "port": 0,  # 0: a free port of the plugin's rtp_port_range
            "rtcpport": 0,
            "pt": PAYLOAD_TYPE,
            "codec": str(codec),
            "bufferkf": True,  # late joiners get the last keyframe at once
        }
        if codec is Codec.H264:
            media["fmtp"] = H264_FMTP
        data = await self.request(
            {
                "request": "create",
                "type": "rtp",
                "id": random.randrange(1, 2**31),
                "name": description,
                "description": description,
                "is_private": False,
                "permanent": False,
                "media": [media],
            }
        )
        stream = data.get("stream")
        mountpoint_id = _integer(stream, "id")
        ports = stream.get("ports") if isinstance(stream, dict) else None
        try:
            if not isinstance(ports, list) or not ports:
                raise JanusError(f"create: no ports in {data}")
            return Mountpoint(
                mountpoint_id, _integer(ports[0], "port"), _integer(ports[0], "rtcp_port")
            )
        except JanusError:
            with contextlib.suppress(JanusError):
                await self.destroy_mountpoint(mountpoint_id)
            raise

    async def mountpoints(self) -> list[dict[str, Any]]:
        data = await self.request({"request": "list"})
        listed = data.get("list")
        return [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []

    async def destroy_mountpoint(self, mountpoint_id: int) -> None:
        await self.request({"request": "destroy", "id": mountpoint_id})

    async def has_mountpoint(self, mountpoint_id: int) -> bool:
        try:
            await self.request({"request": "info", "id": mountpoint_id})
        except JanusError as exc:
            if exc.code == NO_SUCH_MOUNTPOINT:
                return False
            raise
        return True

    async def _post(self, url: str, message: dict[str, Any]) -> dict[str, Any]:
        transaction = secrets.token_hex(8)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                async with self._http.post(url, json=message | {"transaction": transaction}) as r:
                    reply = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JanusError(f"{message['janus']}: {exc!r}") from exc
        if not isinstance(reply, dict):
            raise JanusError(f"{message['janus']}: not a JSON object")
        if reply.get("janus") == "error":
            error = reply.get("error")
            reason = error.get("reason") if isinstance(error, dict) else error
            raise JanusError(f"{message['janus']}: {reason}")
        if reply.get("janus") not in ("success", "ack"):
            raise JanusError(f"{message['janus']}: unexpected reply {reply.get('janus')!r}")
        return reply


def _integer(value: object, name: str) -> int:
    item = value.get(name) if isinstance(value, dict) else None
    if not isinstance(item, int) or isinstance(item, bool):
        raise JanusError(f"no integer {name!r} in Janus' reply: {value}")
    return item


class FeedState(enum.StrEnum):
    CONNECTING = "connecting"
    FEEDING = "feeding"
    RETRYING = "retrying"
    STOPPED = "stopped"


class JanusFeed:
    """The output to one Janus: its session, mountpoint and RTP feed, recreated as needed."""

    def __init__(
        self, url: str, service: Service, http: aiohttp.ClientSession, *, description: str
    ) -> None:
        self.url = url
        self.description = description
        self._service = service
        self._encoders: EncoderPool = service.encoders
        self._http = http
        self.state = FeedState.CONNECTING
        self.counters = RtpCounters()
        self.mountpoint: Mountpoint | None = None
        self.key: VideoKey | None = None
        self.connects = 0
        self.failures = 0
        self.last_error = ""
        self._since = time.monotonic()

    async def run(self) -> None:
        """Feed Janus until cancelled; every failure is retried with backoff.

        One warning when the feed stops (or cannot start), one line when it is back; the
        retries between are logged at DEBUG, so a Janus that is down for a day costs no log.
        """
        backoff = BACKOFF_FIRST
        in_row = 0
        try:
            while True:
                self._set_state(FeedState.CONNECTING)
                try:
                    await self._feed_once()
                except (JanusError, RtpOutputError, OSError) as exc:
                    self.last_error = str(exc)
                except Exception as exc:  # a bug: logged in full, and the feed carries on
                    self.last_error = repr(exc)
                    logger.exception("janus %s: unexpected error", self.url)
                if self.state is FeedState.FEEDING:
                    backoff, in_row = BACKOFF_FIRST, 0  # it worked until now: retry soon
                self.failures += 1
                in_row += 1
                logger.log(
                    logging.WARNING if in_row == 1 else logging.DEBUG,
                    "janus %s: %s; retrying (in %.1f s, then with backoff)",
                    self.url,
                    self.last_error,
                    backoff,
                )
                self._set_state(FeedState.RETRYING)
                self.mountpoint = None
                await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
                backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            self._set_state(FeedState.STOPPED)

    async def _feed_once(self) -> None:
        key = self.key = await self._top_key()
        host = urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"
        async with JanusSession(self._http, self.url) as janus:
            mountpoint = await janus.create_mountpoint(self.description, key.codec)
            try:
                self.mountpoint = mountpoint
                target = RtpTarget(host, mountpoint.port, mountpoint.rtcp_port)
                async with RtpSender(
                    self._encoders, key, target, counters=self.counters, name=f"janus {self.url}"
                ) as sender:
                    self.connects += 1
                    self._set_state(FeedState.FEEDING)
                    logger.info("janus %s: feeding mountpoint %d", self.url, mountpoint.id)
                    await first_of(sender.run(), self._watch(janus, sender, mountpoint))
            finally:
                # Cancelled (shutdown) or failed: a mountpoint nobody feeds is of no use.
                with contextlib.suppress(JanusError):
                    await janus.destroy_mountpoint(mountpoint.id)

    async def _watch(self, janus: JanusSession, sender: RtpSender, mountpoint: Mountpoint) -> None:
        """Keep the session alive; raise :class:`JanusError` once Janus or the mountpoint is
        gone (the keepalive fails, or the RTP socket is refused and the mountpoint is no more)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KEEPALIVE_INTERVAL):
                    await sender.refused.wait()
            await janus.keepalive()
            if sender.refused.is_set():
                sender.refused.clear()
                if not await janus.has_mountpoint(mountpoint.id):
                    raise JanusError(f"mountpoint {mountpoint.id} is gone")

    async def _top_key(self) -> VideoKey:
        """The top rung of the ladder of the feed's codec (H.264 unless ``--codec vp8``)."""
        service = self._service
        codecs = service.config.codecs
        codec = Codec.H264 if Codec.H264 in codecs else codecs[0]
        newest = service.source.frames.get()
        if newest is None:
            try:
                newest = await service.source.frames.next(0)
            except LatestClosed:
                raise RtpOutputError("the source has stopped") from None
        top = service.peers.ladder_for(newest[1].width, newest[1].height)[0]
        return VideoKey(codec, top.height, top.bitrate, top.fps)

    def _set_state(self, state: FeedState) -> None:
        if state is not self.state:
            self.state = state
            self._since = time.monotonic()

    def stats(self) -> dict[str, object]:
        """For /api/status (``janus``) and metrics."""
        c = self.counters
        return {
            "url": self.url,
            "state": str(self.state),
            "stateSeconds": round(time.monotonic() - self._since, 1),
            "mountpoint": self.mountpoint.id if self.mountpoint else None,
            "encoder": str(self.key) if self.key else None,
            "packets": c.packets,
            "bytes": c.bytes,
            "frames": c.frames,
            "keyframes": c.keyframes,
            "keyframeRequests": c.keyframe_requests,
            "droppedFrames": c.dropped_frames,
            "connects": self.connects,
            "failures": self.failures,
            "lastError": self.last_error,
        }


@contextlib.asynccontextmanager
async def feed_janus(service: Service) -> AsyncIterator[None]:
    """Feed every ``--janus`` URL of ``service`` while the block runs (the app's lifetime)."""
    urls = service.config.janus
    if not urls:
        yield
        return
    # What a person choosing among Janus' mountpoints needs: which peercam, which camera.
    where = f"{socket.gethostname()}:{service.config.port}"
    description = f"peercam {where} {service.source.description}"
    async with aiohttp.ClientSession() as http:
        feeds = [JanusFeed(url, service, http, description=description) for url in urls]
        service.janus.extend(feeds)
        tasks = [asyncio.create_task(feed.run(), name=f"janus {feed.url}") for feed in feeds]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for feed in feeds:
                service.janus.remove(feed)
