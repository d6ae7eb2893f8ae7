"""The command a user runs: `python server.py` starts, serves the page, and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.processes import stop_process

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "server.py"), *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}),
    )  # fmt: skip


async def _read_until(process: asyncio.subprocess.Process, needle: str) -> str:
    assert process.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(30):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise AssertionError("server exited early:\n" + "".join(seen))
            seen.append(line)
            if needle in line:
                return "".join(seen)


async def test_server_serves_the_page_and_status_then_exits_on_sigterm() -> None:
    """The README's first command must give a working page on the test pattern."""
    port = _free_port()
    process = await _run(
        "--source", "test", "--port", str(port), "--ice-address", "127.0.0.1", "--no-auth"
    )
    try:
        log = await _read_until(process, "open http://")
        assert f"http://127.0.0.1:{port}/ " in log
        assert "access control is OFF" in log
        async with aiohttp.ClientSession() as http:
            page = await _get_when_listening(http, f"http://127.0.0.1:{port}/")
            assert "<peercam-view" in page
            async with http.get(f"http://127.0.0.1:{port}/static/peercam-view.js") as response:
                assert response.status == 200
                assert "customElements.define" in await response.text()
            async with http.get(f"http://127.0.0.1:{port}/api/status") as response:
                status = await response.json()
                assert status["source"]["kind"] == "test"
        assert await stop_process(process) == 0
    finally:
        await stop_process(process)


async def _get_when_listening(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> str:
    async with asyncio.timeout(15):
        while True:
            try:
                async with http.get(url, **kwargs) as response:
                    return await response.text()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)  # the listener opens just after the log line


async def test_access_control_is_on_by_default_with_a_printed_token_url() -> None:
    """A camera reachable from outside must not be open to whoever finds the port."""
    port = _free_port()
    process = await _run("--source", "test", "--port", str(port), "--ice-address", "127.0.0.1")
    try:
        log = await _read_until(process, f"open http://127.0.0.1:{port}/?token=")
        token = log.split("?token=")[1].split()[0]
        assert len(token) >= 16
        # unsafe=True: aiohttp's jar otherwise ignores cookies of IP-address hosts.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            refused = await _get_when_listening(http, f"http://127.0.0.1:{port}/api/status")
            assert "unauthorized" in refused
            async with http.get(
                f"http://127.0.0.1:{port}/?token={token}", allow_redirects=False
            ) as response:
                assert response.status == 303
                assert response.headers["Location"] == "./"  # the token leaves the address bar
                cookie = response.cookies["peercam_token"]
                assert cookie.value == token
                assert cookie["httponly"]
                assert cookie["samesite"] == "Strict"
            async with http.get(f"http://127.0.0.1:{port}/api/status") as response:
                assert response.status == 200  # the cookie now opens the door
        assert await stop_process(process) == 0
    finally:
        await stop_process(process)


async def test_camera_that_cannot_open_is_served_as_no_signal_and_named_by_healthz() -> None:
    """A camera unplugged at boot must not keep the site down: the server starts, says what is
    wrong, shows "no signal" and /healthz names the camera (a malformed spec still exits 2)."""
    port = _free_port()
    process = await _run("--source", "/dev/video99", "--port", str(port), "--no-auth")
    try:
        log = await _read_until(process, "open http://")
        assert "cannot open camera /dev/video99" in log
        async with aiohttp.ClientSession() as http:
            await _get_when_listening(http, f"http://127.0.0.1:{port}/healthz")
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 503
                body = await response.json()
            assert body["status"] == "failing"
            assert body["failing"] == ["default"]
            async with http.get(f"http://127.0.0.1:{port}/snapshot.jpg") as response:
                assert response.status == 200  # the "no signal" picture
                assert response.content_type == "image/jpeg"
        assert await stop_process(process) == 0
    finally:
        await stop_process(process)


async def test_unknown_source_is_a_usage_error() -> None:
    """A typo in --source is reported as a usage error naming the accepted forms."""
    process = await _run("--source", "/no/such/file.mp4")
    assert process.stdout is not None
    output = (await process.stdout.read()).decode()
    assert await process.wait() == 2
    assert "neither 'auto', 'test'" in output


async def test_self_signed_tls_is_made_once_and_reused(tmp_path: Path) -> None:
    """Phones accept a certificate once: it must survive restarts, with its fingerprint shown."""
    fingerprints = []
    for _ in range(2):
        port = _free_port()
        process = await _run(
            "--source", "test", "--port", str(port), "--no-auth", "--tls-self-signed",
            "--state-dir", str(tmp_path),
        )  # fmt: skip
        try:
            log = await _read_until(process, f"open https://127.0.0.1:{port}/")
            fingerprints.append(log.split("SHA-256 fingerprint ")[1].split()[0])
            async with aiohttp.ClientSession() as http:
                status = await _get_when_listening(
                    http, f"https://127.0.0.1:{port}/api/status", ssl=False
                )
                assert '"source"' in status
        finally:
            await stop_process(process)
    assert fingerprints[0] == fingerprints[1]
    assert len(fingerprints[0].split(":")) == 32
    assert (tmp_path / "peercam-key.pem").stat().st_mode & 0o077 == 0  # private key: owner only


async def test_contradictory_security_flags_are_usage_errors() -> None:
    """--cert without --key, or --no-auth with --token, must fail loudly at start."""
    for args in (("--cert", "/nonexistent.pem"), ("--no-auth", "--token", "abcdefghij")):
        process = await _run("--source", "test", *args)
        assert process.stdout is not None
        output = (await process.stdout.read()).decode()
        assert await process.wait() == 2
        assert "error:" in output
