"""ICE configuration: STUN/TURN servers and the local addresses ICE announces.

aioice gathers host candidates from every interface except loopback, with no option to choose.
Boards with several interfaces (and tests on loopback) need to choose, as MediaMTX's
``webrtcIPsFromInterfaces`` and go2rtc's ``webrtc.filters`` allow. :func:`announce_only` scopes a
choice to the current task through a context variable; :func:`_install` wraps aioice's address
lookup once, and the wrapper defers to aioice untouched wherever no choice is in force.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import hmac
import ipaddress
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
from aiortc import RTCIceServer

_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "peercam_ice_addresses", default=None
)
_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def _install() -> None:
    original = aioice.ice.get_host_addresses
    if getattr(original, "_peercam", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _ADDRESSES.get()
        if chosen is None:
            return original(use_ipv4, use_ipv6)
        return [
            a
            for a in chosen
            if (use_ipv4 and ipaddress.ip_address(a).version == 4)
            or (use_ipv6 and ipaddress.ip_address(a).version == 6)
        ]

    get_host_addresses._peercam = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses


@contextlib.contextmanager
def announce_only(addresses: Sequence[str]) -> Iterator[None]:
    """Within this block (and tasks it starts), ICE gathers host candidates on ``addresses`` only.

    An empty sequence leaves aioice's own choice (every non-loopback interface).
    """
    if not addresses:
        yield
        return
    for address in addresses:
        ipaddress.ip_address(address)  # raises ValueError for a bad address
    _install()
    token = _ADDRESSES.set(tuple(addresses))
    try:
        yield
    finally:
        _ADDRESSES.reset(token)


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN or TURN server, as the W3C ``RTCIceServer`` dictionary."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("an ICE server needs at least one URL")
        for url in self.urls:
            if not url.startswith(_SCHEMES) or len(url) <= url.index(":") + 1:
                raise ValueError(f"ICE server URL {url!r} must start with stun:, turn: or turns:")
            if url.startswith(("turn:", "turns:")) and (not self.username or not self.credential):
                raise ValueError(f"TURN server {url!r} needs a username and a credential")

    def to_aiortc(self) -> RTCIceServer:
        return RTCIceServer(
            urls=list(self.urls), username=self.username, credential=self.credential
        )

    def to_json(self) -> dict[str, Any]:
        """The browser's ``RTCIceServer`` dictionary."""
        data: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            data["username"] = self.username
        if self.credential is not None:
            data["credential"] = self.credential
        return data


@dataclass(frozen=True, slots=True)
class TurnSecret:
    """Time-limited TURN credentials from a shared secret (the TURN REST API scheme).

    coturn checks them with ``use-auth-secret`` and ``static-auth-secret=SECRET``: the username
    is ``<expiry unix time>:<label>`` and the password ``base64(HMAC-SHA1(secret, username))``.
    Each viewer gets its own, valid for ``ttl`` seconds, so no long-lived TURN password ever
    reaches a browser.
    """

    urls: tuple[str, ...]
    secret: str = field(repr=False)
    ttl: int = 86_400

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the TURN secret is empty")
        if self.ttl <= 0:
            raise ValueError("the TURN credential lifetime must be positive")
        for url in self.urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"{url!r}: a TURN secret only applies to turn: or turns: URLs")

    def mint(self, label: str, now: float | None = None) -> IceServer:
        """A TURN server entry with credentials for ``label`` (e.g. the viewer id)."""
        expiry = int(now if now is not None else time.time()) + self.ttl
        username = f"{expiry}:{label}"
        digest = hmac.new(self.secret.encode(), username.encode(), hashlib.sha1).digest()
        return IceServer(self.urls, username, base64.b64encode(digest).decode("ascii"))


def advertise(sdp: str, addresses: Sequence[str]) -> str:
    """Add, for each host candidate in ``sdp``, the same candidate at each of ``addresses``.

    For a server behind port forwarding or in a container: the viewer also tries the public
    (forwarded) address with the same port. Priorities are a little lower than the original's,
    so a direct path wins where both work.
    """
    if not addresses:
        return sdp
    out: list[str] = []
    for line in sdp.split("\r\n"):
        out.append(line)
        match = _HOST_CANDIDATE.match(line)
        if match is None:
            continue
        for n, address in enumerate(addresses, start=1):
            out.append(
                f"a=candidate:{match['foundation']}x{n} {match['component']} {match['transport']}"
                f" {max(1, int(match['priority']) - n)} {address} {match['port']} typ host"
                f"{match['rest']}"
            )
    return "\r\n".join(out)


_HOST_CANDIDATE = re.compile(
    r"a=candidate:(?P<foundation>\S+) (?P<component>\d+) (?P<transport>\S+) (?P<priority>\d+) "
    r"(?P<address>\S+) (?P<port>\d+) typ host(?P<rest>.*)$"
)
