"""Janus on one machine, for the fan-out tests: real Debian ``janus`` processes and viewers.

Janus skips loopback interfaces when it gathers ICE candidates, and never connects to a viewer
whose only candidate is 127.0.0.1 (../shared/NETLAB.md). So the lab adds a veth pair to the
test's own network namespace (``scripts/test.sh`` runs pytest in ``unshare -n``) with
``127.0.0.2/32`` on one end: Janus gathers there (``ice_enforce_list``), viewers announce it
too, and every packet still stays on loopback. Each :class:`JanusServer` runs with its own
config folder made from docs/deploy/janus/ (only the lines marked ``lab:`` change), with only
the streaming plugin and the HTTP transport in its plugin and transport folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.netlab import is_isolated
from tests.processes import stop_process
from webrtc.ice import announce_only

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy" / "janus"
JANUS = shutil.which("janus") or "/usr/bin/janus"
LIBS = Path("/usr/lib/x86_64-linux-gnu/janus")
VETH = "pcjanus0"
VETH_PEER = "pcjanus1"
#: The address Janus gathers on and viewers announce (local, so it never leaves loopback).
LAB_ADDRESS = "127.0.0.2"


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@contextlib.contextmanager
def lab_veth() -> Iterator[str]:
    """The veth whose address Janus gathers on, in the test's own namespace only (the
    session fixture ``janus_veth`` in tests/test_janus.py)."""
    if not is_isolated():
        pytest.skip("the Janus lab adds a veth: run inside `unshare -n` (scripts/test.sh)")
    if not Path(JANUS).exists():
        pytest.fail("janus not found: apt-get install --no-install-recommends janus")
    _ip("link", "add", VETH, "type", "veth", "peer", "name", VETH_PEER)
    try:
        _ip("addr", "add", f"{LAB_ADDRESS}/32", "dev", VETH)
        _ip("link", "set", VETH, "up")
        _ip("link", "set", VETH_PEER, "up")
        yield VETH
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", VETH)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lab_config(text: str, changes: dict[str, str]) -> str:
    """``text`` with the value of each ``name = value`` line in ``changes`` replaced."""
    for name, value in changes.items():
        text, count = re.subn(rf"(?m)^(\s*){name} = [^\t#\n]*", rf"\g<1>{name} = {value}", text)
        if count != 1:
            raise ValueError(f"{name}: not once in the deploy config")
    return text


class JanusServer:
    """One ``janus -F DIR`` process on its own HTTP port and port ranges (``index``)."""

    def __init__(self, index: int, veth: str, *, command_prefix: Sequence[str] = ()) -> None:
        """``command_prefix``: e.g. ``taskset -c 1`` (the benchmark pins Janus to a core)."""
        self.index = index
        self.command_prefix = tuple(command_prefix)
        self.veth = veth
        self.http_port = _free_port()
        self.url = f"http://127.0.0.1:{self.http_port}/janus"
        self._dir = Path(tempfile.mkdtemp(prefix=f"peercam-janus{index}-"))
        self._process: asyncio.subprocess.Process | None = None
        self._log = self._dir / "janus.log"

    def _write_config(self) -> None:
        config = self._dir / "config"
        config.mkdir()
        plugins, transports, none = (self._dir / n for n in ("plugins", "transports", "none"))
        for folder in (plugins, transports, none):
            folder.mkdir()
        (plugins / "libjanus_streaming.so").symlink_to(LIBS / "plugins/libjanus_streaming.so")
        (transports / "libjanus_http.so").symlink_to(LIBS / "transports/libjanus_http.so")
        base = 10_000 + 2_000 * self.index
        files = {
            "janus.jcfg": {
                "configs_folder": f'"{config}"',
                "plugins_folder": f'"{plugins}"',
                "transports_folder": f'"{transports}"',
                "events_folder": f'"{none}"',
                "loggers_folder": f'"{none}"',
                "rtp_port_range": f'"{base + 1000}-{base + 1999}"',
                "ice_enforce_list": f'"{self.veth}"',
            },
            "janus.plugin.streaming.jcfg": {"rtp_port_range": f'"{base}-{base + 999}"'},
            "janus.transport.http.jcfg": {"port": str(self.http_port), "ip": '"127.0.0.1"'},
        }
        for name, changes in files.items():
            (config / name).write_text(_lab_config((DEPLOY / name).read_text(), changes))

    async def start(self) -> None:
        if not (self._dir / "config").exists():
            self._write_config()
        log = self._log.open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.command_prefix, JANUS, "-F", str(self._dir / "config"),
                "-C", str(self._dir / "config/janus.jcfg"),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        finally:
            log.close()
        await self._wait_ready()

    async def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/info") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)  # a process starting: nothing to wait on but its port
        raise RuntimeError(f"janus {self.index} did not start:\n{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        """The running Janus' process id (after a ``taskset`` prefix: it execs Janus)."""
        return self._process.pid if self._process is not None else None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await stop_process(process, 5)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class JanusApi:
    """A minimal Janus HTTP API client for the viewers' side (session, streaming handle)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = aiohttp.ClientSession()
        self.session = 0
        self.handle = 0

    async def post(self, path: str, message: dict[str, Any]) -> dict[str, Any]:
        body = message | {"transaction": secrets.token_hex(6)}
        async with self.http.post(f"{self.url}{path}", json=body) as response:
            reply: dict[str, Any] = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise RuntimeError(f"janus: {reply}")
        return reply

    async def open(self) -> None:
        self.session = (await self.post("", {"janus": "create"}))["data"]["id"]
        attach = {"janus": "attach", "plugin": "janus.plugin.streaming"}
        self.handle = (await self.post(f"/{self.session}", attach))["data"]["id"]

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        return await self.post(f"/{self.session}/{self.handle}", message)

    async def event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next event of the session with a JSEP or plugin data (long poll)."""
        async with asyncio.timeout(timeout):
            while True:
                url = f"{self.url}/{self.session}?maxev=1&rid={time.time_ns()}"
                async with self.http.get(url) as response:
                    event: dict[str, Any] = await response.json(content_type=None)
                if event.get("janus") == "event":
                    return event

    async def mountpoints(self) -> list[dict[str, Any]]:
        reply = await self.message({"request": "list"})
        listed: list[dict[str, Any]] = reply["plugindata"]["data"]["list"]
        return listed

    async def close(self) -> None:
        if self.session:
            with contextlib.suppress(aiohttp.ClientError, RuntimeError):
                await self.post(f"/{self.session}", {"janus": "destroy"})
        await self.http.close()


