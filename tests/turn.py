"""coturn, started by the tests on 127.0.0.1 (Debian's coturn; see ../shared/TESTING.md §5), or
in a namespace of the NAT lab (tests/netlab.py: ``NatLab.coturn``), optionally with TLS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from signaling.tls import self_signed
from tests.processes import stop_process

logger = logging.getLogger(__name__)

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
REALM = "peercam.test"


@dataclass(frozen=True)
class Turn:
    """A running coturn: its URL base and how it authenticates."""

    port: int
    username: str | None = None
    password: str | None = None
    secret: str | None = None
    host: str = "127.0.0.1"
    #: TURN over TLS (``turns:``), with a self-signed certificate; None: no TLS.
    tls_port: int | None = None
    #: That certificate's SPKI hash (base64 SHA-256), for Chromium's
    #: ``--ignore-certificate-errors-spki-list``: trust this certificate and no other.
    tls_spki: str | None = None

    def url(self, transport: str = "udp") -> str:
        return f"turn:{self.host}:{self.port}?transport={transport}"

    def stun_url(self) -> str:
        """coturn answers STUN binding requests on its TURN port."""
        return f"stun:{self.host}:{self.port}"

    def tls_url(self) -> str:
        if self.tls_port is None:
            raise ValueError("this coturn has no TLS listener (coturn(tls=True))")
        return f"turns:{self.host}:{self.tls_port}?transport=tcp"


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
    *,
    user: tuple[str, str] | None = None,
    secret: str | None = None,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
    connect: Callable[[], socket.socket] | None = None,
    tls: bool = False,
) -> AsyncIterator[Turn]:
    """Run coturn on ``host`` with static credentials (``user``) or a REST-API ``secret``.

    Elsewhere than on loopback, ``prefix`` runs it in the namespace that has ``host`` (e.g.
    ``nsenter -t PID -n``) and ``connect`` makes a non-blocking TCP socket there for the
    readiness probe; coturn then listens on 3478 (and 5349 for TLS). ``tls``: also TURN over
    TLS, with a self-signed certificate (``Turn.tls_url``).
    """
    if not shutil.which(TURNSERVER):
        raise AssertionError(
            "coturn is not installed (apt-get install coturn): scripts/test.sh does"
        )
    local = host == "127.0.0.1" and not prefix
    port = _free_port() if local else 3478
    tls_port = (port + 1 if local else 5349) if tls else None
    relay_base = 40000 + (port % 200) * 100
    workdir = Path(tempfile.mkdtemp(prefix="peercam-turn-"))
    spki = None
    if tls_port is not None:
        cert, key = self_signed(workdir, [host])
        encryption = [f"--tls-listening-port={tls_port}", f"--cert={cert}", f"--pkey={key}"]
        spki = _spki_hash(cert)
    else:
        encryption = ["--no-tls"]
    if secret:
        auth = ["--use-auth-secret", f"--static-auth-secret={secret}"]
    elif user:
        auth = ["--lt-cred-mech", f"--user={user[0]}:{user[1]}"]
    else:
        auth = []
    process = await asyncio.create_subprocess_exec(
        *prefix, TURNSERVER, "-n", f"--listening-ip={host}", f"--relay-ip={host}",
        f"--listening-port={port}", *auth, f"--realm={REALM}", "--fingerprint", *encryption,
        "--no-dtls", "--no-cli", f"--min-port={relay_base}", f"--max-port={relay_base + 99}",
        f"--db={workdir}/turndb.sqlite", f"--pidfile={workdir}/turn.pid", "--log-file=stdout",
        "--simple-log", "--allow-loopback-peers", "--no-software-attribute",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    drain = asyncio.get_running_loop().create_task(_drain(process.stdout))
    try:
        # Ready when its TCP listeners accept (the log line differs across coturn versions).
        async with asyncio.timeout(15):
            for listener in (port, tls_port):
                while listener is not None:
                    if process.returncode is not None:
                        raise AssertionError(f"coturn exited with {process.returncode}")
                    if await _accepts(host, listener, connect):
                        break
                    await asyncio.sleep(0.05)  # polling a listener that has no event to wait on
        username, password = user if user else (None, None)
        yield Turn(port, username=username, password=password, secret=secret, host=host,
                   tls_port=tls_port, tls_spki=spki)  # fmt: skip
    finally:
        drain.cancel()
        await stop_process(process, 5)
        shutil.rmtree(workdir, ignore_errors=True)


def _spki_hash(cert: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate."""
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


async def _accepts(host: str, port: int, connect: Callable[[], socket.socket] | None) -> bool:
    """Whether a TCP connection to ``host:port`` (made with ``connect``'s socket) succeeds."""
    sock = connect() if connect else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except OSError:
        return False
    finally:
        sock.close()
    return True


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading coturn's log so its pipe never fills and blocks it (logged at DEBUG)."""
    try:
        while line := await stream.readline():
            logger.debug("coturn: %s", line.decode(errors="replace").rstrip())
    except asyncio.CancelledError:
        pass
