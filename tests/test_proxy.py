"""Trusted reverse proxies: forwarded headers are believed from them, and from nobody else."""

from __future__ import annotations

import ipaddress
import logging

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from signaling.config import Config
from signaling.listener import ConnectionGate
from signaling.proxy import client_view, parse_network
from tests.conftest import ServerFactory, ws_url

TOKEN = "s3cret-proxy-token"
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def _view(peer: str, *pairs: tuple[str, str]) -> tuple[str, str, str, str | None]:
    view = client_view(peer, "http", "127.0.0.1", _headers(*pairs), LOOPBACK)
    return view.address, view.scheme, view.host, view.proxy


FORWARDED = (
    ("X-Forwarded-For", "198.51.100.66, 203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "cam.example:8443"),
)


def test_a_trusted_proxy_forwards_address_scheme_and_host() -> None:
    """The rightmost X-Forwarded-For entry is the one the proxy itself saw."""
    assert _view("127.0.0.1", *FORWARDED) == ("203.0.113.9", "https", "cam.example:8443",
                                              "127.0.0.1")  # fmt: skip
    # IPv4-mapped peers are their IPv4 address.
    assert _view("::ffff:127.0.0.1", *FORWARDED)[0] == "203.0.113.9"


def test_forwarded_headers_from_anyone_else_are_ignored() -> None:
    """Anyone can send X-Forwarded-For: only a proxy the operator named is believed."""
    assert _view("127.0.0.2", *FORWARDED) == ("127.0.0.2", "http", "127.0.0.1", None)
    nobody = client_view("127.0.0.1", "http", "h", _headers(*FORWARDED), ())
    assert (nobody.address, nobody.scheme, nobody.host) == ("127.0.0.1", "http", "h")
    assert Config().trusted_proxies == ()  # none by default, not even loopback


@pytest.mark.parametrize(
    ("pairs", "address"),
    [
        ((("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.9")), "203.0.113.9"),
        ((("X-Forwarded-For", "203.0.113.9:4711"),), "203.0.113.9"),
        ((("X-Forwarded-For", "2001:db8::1"),), "2001:db8::1"),
        ((("X-Forwarded-For", "[2001:db8::1]:4711"),), "2001:db8::1"),
        ((("Forwarded", 'for=6.6.6.6, for="[2001:db8::2]:4711";proto=https'),), "2001:db8::2"),
        # X-Forwarded-For wins over Forwarded; garbage leaves the proxy's own address.
        ((("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=6.6.6.6")), "203.0.113.9"),
        ((("X-Forwarded-For", "unknown"),), "127.0.0.1"),
        ((("X-Forwarded-For", "203.0.113.9, <script>"),), "127.0.0.1"),
        ((), "127.0.0.1"),
    ],
)
def test_the_client_address_forms(pairs: tuple[tuple[str, str], ...], address: str) -> None:
    """Every form nginx, Caddy and RFC 7239 use; nothing else becomes an address."""
    assert _view("127.0.0.1", *pairs)[0] == address


def test_bad_forwarded_scheme_or_host_fall_back_to_this_hop() -> None:
    """A forwarded host with a path, or a scheme that is not http(s), is not believed."""
    view = _view("127.0.0.1", ("X-Forwarded-Proto", "javascript"), ("X-Forwarded-Host", "evil/x@y"))
    assert view[1:3] == ("http", "127.0.0.1")
    forwarded = _view("127.0.0.1", ("Forwarded", 'for=1.2.3.4;proto=https;host="cam.example"'))
    assert forwarded[:3] == ("1.2.3.4", "https", "cam.example")


def test_trusted_proxy_values_are_checked() -> None:
    """A typo in --trusted-proxy is an error at start, not a silent no-match."""
    assert str(parse_network("10.0.0.0/8")) == "10.0.0.0/8"
    assert str(parse_network("::1")) == "::1/128"
    with pytest.raises(ValueError, match="address or a CIDR"):
        parse_network("proxy.lan")


def test_a_trusted_proxy_may_hold_more_connections_than_one_client() -> None:
    """At accept time a proxy's connections are everyone's: only the total caps them."""
    gate = ConnectionGate(total=20, per_client=2, trusted=LOOPBACK)
    assert all(gate.admit("127.0.0.1") for _ in range(10))
    assert gate.admit("127.0.0.2")
    assert gate.admit("127.0.0.2")
    assert gate.admit("127.0.0.2") is None


async def _first(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str] | None = None,
    origin: str | None = None,
) -> aiohttp.WSMessage:
    """The first message a new WebSocket gets (a close, for a refused one)."""
    async with http.ws_connect(url, headers=headers, origin=origin) as ws:
        msg: aiohttp.WSMessage = await ws.receive(timeout=10)
        return msg


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_cap(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind nginx everyone is 127.0.0.1: the per-client cap must count the real clients."""
    caplog.set_level(logging.INFO)
    server = await make_server(max_per_address=1, trusted_proxies=LOOPBACK)
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(ws_url(server), headers={"X-Forwarded-For": "203.0.113.1"})
        try:
            assert (await first.receive_json(timeout=10))["type"] == "config"
            other = await _first(http, ws_url(server), headers={"X-Forwarded-For": "203.0.113.2"})
            assert other.type == aiohttp.WSMsgType.TEXT
            same = await _first(http, ws_url(server), headers={"X-Forwarded-For": "203.0.113.1"})
            assert (same.type, same.data) == (aiohttp.WSMsgType.CLOSE, 1008)
            assert "203.0.113.1" in (same.extra or "")
        finally:
            await first.close()
    assert "connected from 203.0.113.2" in caplog.text


async def test_spoofed_forwarded_headers_do_not_escape_the_cap(
    make_server: ServerFactory,
) -> None:
    """Without --trusted-proxy a client cannot become many clients by naming them."""
    server = await make_server(max_per_address=1)
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(ws_url(server))
        try:
            assert (await first.receive_json(timeout=10))["type"] == "config"
            spoofed = await _first(http, ws_url(server), headers={"X-Forwarded-For": "203.0.113.7"})
            assert (spoofed.type, spoofed.data) == (aiohttp.WSMsgType.CLOSE, 1008)
            assert "127.0.0.1" in (spoofed.extra or "")
        finally:
            await first.close()


async def _cookie_of(server: TestServer, **headers: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            server.make_url("/"), params={"token": TOKEN}, headers=headers, allow_redirects=False
        ) as response,
    ):
        assert response.status == 303
        return response.headers["Set-Cookie"]


async def test_the_cookie_is_secure_exactly_when_the_client_used_https(
    make_server: ServerFactory,
) -> None:
    """Behind a TLS proxy the cookie must be Secure; a spoofed header must not decide it."""
    trusted = await make_server(token=TOKEN, trusted_proxies=LOOPBACK)
    assert "Secure" in await _cookie_of(trusted, **{"X-Forwarded-Proto": "https"})
    assert "Secure" not in await _cookie_of(trusted, **{"X-Forwarded-Proto": "http"})
    assert "Secure" not in await _cookie_of(trusted)
    untrusted = await make_server(token=TOKEN)
    cookie = await _cookie_of(untrusted, **{"X-Forwarded-Proto": "https"})
    assert "Secure" not in cookie
    assert "HttpOnly" in cookie
    assert "Path=" not in cookie  # the page's directory: one cookie per path prefix


async def test_the_origin_check_compares_with_the_forwarded_origin(
    make_server: ServerFactory,
) -> None:
    """The browser's https://cam.example:8443 is this server's own origin through the proxy."""
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "cam.example:8443"}
    origin = "https://cam.example:8443"
    trusted = await make_server(token=TOKEN, trusted_proxies=LOOPBACK)
    untrusted = await make_server(token=TOKEN)
    query = f"?token={TOKEN}"
    async with aiohttp.ClientSession() as http:
        ok = await _first(http, ws_url(trusted) + query, headers=proxied, origin=origin)
        assert ok.type == aiohttp.WSMsgType.TEXT
        assert "config" in ok.data
        other = await _first(
            http, ws_url(trusted) + query, headers=proxied, origin="https://cam.example:9443"
        )
        assert (other.type, other.data) == (aiohttp.WSMsgType.CLOSE, 4403)
        spoofed = await _first(http, ws_url(untrusted) + query, headers=proxied, origin=origin)
        assert (spoofed.type, spoofed.data) == (aiohttp.WSMsgType.CLOSE, 4403)
        assert origin in (spoofed.extra or "")
        assert "--trusted-proxy" in (spoofed.extra or "")
        assert len((spoofed.extra or "").encode()) <= 123


async def test_without_auth_the_forwarded_host_name_decides(make_server: ServerFactory) -> None:
    """--no-auth behind a proxy: the browser's Host name (any port) is checked, and a spoofed
    X-Forwarded-Host from anyone else does not get a rebinding page in."""
    trusted = await make_server(token=None, trusted_proxies=LOOPBACK)
    untrusted = await make_server(token=None)
    status = "/api/status"
    async with aiohttp.ClientSession() as http:
        for host, expected in (("127.0.0.1:8443", 200), ("attacker.example:8443", 421)):
            headers = {"X-Forwarded-Host": host}
            async with http.get(trusted.make_url(status), headers=headers) as response:
                assert response.status == expected, host
        headers = {"Host": "attacker.example", "X-Forwarded-Host": "127.0.0.1"}
        async with http.get(untrusted.make_url(status), headers=headers) as response:
            assert response.status == 421
