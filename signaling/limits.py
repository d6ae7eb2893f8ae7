"""Limits against hostile clients: who a client is, token buckets, quiet warnings, fd budget.

Pure bookkeeping with no I/O, used by the listener (connections at accept time), the security
middleware (long-lived consumers, snapshots, TURN credentials) and the picture handlers.
docs/design.md ("Limits against hostile clients") lists every limit and its flag.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import resource
import time
from collections import OrderedDict

from aiohttp import WSMsgType

#: WebSocket frames that cost the server work and so count against a socket's rate limit.
#: Pings and pongs are included: aiohttp answers pings itself unless ``autoping=False``.
COUNTED_FRAMES = frozenset({WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG})

#: File descriptors kept for everything but TCP connections (files, pipes, the camera, the
#: event loop), and per viewer for its ICE sockets (one UDP socket per announced address).
RESERVED_FDS = 64
FDS_PER_VIEWER = 4
#: Connections served at once when the fd limit allows more.
DEFAULT_MAX_CONNECTIONS = 1000
#: The soft fd limit is raised towards the hard one at start, up to this.
WANTED_FDS = 65536
#: How many clients' buckets are remembered; the oldest is forgotten first (a fresh bucket).
MAX_TRACKED_CLIENTS = 4096
#: TURN credentials minted per client: a burst, then this many per second.
TURN_MINT_RATE, TURN_MINT_BURST = 0.5, 20.0

_TOKEN_IN_QUERY = re.compile(r"(?i)(token=)[^&\s\"]*")


def client_of(address: str | None) -> str:
    """The key a client is counted under: its IPv4 address, or its IPv6 /64.

    One IPv6 host usually owns a whole /64, so counting exact addresses would give it 2**64
    slots. IPv4-mapped addresses count as the IPv4 address.
    """
    if not address:
        return "?"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def redact_token(text: str) -> str:
    """``?token=secret`` → ``?token=***``: for anything that logs a URL."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


class TokenBucket:
    """``rate`` events per second, bursts up to ``burst``; ``refused`` counts the rest."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = time.monotonic()
        self.refused = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.refused += 1
        return False


class ClientBuckets:
    """One :class:`TokenBucket` per client, for at most ``MAX_TRACKED_CLIENTS`` clients."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.refused = 0

    def allow(self, client: str) -> bool:
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > MAX_TRACKED_CLIENTS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        allowed = bucket.allow()
        if not allowed:
            self.refused += 1
        return allowed


class QuietWarning:
    """A WARNING at most once per ``interval`` seconds, with how many were held back.

    A limit that is hit thousands of times a second must not turn into a log flood.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, level: int = logging.WARNING
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._last = -interval
        self._held = 0

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._held += 1
            return
        held, self._held, self._last = self._held, 0, now
        suffix = f" ({held} more since the last warning)" if held else ""
        self._logger.log(self._level, "%s%s", message % args, suffix)  # formatted when logged


def raise_fd_limit(wanted: int = WANTED_FDS) -> int:
    """Raise the soft fd limit towards the hard one where allowed; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return fd_limit()


def fd_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return WANTED_FDS if soft == resource.RLIM_INFINITY else int(soft)


def connection_budget(fds: int, max_viewers: int) -> int:
    """TCP connections that fit under ``fds`` file descriptors next to ``max_viewers`` peers."""
    return max(16, fds - RESERVED_FDS - FDS_PER_VIEWER * max_viewers)
