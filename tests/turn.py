"""coturn, started by the tests on 127.0.0.1 (Debian's coturn; see ../shared/TESTING.md §5)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
REALM = "peercam.test"


@dataclass(frozen=True)
class Turn:
    """A running coturn: its URL base and how it authenticates."""

    port: int
    username: str | None = None
    password: str | None = None
    secret: str | None = None

    def url(self, transport: str = "udp") -> str:
        return f"turn:127.0.0.1:{self.port}?transport={transport}"


def _free_port() -> int:
    # TURN listens on UDP and TCP at the same port: find one free for both.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@asynccontextmanager
async def coturn(
    *, user: tuple[str, str] | None = None, secret: str | None = None
) -> AsyncIterator[Turn]:
    """Run coturn on loopback with static credentials (``user``) or a REST-API ``secret``."""
    if not shutil.which(TURNSERVER):
        raise AssertionError(
            "coturn is not installed (apt-get install coturn): scripts/test.sh does"
        )
    port = _free_port()
    relay_base = 40000 + (port % 200) * 100
    workdir = Path(tempfile.mkdtemp(prefix="peercam-turn-"))
    if secret:
        auth = ["--use-auth-secret", f"--static-auth-secret={secret}"]
    elif user:
        auth = ["--lt-cred-mech", f"--user={user[0]}:{user[1]}"]
    else:
        auth = []
    process = await asyncio.create_subprocess_exec(
        TURNSERVER, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
        f"--listening-port={port}", *auth, f"--realm={REALM}", "--fingerprint", "--no-tls",
        "--no-dtls", "--no-cli", f"--min-port={relay_base}", f"--max-port={relay_base + 99}",
        f"--db={workdir}/turndb.sqlite", f"--pidfile={workdir}/turn.pid", "--log-file=stdout",
        "--simple-log", "--allow-loopback-peers", "--no-software-attribute",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    drain = asyncio.get_running_loop().create_task(_drain(process.stdout))
    try:
        # Ready when its TCP listener accepts (the log line differs across coturn versions).
        async with asyncio.timeout(15):
            while True:
                if process.returncode is not None:
                    raise AssertionError(f"coturn exited with {process.returncode}")
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        username, password = user if user else (None, None)
        yield Turn(port, username=username, password=password, secret=secret)
    finally:
        drain.cancel()
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading coturn's log so its pipe never fills and blocks it."""
    try:
        while await stream.readline():
            pass
    except asyncio.CancelledError:
        pass