async def peercam_mountpoints(url: str) -> list[dict[str, Any]]:
    """The mountpoints of the Janus at ``url`` whose description says peercam."""
    api = JanusApi(url)
    try:
        await api.open()
        return [m for m in await api.mountpoints() if "peercam" in m.get("description", "")]
    finally:
        await api.close()


@dataclass
class Decoded:
    frames: int = 0
    width: int = 0
    height: int = 0
    first_frame_at: float | None = None


class JanusAiortcViewer:
    """An aiortc viewer of a Janus mountpoint: Janus offers, aiortc answers (on 127.0.0.2)."""

    def __init__(self, url: str, mountpoint: int) -> None:
        self.api = JanusApi(url)
        self.mountpoint = mountpoint
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.decoded = Decoded()
        self.started_at = 0.0
        self._reader: asyncio.Task[None] | None = None
        self._frame = asyncio.Event()

    async def __aenter__(self) -> Self:
        self.started_at = time.monotonic()
        await self.api.open()
        await self.api.message({"request": "watch", "id": self.mountpoint})
        event = await self.api.event()
        offer = event.get("jsep")
        assert offer, event
        assert offer["type"] == "offer", event
        track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

        @self.pc.on("track")
        def on_track(received: MediaStreamTrack) -> None:
            if not track.done():
                track.set_result(received)

        await self.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        with announce_only((LAB_ADDRESS,)):
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = {"type": "answer", "sdp": self.pc.localDescription.sdp}
        await self.api.message({"request": "start"}, jsep=answer)
        await self.api.post(
            f"/{self.api.session}/{self.api.handle}",
            {"janus": "trickle", "candidate": {"completed": True}},
        )
        self._reader = asyncio.create_task(self._read(await asyncio.wait_for(track, 10)))
        return self

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                decoded = self.decoded
                decoded.frames += 1
                decoded.width, decoded.height = frame.width, frame.height  # type: ignore[union-attr]
                if decoded.first_frame_at is None:
                    decoded.first_frame_at = time.monotonic()
                self._frame.set()

    async def wait_frames(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.decoded.frames < count:
                self._frame.clear()
                await self._frame.wait()

    async def send_pli(self) -> None:
        """A picture loss indication to Janus, as a receiver that lost its picture sends."""
        receiver = self.pc.getReceivers()[0]
        stats = await receiver.getStats()
        ssrc = next(s.ssrc for s in stats.values() if s.type == "inbound-rtp")
        await receiver._send_rtcp_pli(ssrc)  # aiortc's own PLI (private; a test would notice)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.pc.close()
        await self.api.close()
