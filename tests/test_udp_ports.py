"""--udp-ports: every ICE host socket in a range that can be forwarded, and a typed refusal."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path

import aiohttp
import aioice
import pytest
from aiohttp.test_utils import TestServer

from tests.aiortc_viewer import AiortcViewer
from tests.conftest import ServerFactory, eventually, service_of, ws_url
from tests.processes import stop_process
from tests.test_server_cli import _free_port, _get_when_listening, _read_until, _run
from tests.turn import coturn
from webrtc.errors import NoUdpPort
from webrtc.ice import PortRange, announce_only, bind_within


def _free_range(size: int) -> PortRange:
    """``size`` consecutive UDP ports free on 127.0.0.1, below the kernel's ephemeral range
    (32768-60999), so that nothing else (the test's own viewers) lands in them by chance."""
    while True:
        low = random.randrange(20_000, 32_000 - size)
        try:
            for port in range(low, low + size):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return PortRange(low, low + size - 1)


def _bound(ports: PortRange) -> set[int]:
    """UDP ports of ``ports`` that some socket holds now, from the kernel's own table."""
    held: set[int] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            port = int(line.split()[1].rsplit(":", 1)[1], 16)
            if port in ports:
                held.add(port)
    return held


def _answer_ports(viewer: AiortcViewer) -> set[int]:
    """The ports of the server's candidates in its answer."""
    return {
        int(line.split()[5])
        for line in viewer.answer["sdp"].splitlines()
        if line.startswith("a=candidate:")
    }


def _selected_server_port(viewer: AiortcViewer) -> int:
    """The server's port in the viewer's nominated ICE pair (aioice internals)."""
    assert viewer.pc is not None
    transport = viewer.pc.getTransceivers()[0].receiver.transport.transport
    pair = transport._connection._nominated[1]
    return int(pair.remote_candidate.port)


def test_port_range_is_validated() -> None:
    """A range that cannot be forwarded (privileged, reversed, not numbers) is refused at start."""
    assert PortRange.parse("40000-40009") == PortRange(40000, 40009)
    assert PortRange.parse("40000") == PortRange(40000, 40000)
    assert len(PortRange(40000, 40009)) == 10
    assert str(PortRange(40000, 40009)) == "40000-40009"
    for bad in ("80-90", "5000-4000", "40000-70000", "a-b", "", "1-2-3"):
        with pytest.raises(ValueError, match="UDP ports"):
            PortRange.parse(bad)


async def test_aioice_gathering_binds_and_asks_stun_inside_the_range() -> None:
    """The hook on aioice's gathering (private): fails loudly when an upgrade breaks it —
    host candidates and the server-reflexive one learnt through them are in the range, the
    sockets are freed on close, and a full range raises NoUdpPort with nothing left open."""
    ports = _free_range(2)
    async with coturn() as stun:
        connections = [
            aioice.Connection(ice_controlling=False, stun_server=("127.0.0.1", stun.port))
            for _ in range(3)
        ]
        try:
            with announce_only(["127.0.0.1"]), bind_within(ports):
                for connection in connections[:2]:
                    await connection.gather_candidates()
                with pytest.raises(NoUdpPort):
                    await connections[2].gather_candidates()
            hosts = [c for x in connections[:2] for c in x.local_candidates if c.type == "host"]
            assert sorted(c.port for c in hosts) == [ports.low, ports.high]
            found = [c for x in connections[:2] for c in x.local_candidates]
            reflexive = [c.port for c in found if c.type == "srflx"]
            assert reflexive
            assert all(port in ports for port in reflexive)
            assert _bound(ports) == {ports.low, ports.high}
        finally:
            for connection in connections:
                await connection.close()
    assert _bound(ports) == set()


async def test_two_viewers_play_on_two_ports_of_the_range(make_server: ServerFactory) -> None:
    """What a port forward needs: every server candidate, and the pair ICE selects, in range."""
    ports = _free_range(10)
    server = await make_server(udp_ports=ports)
    viewers = [AiortcViewer(ws_url(server), decode_bar=False) for _ in range(2)]
    try:
        for viewer in viewers:
            await viewer.connect()
        await asyncio.gather(*(v.wait_frames(5, timeout=15) for v in viewers))
        answered = [_answer_ports(v) for v in viewers]
        assert all(p and p <= set(range(ports.low, ports.high + 1)) for p in answered)
        selected = {_selected_server_port(v) for v in viewers}
        assert len(selected) == 2
        assert all(p in ports for p in selected)
        assert service_of(server).status()["udpPorts"] == str(ports)
    finally:
        await asyncio.gather(*(v.close() for v in viewers))


async def test_a_full_range_refuses_the_next_viewer_until_a_port_is_free(
    make_server: ServerFactory,
) -> None:
    """One port: a second viewer gets the typed error (not a connection that never comes),
    the first keeps playing, nothing is left half-made, and the port serves again once free."""
    ports = _free_range(1)
    server: TestServer = await make_server(udp_ports=ports)
    service = service_of(server)
    first = AiortcViewer(ws_url(server), decode_bar=False)
    second = AiortcViewer(ws_url(server), decode_bar=False)
    try:
        await first.connect()
        await first.wait_frames(5, timeout=15)
        with pytest.raises(RuntimeError, match="no answer") as refused:
            await second.connect()
        assert "'code': 'no-udp-port'" in str(refused.value)
        assert "'inReplyTo': 'offer'" in str(refused.value)
        await eventually(lambda: len(service.peers) == 1)
        assert _bound(ports) == {ports.low}
        await first.wait_frames(first.received.frames + 10, timeout=15)
    finally:
        await asyncio.gather(first.close(), second.close())
    await eventually(lambda: len(service.peers) == 0 and not _bound(ports))
    third = AiortcViewer(ws_url(server), decode_bar=False)
    try:
        await third.connect()
        await third.wait_frames(5, timeout=15)
        assert _selected_server_port(third) == ports.low
    finally:
        await third.close()


async def test_flag_and_environment_are_validated_at_start() -> None:
    """A bad --udp-ports or PEERCAM_UDP_PORTS is a usage error naming the flag; a good one is
    what /api/status shows."""
    for args, env in ((("--udp-ports", "80-90"), {}), ((), {"PEERCAM_UDP_PORTS": "9-x"})):
        process = await _run("--source", "test", *args, env=env)
        assert process.stdout is not None
        output = (await process.stdout.read()).decode()
        assert await process.wait() == 2
        assert "--udp-ports" in output
    port = _free_port()
    process = await _run("--source", "test", "--port", str(port), "--no-auth",
                         env={"PEERCAM_UDP_PORTS": "41000-41009"})  # fmt: skip
    try:
        await _read_until(process, "open http://")
        async with aiohttp.ClientSession() as http:
            status = json.loads(
                await _get_when_listening(http, f"http://127.0.0.1:{port}/api/status")
            )
        assert status["udpPorts"] == "41000-41009"
    finally:
        await stop_process(process)
