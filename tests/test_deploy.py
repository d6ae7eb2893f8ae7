"""peercam behind real reverse proxies (Debian's nginx and Caddy), with TLS, under /cam/.

Each proxy runs as a child process with its own configuration, pid, logs and state in a
temporary directory (no system service). Its site is the documented file itself
(``docs/deploy/nginx.conf``, ``docs/deploy/Caddyfile``) with only the listen address, the
certificate paths and peercam's port replaced, so the documentation cannot drift from what is
tested. The module runs every test once per proxy; one proxy, one Chromium and the peercam
servers live for all of that proxy's tests (one event loop: Playwright and aiohttp are bound to
the loop that made them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page

from signaling import tls
from signaling.app import create_app
from signaling.listener import Listener
from signaling.state import Service
from tests.browser import view_until
from tests.conftest import LOOPBACK_CONFIG
from tests.processes import stop_process
from webrtc import timebar
from webrtc.sources import TestPatternSource

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parent.parent
NGINX_SITE = ROOT / "docs" / "deploy" / "nginx.conf"
CADDY_SITE = ROOT / "docs" / "deploy" / "Caddyfile"
TOKEN = "s3cret-deploy-token"
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
#: Per forwarded client: 30 viewers through one proxy are served only if each counts alone.
MAX_PER_ADDRESS = 2
VIEWERS = 30
SLOW_FPS = 4.0


def _replaced(text: str, replacements: list[tuple[str, str]], name: str) -> str:
    for old, new in replacements:
        assert text.count(old) == 1, f"{name} changed: {old!r}"
        text = text.replace(old, new)
    return text


def nginx_site(*, listen: int, cert: Path, key: Path, upstream: int, buffering: bool = True) -> str:
    """The documented site with this machine's values; ``buffering=False`` leaves out
    ``proxy_buffering off`` (then only peercam's ``X-Accel-Buffering: no`` keeps MJPEG live)."""
    text = NGINX_SITE.read_text()
    replacements = [
        ("listen 443 ssl;", f"listen 127.0.0.1:{listen} ssl;"),
        ("/etc/letsencrypt/live/cam.example.org/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/cam.example.org/privkey.pem", str(key)),
        ("proxy_pass http://127.0.0.1:9000/;", f"proxy_pass http://127.0.0.1:{upstream}/;"),
    ]
    if not buffering:
        replacements.append(("proxy_buffering off;", ""))
    return _replaced(text, replacements, "docs/deploy/nginx.conf")


def nginx_main(directory: Path, sites: list[str]) -> str:
    """nginx.conf for a private nginx: every path inside ``directory``."""
    d = directory
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers read the temp dirs
    temp = "".join(
        f"    {kind}_temp_path {d / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # The site's map is at http level: defined once, by the first site.
    body = sites[0] + "".join(site[site.index("server {") :] for site in sites[1:])
    return (
        f"{user}worker_processes 1;\npid {d / 'nginx.pid'};\n"
        f"error_log {d / 'error.log'} info;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n    access_log {d / 'access.log'};\n{temp}{body}\n}}\n"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def caddy_site(*, listen: int, cert: Path, key: Path, upstream: int, log: Path) -> str:
    """The documented Caddyfile's site with this machine's values (and an access log)."""
    return _replaced(
        CADDY_SITE.read_text(),
        [
            ("cam.example.org {", f"https://127.0.0.1:{listen} {{\n\ttls {cert} {key}\n"
                                  f"\tlog {{\n\t\toutput file {log}\n\t}}"),
            ("reverse_proxy 127.0.0.1:9000 {", f"reverse_proxy 127.0.0.1:{upstream} {{"),
        ],
        "docs/deploy/Caddyfile",
    )  # fmt: skip


def caddy_main(sites: list[str]) -> str:
    """A Caddyfile for a private Caddy: no admin endpoint, no ACME (its saved config and
    state go to the test's directory: see ``XDG_*``)."""
    return "{\n\tadmin off\n\tauto_https off\n}\n\n" + "\n".join(sites)


#: One request in a proxy's access log.
Request = tuple[str, str, int]  # method, URI as the browser sent it, status


def _nginx_requests(log: str) -> list[Request]:
    return [
        (m[1], m[2], int(m[3])) for m in re.finditer(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) ', log)
    ]


def _caddy_requests(log: str) -> list[Request]:
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    return [(e["request"]["method"], e["request"]["uri"], int(e["status"])) for e in entries]


@dataclass
class Deployment:
    """A proxy in front of peercam servers; ``url()`` is what a browser opens."""

    proxy: str  # "nginx" or "caddy"
    port: int  # the documented site, peercam trusting the proxy
    untrusted_port: int  # the same site in front of a peercam without --trusted-proxy
    slow_port: int  # in front of a 4 fps peercam (nginx: without proxy_buffering off)
    access_log: Path
    service: Service

    def url(self, path: str = "/cam/", port: int | None = None, scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{port or self.port}{path}"

    def requests(self) -> list[Request]:
        """What the proxy logged: every request the browser made through it."""
        text = self.access_log.read_text() if self.access_log.exists() else ""
        return _nginx_requests(text) if self.proxy == "nginx" else _caddy_requests(text)


async def _listener(**overrides: Any) -> tuple[Listener, Service]:
    """peercam behind its real listener (the accept-time caps count), with the token."""
    source = TestPatternSource(fps=overrides.pop("fps", 30.0))
    config = replace(LOOPBACK_CONFIG, host="127.0.0.1", token=TOKEN, **overrides)
    app = create_app(config, source=source)
    listener = Listener(app, config, port=0)
    await listener.start()
    return listener, app[Service.KEY]


async def _wait_listening(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    async with asyncio.timeout(15):
        while True:
            if process.returncode is not None:
                text = await asyncio.to_thread(log.read_text) if log.exists() else ""  # noqa: ASYNC240
                raise AssertionError(f"the proxy exited: {text}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                return
            await asyncio.sleep(0.05)  # polling another process's socket: no event exists


def _executable(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} not found: apt-get install {name} (scripts/test.sh does)", False)
    return path


async def _start_proxy(
    proxy: str, directory: Path, cert: Path, key: Path, upstreams: list[int], ports: list[int]
) -> asyncio.subprocess.Process:
    """The proxy in front of ``upstreams`` (trusted, untrusted, slow), listening on ``ports``."""
    log = directory / "error.log"
    if proxy == "nginx":
        sites = [
            nginx_site(listen=ports[0], cert=cert, key=key, upstream=upstreams[0]),
            nginx_site(listen=ports[1], cert=cert, key=key, upstream=upstreams[1]),
            nginx_site(listen=ports[2], cert=cert, key=key, upstream=upstreams[2], buffering=False),
        ]
        (directory / "nginx.conf").write_text(nginx_main(directory, sites))
        command = [
            _executable("nginx"), "-p", str(directory), "-c", str(directory / "nginx.conf"),
            "-e", str(log), "-g", "daemon off;",
        ]  # fmt: skip
        env = None
    else:
        sites = [
            caddy_site(listen=port, cert=cert, key=key, upstream=upstream,
                       log=directory / "access.log")
            for port, upstream in zip(ports, upstreams, strict=True)
        ]  # fmt: skip
        (directory / "Caddyfile").write_text(caddy_main(sites))
        command = [
            _executable("caddy"), "run", "--adapter", "caddyfile",
            "--config", str(directory / "Caddyfile"),
        ]  # fmt: skip
        # Caddy keeps certificates and state under $HOME / $XDG_*: here, in the test's directory.
        env = {**os.environ, "HOME": str(directory), "XDG_DATA_HOME": str(directory / "data"),
               "XDG_CONFIG_HOME": str(directory / "config")}  # fmt: skip
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=output, env=env
        )
    try:
        for port in ports:
            await _wait_listening(port, process, log)
    except BaseException:
        await stop_process(process)
        raise
    return process


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["nginx", "caddy"])
async def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    proxy: str = request.param
    directory = tmp_path_factory.mktemp(proxy)
    cert, key = tls.self_signed(directory / "tls", ["127.0.0.1"])
    trusted, service = await _listener(trusted_proxies=LOOPBACK, max_per_address=MAX_PER_ADDRESS)
    untrusted, _ = await _listener(max_per_address=MAX_PER_ADDRESS)
    slow, _ = await _listener(trusted_proxies=LOOPBACK, fps=SLOW_FPS)
    listeners = (trusted, untrusted, slow)
    ports = [_free_port() for _ in listeners]
    try:
        process = await _start_proxy(
            proxy, directory, cert, key, [listener.port for listener in listeners], ports
        )
        try:
            yield Deployment(proxy, ports[0], ports[1], ports[2], directory / "access.log", service)
        finally:
            await stop_process(process)
    finally:
        for listener in listeners:
            await listener.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def page(module_browser: Browser) -> AsyncIterator[Page]:
    """A fresh context of the module's Chromium that accepts the self-signed certificate."""
    context = await module_browser.new_context(ignore_https_errors=True)
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest.mark.browser
async def test_chromium_plays_webrtc_through_the_proxy_under_a_prefix(
    page: Page, deployment: Deployment
) -> None:
    """The whole deployment as a user meets it: TLS proxy, sub-path, token URL, WebRTC."""
    await page.goto(deployment.url(f"/cam/?token={TOKEN}&codec=vp8"))
    view = await view_until(
        page, 'v.mode === "WebRTC" && v.state === "playing" && v.framesDecoded > 30',
        timeout_s=20, what=f"WebRTC playing through {deployment.proxy}",
    )  # fmt: skip
    assert view["mimeType"] == "video/VP8"
    # The redirect was relative: the token left the address bar, the prefix stayed.
    assert page.url == deployment.url("/cam/?codec=vp8")
    cookies = await page.context.cookies()
    assert [(c["name"], c["secure"], c["httpOnly"], c["path"]) for c in cookies] == [
        ("peercam_token", True, True, "/cam")
    ]
    assert len(deployment.service.viewers) == 1  # /cam/ws, still open (so not logged yet)
    requests = deployment.requests()
    for path in ("/cam/static/peercam-view.js", "/cam/snapshot.jpg?width=320"):
        assert any(r[0] == "GET" and r[1].startswith(path) and r[2] == 200 for r in requests), (
            path, requests,
        )  # fmt: skip
    assert all(uri.startswith("/cam") for _, uri, _ in requests), requests  # nothing escaped
    assert all(status < 400 for *_, status in requests), requests


@pytest.mark.browser
async def test_chromium_gets_jpeg_pictures_through_the_proxy(
    page: Page, deployment: Deployment
) -> None:
    """The fallback travels the same proxied WebSocket."""
    await page.goto(deployment.url(f"/cam/?token={TOKEN}&mode=jpeg"))
    view = await view_until(
        page, 'v.mode === "JPEG" && v.state === "playing" && v.framesDrawn > 20',
        timeout_s=20, what=f"JPEG pictures through {deployment.proxy}",
    )  # fmt: skip
    assert view["error"] == ""


@pytest.mark.browser
async def test_a_peercam_that_does_not_trust_its_proxy_says_so_on_the_page(
    page: Page, deployment: Deployment
) -> None:
    """The issue's black box: without --trusted-proxy the Origin check refuses the page's
    socket, and the overlay now says why and what to change."""
    await page.goto(deployment.url(f"/cam/?token={TOKEN}", port=deployment.untrusted_port))
    origin = f"https://127.0.0.1:{deployment.untrusted_port}"
    view = await view_until(
        page, 'v.overlay.includes("--trusted-proxy")', timeout_s=15,
        what="the refusal in the overlay",
    )  # fmt: skip
    assert origin in view["overlay"]
    assert view["mode"] == "—"  # no config came: nothing started
    cookies = await page.context.cookies()
    assert [c["secure"] for c in cookies] == [False]  # the proxy's https was not believed


@pytest.mark.browser
async def test_the_check_page_works_under_the_prefix(page: Page, deployment: Deployment) -> None:
    """/cam/check opens its sockets at /cam/ws: the direct path works through the proxy."""
    await page.goto(deployment.url(f"/cam/check?token={TOKEN}"))
    assert page.url == deployment.url("/cam/check")
    await page.wait_for_function('document.body.dataset.done === "true"', timeout=60_000)
    direct = await page.evaluate("() => window.results.direct")
    assert direct["status"] == "works", direct


async def _mjpeg_parts(url: str, count: int) -> list[tuple[float, bytes]]:
    """The first ``count`` pictures of an MJPEG stream, each with the time it arrived."""
    parts: list[tuple[float, bytes]] = []
    async with aiohttp.ClientSession() as http, http.get(url, ssl=False) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        async with asyncio.timeout(30):
            while len(parts) < count:
                line = await response.content.readline()
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                    await response.content.readline()  # the blank line
                    data = await response.content.readexactly(length)
                    parts.append((time.time(), data))
    return parts


def _latency_ms(arrived: float, jpeg: bytes) -> float:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    captured = timebar.read(np.asarray(image, np.uint8))
    assert captured is not None, "the capture-time bar does not decode"
    return arrived * 1000 - captured


async def test_mjpeg_is_live_through_the_proxy(deployment: Deployment) -> None:
    """VLC and <img> through the proxy; each picture arrives when it is made, not one late.

    At 4 fps a picture held in the proxy's buffers until the next one is >= 250 ms late.
    nginx's site without ``proxy_buffering off`` relies on peercam's ``X-Accel-Buffering: no``;
    Caddy's on ``flush_interval -1``.
    """
    parts = await _mjpeg_parts(deployment.url(f"/cam/stream.mjpg?token={TOKEN}"), 20)
    assert all(_latency_ms(*part) < 5000 for part in parts)
    slow = await _mjpeg_parts(
        deployment.url(f"/cam/stream.mjpg?token={TOKEN}", port=deployment.slow_port), 8
    )
    latencies = [_latency_ms(*part) for part in slow[1:]]
    assert statistics.median(latencies) < 1000 / SLOW_FPS / 2, latencies


async def _jpeg_viewer(url: str, source: str, pictures: int) -> int:
    """One viewer from ``source`` in JPEG mode: pictures received (acked one by one)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), ssl=False)
    async with aiohttp.ClientSession(connector=connector) as http, http.ws_connect(url) as ws:
        assert (await ws.receive_json(timeout=20))["type"] == "config"
        await ws.send_json({"type": "jpeg", "maxWidth": 320})
        received = 0
        while received < pictures:
            msg = await ws.receive(timeout=30)
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            received += 1
            await ws.send_json({"type": "ack"})
        return received


async def test_thirty_viewers_through_the_proxy_are_all_served(deployment: Deployment) -> None:
    """Behind the proxy every viewer is 127.0.0.1 to the socket: with the forwarded address
    each counts alone (the cap is 2 per client), so 30 viewers are all served."""
    url = deployment.url(f"/cam/ws?token={TOKEN}", scheme="wss")
    sources = [f"127.0.0.{10 + i}" for i in range(VIEWERS)]
    served = await asyncio.gather(*(_jpeg_viewer(url, source, 10) for source in sources))
    assert served == [10] * VIEWERS


async def test_one_client_behind_the_proxy_cannot_take_everyones_slots(
    deployment: Deployment,
) -> None:
    """The per-client cap still holds behind the proxy, and a made-up X-Forwarded-For
    (the proxy appends or replaces it with the real address) does not get around it."""
    url = deployment.url(f"/cam/ws?token={TOKEN}", scheme="wss")
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.77", 0), ssl=False, limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        held = []
        try:
            for i in range(MAX_PER_ADDRESS):
                ws = await http.ws_connect(url, headers={"X-Forwarded-For": f"203.0.113.{i}"})
                held.append(ws)
                assert (await ws.receive_json(timeout=20))["type"] == "config"
            spoofed = {"X-Forwarded-For": "203.0.113.99"}
            async with http.ws_connect(url, headers=spoofed) as refused:
                msg = await refused.receive(timeout=20)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
                assert "127.0.0.77" in (msg.extra or "")
            # Everyone else still gets in.
            assert await _jpeg_viewer(url, "127.0.0.78", 3) == 3
        finally:
            for ws in held:
                await ws.close()


async def test_the_documented_nginx_config_is_the_tested_one() -> None:
    """README and docs/deploy.md show exactly the file this module runs."""
    site = NGINX_SITE.read_text()
    location = site[site.index("    location /cam/ {") :]
    location = location[: location.index("\n    }\n") + 6]
    assert "proxy_set_header X-Forwarded-Host $http_host;" in location
    assert location in (ROOT / "README.md").read_text()
    assert site in (ROOT / "docs" / "deploy.md").read_text()


async def test_the_documented_caddyfile_is_the_tested_one() -> None:
    """README and docs/deploy.md show exactly the Caddyfile this module runs."""
    site = CADDY_SITE.read_text()
    block = site[site.index("\thandle_path /cam/* {") :]
    block = block[: block.index("\n\t}\n") + 3]
    assert "flush_interval -1" in block
    assert block in (ROOT / "README.md").read_text()
    assert site in (ROOT / "docs" / "deploy.md").read_text()
