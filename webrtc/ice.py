"""ICE configuration: STUN/TURN servers and the local addresses ICE announces.

aioice gathers host candidates from every interface except loopback, with no option to choose.
Boards with several interfaces (and tests on loopback) need to choose, as MediaMTX's
``webrtcIPsFromInterfaces`` and go2rtc's ``webrtc.filters`` allow. :func:`announce_only` scopes a
choice to the current task through a context variable; :func:`_install` wraps aioice's address
lookup once, and the wrapper defers to aioice untouched wherever no choice is in force.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
