"""Secrets given in the environment stay out of --help, the log and /api/status."""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp
import pytest

from tests.processes import stop_process
from tests.test_server_cli import ROOT, _free_port, _get_when_listening, _read_until

TOKEN = "tok-3nv-s3cret-0123"
TURN_SECRET = "turn-3nv-s3cret-4567"
ICE_CREDENTIAL = "ice-3nv-s3cret-8901"
SECRETS = {
    "PEERCAM_TOKEN": TOKEN,
    "PEERCAM_TURN_SECRET": TURN_SECRET,
    "PEERCAM_ICE_CREDENTIAL": ICE_CREDENTIAL,
}


async def _server(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "server.py"), *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=os.environ | {"PYTHONUNBUFFERED": "1"} | env,
    )  # fmt: skip


async def test_help_prints_no_secret_from_the_environment() -> None:
    """`peercam --help` is pasted into bug reports: argparse would print env defaults."""
    process = await _server(SECRETS, "--help")
    out, _ = await process.communicate()
    text = out.decode()
    assert process.returncode == 0
    assert "--token" in text
    assert "PEERCAM_TURN_SECRET" in text  # the variables are named, their values are not
    for value in SECRETS.values():
        assert value not in text
    # A flag that turns something off does not claim "(default: True)".
    assert "default: True" not in text


@pytest.mark.parametrize(
    ("env", "args", "secret"),
    [
        ({"PEERCAM_TURN_SECRET": TURN_SECRET}, ("--ice-server", "turn:127.0.0.1:3478"),
         TURN_SECRET),
        ({"PEERCAM_ICE_CREDENTIAL": ICE_CREDENTIAL},
         ("--ice-server", "turn:127.0.0.1:3478", "--ice-username", "u"), ICE_CREDENTIAL),
    ],
)  # fmt: skip
async def test_secrets_stay_out_of_the_log_and_the_status(
    env: dict[str, str], args: tuple[str, ...], secret: str
) -> None:
    """Logs and /api/status are shared; the token appears once (the URL to open), the TURN
    secret and the ICE credential never, even at DEBUG."""
    port = _free_port()
    process = await _server(
        {"PEERCAM_TOKEN": TOKEN, **env}, "--source", "test", "--port", str(port),
        "--host", "127.0.0.1", "--ice-address", "127.0.0.1", "--log-level", "DEBUG", *args,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        startup = await _read_until(process, "open http://")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await _get_when_listening(http, f"{base}/static/peercam-view.js")
            async with http.get(f"{base}/?token={TOKEN}") as response:  # the redirect, a cookie
                assert response.status == 200
            async with http.get(f"{base}/api/status") as response:
                status = await response.text()
            assert '"source"' in status
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(f"{base}/snapshot.jpg", headers=bearer) as response:
                assert response.status == 200
            async with http.ws_connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as ws:
                config = await ws.receive_json(timeout=10)
                assert config["type"] == "config"
                await ws.send_json({"type": "jpeg"})
                assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.BINARY
    finally:
        await stop_process(process)
    assert process.stdout is not None
    log = startup + (await process.stdout.read()).decode()
    assert secret not in status
    assert TOKEN not in status
    assert "DEBUG" in log  # the log was as verbose as it gets
    assert secret not in log
    # The start-up line with the viewing URL is the one place the token is printed.
    lines = [line for line in log.splitlines() if TOKEN in line]
    assert lines, "the viewing URL with the token is printed"
    assert all("open http://" in line for line in lines), lines
