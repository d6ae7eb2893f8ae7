"""Who the client is: the TCP peer, or what a trusted reverse proxy says it forwarded.

Behind nginx or Caddy every connection comes from the proxy, over plain HTTP, with the proxy's
own ``Host``. The proxy tells the truth in ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` (or RFC
7239 ``Forwarded``), but anyone else can send the same headers, so they are believed only from
a peer inside ``--trusted-proxy``. :func:`client_view` is pure (no aiohttp): the security
middleware calls it once per request and every later decision (caps, limits, the Origin check,
the cookie's ``Secure`` flag, the ``--no-auth`` Host check, the logs) reads its result.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from multidict import CIMultiDictProxy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A forwarded host: a name or an address with an optional port, nothing else.
_HOST = re.compile(r"^(?:\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?$", re.IGNORECASE)
_MAX_HOST = 255


@dataclass(frozen=True, slots=True)
class ClientView:
    """One request as the client made it.

    ``address`` is the client's IP address (the TCP peer's, or the forwarded one), ``scheme``
    ``http`` or ``https`` and ``host`` the ``host[:port]`` the client asked for; ``proxy`` is the
    trusted proxy's address when the view came through one, else None.
    """

    address: str
    scheme: str
    host: str
    proxy: str | None = None

    @property
    def origin(self) -> str:
        """``scheme://host``: what a browser's Origin header says for a same-origin page."""
        return f"{self.scheme}://{self.host}".lower()

    def describe(self) -> str:
        """For logs: ``203.0.113.9`` or ``203.0.113.9 via 127.0.0.1``."""
        return self.address if self.proxy is None else f"{self.address} via {self.proxy}"


def parse_network(text: str) -> Network:
    """``--trusted-proxy`` value (an address or a CIDR) → a network.

    Raises:
        ValueError: neither an address nor a network.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"--trusted-proxy {text!r}: give an address or a CIDR, e.g. 127.0.0.1 or 10.0.0.0/8"
        ) from None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_trusted(address: str | None, networks: Sequence[Network]) -> bool:
    """Is ``address`` (a TCP peer) inside one of the trusted proxies' networks?"""
    if not address or not networks:
        return False
    ip = _ip(address)
    return ip is not None and any(ip in network for network in networks)


def _node_address(text: str) -> str | None:
    """One ``X-Forwarded-For`` entry or ``Forwarded: for=`` node → an IP address, else None.

    Accepts ``203.0.113.9``, ``203.0.113.9:4711``, ``2001:db8::1``, ``[2001:db8::1]:4711``;
    ``unknown``, obfuscated names (``_hidden``) and garbage give None.
    """
    node = text.strip().strip('"')
    if node.startswith("["):
        node = node[1:].split("]", 1)[0]
    elif node.count(":") == 1:
        node = node.split(":", 1)[0]
    ip = _ip(node)
    return None if ip is None else str(ip)


def _split_list(values: Iterable[str]) -> list[str]:
    """Every header line of a comma-separated list header, in order, as one list."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _forwarded_elements(values: Iterable[str]) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` → one dict per element (``for``, ``proto``, ``host``, ``by``).

    Values may be quoted strings; a quoted comma or semicolon does not split.
    """
    elements: list[dict[str, str]] = []
    for value in values:
        current: dict[str, str] = {}
        pair, quoted = "", False
        for char in value + ",":
            if char == '"':
                quoted = not quoted
            if not quoted and char in ",;":
                name, sep, item = pair.partition("=")
                if sep:
                    current[name.strip().lower()] = item.strip().strip('"')
                pair = ""
                if char == ",":
                    if current:
                        elements.append(current)
                    current = {}
                continue
            pair += char
    return elements


def _rightmost(values: Sequence[str]) -> str | None:
    return values[-1] if values else None


def client_view(
    peer: str | None,
    scheme: str,
    host: str,
    headers: CIMultiDictProxy[str],
    trusted: Sequence[Network],
) -> ClientView:
    """The request as the client made it, given the TCP ``peer`` and this hop's ``scheme`` and
    ``host``; forwarding headers count only when ``peer`` is a trusted proxy.

    The client's address is the rightmost ``X-Forwarded-For`` entry (else the last
    ``Forwarded: for=``): the trusted proxy appends the address it saw, and everything to its
    left is whatever the client sent. An entry that is not an address (``unknown``, garbage)
    leaves the proxy's own address: the client is then counted as the proxy.
    """
    address = peer or "?"
    if not is_trusted(peer, trusted):
        return ClientView(address=address, scheme=scheme, host=host)
    elements = _forwarded_elements(headers.getall("Forwarded", ()))
    chain = _split_list(headers.getall("X-Forwarded-For", ())) or [
        e["for"] for e in elements if "for" in e
    ]
    node = _node_address(chain[-1]) if chain else None
    if node is not None:
        address = node
    protos = _split_list(headers.getall("X-Forwarded-Proto", ())) or [
        e["proto"] for e in elements if "proto" in e
    ]
    proto = (_rightmost(protos) or "").lower()
    hosts = _split_list(headers.getall("X-Forwarded-Host", ())) or [
        e["host"] for e in elements if "host" in e
    ]
    forwarded_host = _rightmost(hosts)
    if forwarded_host is not None and (
        len(forwarded_host) > _MAX_HOST or not _HOST.match(forwarded_host)
    ):
        forwarded_host = None
    return ClientView(
        address=address,
        scheme=proto if proto in ("http", "https") else scheme,
        host=forwarded_host or host,
        proxy=peer,
    )
