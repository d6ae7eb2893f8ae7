"""ICE configuration: STUN/TURN servers and the local addresses ICE announces.

aioice gathers host candidates from every interface except loopback, with no option to choose.
Boards with several interfaces (and tests on loopback) need to choose, as MediaMTX's
``webrtcIPsFromInterfaces`` and go2rtc's ``webrtc.filters`` allow. :func:`announce_only` scopes a
choice to the current task through a context variable; :func:`_install` wraps aioice's address
lookup once, and the wrapper defers to aioice untouched wherever no choice is in force.

aioice also binds its host sockets on ephemeral ports, with no option to choose (aioice 0.13 has
none), so a server behind a port forward cannot be reached. :func:`bind_within` scopes a
:class:`PortRange` the same way: :func:`_install_ports` wraps aioice's per-component gathering
once, binds each host socket on the first free port of the range (and asks STUN through it, as
aioice does), and leaves the rest (TURN) to aioice. ``tests/test_udp_ports.py`` fails when an
aioice upgrade breaks the hook.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import errno
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import aioice.turn
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCIceServer

from .errors import NoUdpPort

logger = logging.getLogger(__name__)

_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "peercam_ice_addresses", default=None
)
_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


@dataclass(frozen=True, slots=True)
class PortRange:
    """UDP ports ``low``-``high`` (inclusive) that ICE host sockets are bound in."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1024 <= self.low <= self.high <= 65535:
            raise ValueError(f"UDP ports {self}: need 1024 <= LO <= HI <= 65535")

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"LO-HI"`` (or one port, ``"P"``)."""
        low, sep, high = text.strip().partition("-")
        try:
            return cls(int(low), int(high if sep else low))
        except ValueError:
            raise ValueError(f"UDP ports {text!r}: need LO-HI, 1024 <= LO <= HI <= 65535") from None

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high


_PORTS: contextvars.ContextVar[PortRange | None] = contextvars.ContextVar(
    "peercam_ice_ports", default=None
)


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


@contextlib.contextmanager
def bind_within(ports: PortRange | None) -> Iterator[None]:
    """Within this block (and tasks it starts), every ICE host socket is bound in ``ports``.

    Gathering raises :class:`~webrtc.errors.NoUdpPort` when an announced address has no free
    port left in the range (the sockets it bound on other addresses are closed first). None
    leaves aioice's own choice (ephemeral ports).
    """
    if ports is None:
        yield
        return
    _install_ports()
    token = _PORTS.set(ports)
    try:
        yield
    finally:
        _PORTS.reset(token)


def _install_ports() -> None:
    cls = aioice.ice.Connection
    original = cls.get_component_candidates
    if getattr(original, "_peercam", False):
        return

    async def get_component_candidates(
        self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        ports = _PORTS.get()
        if ports is None or not addresses:
            return await original(self, component, addresses, timeout)
        hosts = await _bind_hosts(self, component, addresses, ports)
        self._protocols += hosts
        # aioice's own method, given no address, does only what needs no host socket (TURN).
        reflexive: list[asyncio.Task[tuple[Candidate, None]]] = []
        if self.stun_server:
            for protocol in hosts:
                if ipaddress.ip_address(protocol.local_candidate.host).version == 4:
                    reflexive.append(
                        asyncio.create_task(
                            aioice.ice.server_reflexive_candidate(protocol, self.stun_server)
                        )
                    )
        others = await original(self, component, [], timeout)
        candidates = [p.local_candidate for p in hosts]
        if reflexive:
            done, pending = await asyncio.wait(reflexive, timeout=timeout)
            for task in pending:
                task.cancel()
            candidates += [t.result()[0] for t in done if t.exception() is None]
        return candidates + others

    get_component_candidates._peercam = True  # type: ignore[attr-defined]
    cls.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


async def _bind_hosts(
    connection: aioice.ice.Connection, component: int, addresses: list[str], ports: PortRange
) -> list[aioice.ice.StunProtocol]:
    """One host socket per address on its first free port of ``ports`` (as aioice's own
    gathering does on an ephemeral port); an address that cannot be bound at all is skipped, as
    aioice skips it. Raises NoUdpPort, with nothing left open, when every port is taken."""
    loop = asyncio.get_running_loop()
    bound: list[aioice.ice.StunProtocol] = []
    try:
        for address in addresses:
            for port in range(ports.low, ports.high + 1):
                try:
                    transport, protocol = await loop.create_datagram_endpoint(
                        lambda: aioice.ice.StunProtocol(connection), local_addr=(address, port)
                    )
                except OSError as exc:
                    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                        continue
                    logger.info("could not bind to %s: %s", address, exc)
                    break
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE
                    )
                host, bound_port = transport.get_extra_info("sockname")[:2]
                protocol.local_candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", host),
                    component=component,
                    transport="udp",
                    priority=candidate_priority(component, "host"),
                    host=host,
                    port=bound_port,
                    type="host",
                )
                bound.append(protocol)
                break
            else:
                raise NoUdpPort(f"every UDP port of {ports} is taken on {address}")
    except BaseException:
        for protocol in bound:
            if protocol.transport is not None:
                protocol.transport.close()
        raise
    return bound


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
