"""The network lab itself: its links really are slow, lossy or closed to UDP, it cleans up
after itself, and real viewers (Chromium, aiortc) in its namespaces play peercam over the veth."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from playwright.async_api import Playwright

from tests.browser import wait_for
from tests.conftest import ServerFactory
from tests.netlab import (
    PICTURE_AGE_JS,
    SELECTED_PAIR_JS,
    NetAiortcViewer,
    NetLabError,
    ViewerNet,
    chromium_in,
    lab_url,
    picture_samples,
    picture_stats,
    run,
)

CHUNK = 64 * 1024
UDP_PAYLOAD = 200
PACKETS = 1000
SO_RCVBUFFORCE = 33  # Linux; the socket module does not name it


# -- probes ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tcp_stream(
    net: ViewerNet,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP connection from the viewer's namespace to the server side, which sends as fast as
    it can: the viewer's end (reader, writer) is yielded."""

    async def flood(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(bytes(CHUNK))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(flood, net.server_address, 0)
    port = server.sockets[0].getsockname()[1]
    sock = net.socket(socket.SOCK_STREAM)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (net.server_address, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            yield reader, writer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    finally:
        sock.close()
        server.close()
        await server.wait_closed()


async def received_within(reader: asyncio.StreamReader, seconds: float) -> int:
    """Bytes read in ``seconds`` (the measurement window itself, not a synchronisation)."""
    loop = asyncio.get_running_loop()
    deadline, total = loop.time() + seconds, 0
    while (left := deadline - loop.time()) > 0:
        try:
            total += len(await asyncio.wait_for(reader.read(CHUNK), left))
        except TimeoutError:
            break
    return total


class UdpCounter:
    """A UDP socket that counts the datagrams it receives, by their first byte's kind."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.counts = {b"d": 0, b"m": 0}  # data, marker
        self.changed = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 2048)
            self.counts[data[:1]] = self.counts.get(data[:1], 0) + 1
            self.changed.set()

    async def wait_marker(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.counts[b"m"]:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def udp_pair(net: ViewerNet) -> AsyncIterator[tuple[socket.socket, UdpCounter, UdpCounter]]:
    """A UDP socket on each end (server side, viewer side), connected to each other; yields the
    server's socket and a counter of what each end receives (viewer's, server's)."""
    viewer = net.socket(socket.SOCK_DGRAM)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.setblocking(False)
    for sock in (viewer, server):
        # Root may exceed rmem_max: a burst of a thousand datagrams must not overflow.
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    viewer.bind((net.viewer_address, 0))
    server.bind((net.server_address, 0))
    viewer.connect(server.getsockname())
    server.connect(viewer.getsockname())
    counters = UdpCounter(viewer), UdpCounter(server)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(c.run()) for c in counters]
    try:
        yield server, counters[0], counters[1]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        viewer.close()
        server.close()


def send_data(sock: socket.socket, count: int) -> None:
    for _ in range(count):
        sock.send(b"d" * UDP_PAYLOAD)


# -- the links ---------------------------------------------------------------------------------


async def test_viewer_nets_get_their_own_subnet_and_names(
    make_viewer_net: Callable[[], Awaitable[ViewerNet]],
) -> None:
    """Several viewers coexist: distinct /30s, distinct interface names that fit IFNAMSIZ."""
    nets = [await make_viewer_net(), await make_viewer_net()]
    assert len({n.viewer_address for n in nets}) == 2
    for net in nets:
        last = int(net.server_address.rsplit(".", 1)[1])
        assert last % 4 == 1
        assert net.viewer_address.endswith(f".{last + 1}")
        assert len(net.server_ifname) <= 15
        assert len(net.viewer_ifname) <= 15
        inside = await run(*net.nsenter("ip", "-o", "-4", "addr", "show"))
        assert f"{net.viewer_address}/30" in inside
        assert " lo " in inside
        assert net.server_address not in inside  # a different namespace, not a second address
        async with tcp_stream(net) as (reader, _):
            assert await reader.readexactly(1000) == bytes(1000)


async def test_rate_limit_caps_the_viewers_downlink_and_can_be_lifted(
    viewer_net: ViewerNet,
) -> None:
    """set_rate shapes what the viewer receives, changes while traffic flows, and None is clean."""
    kbit, seconds = 2000, 1.5
    expected = kbit * 1000 / 8 * seconds
    async with tcp_stream(viewer_net) as (reader, _):
        clean = await received_within(reader, 1.0)
        await viewer_net.set_rate(kbit)
        await received_within(reader, 0.5)  # the bucket's burst and the queue drain first
        shaped = await received_within(reader, seconds)
        await viewer_net.set_rate(None)
        await received_within(reader, 0.3)
        lifted = await received_within(reader, 1.0)
    assert 0.5 * expected <= shaped <= 1.3 * expected, (shaped, expected)
    assert clean > 5 * expected / seconds, (clean, expected)
    assert lifted > 5 * expected / seconds, (lifted, expected)


async def test_loss_drops_a_plausible_fraction_of_udp(viewer_net: ViewerNet) -> None:
    """set_loss(20) drops about a fifth of the UDP towards the viewer; set_loss(0) none."""
    async with udp_pair(viewer_net) as (server, to_viewer, _):
        send_data(server, PACKETS)  # the control: a clean link loses nothing
        server.send(b"m")
        await to_viewer.wait_marker()
        assert to_viewer.counts[b"d"] == PACKETS

        to_viewer.counts = {b"d": 0, b"m": 0}
        await viewer_net.set_loss(20)
        send_data(server, PACKETS)
        await viewer_net.set_loss(0)
        server.send(b"m")  # after the data, on the same path: once it is in, so is the rest
        await to_viewer.wait_marker()
    lost = 1 - to_viewer.counts[b"d"] / PACKETS
    assert 0.12 <= lost <= 0.28, lost


async def test_block_udp_stops_udp_both_ways_while_tcp_flows(viewer_net: ViewerNet) -> None:
    """block_udp cuts WebRTC's media path but not the page's TCP (HTTP, WebSocket)."""
    async with tcp_stream(viewer_net) as (reader, _), udp_pair(viewer_net) as udp:
        server, to_viewer, to_server = udp
        viewer_sock = to_viewer.sock
        await viewer_net.block_udp(True)
        send_data(server, 50)
        for _ in range(50):
            viewer_sock.send(b"d" * UDP_PAYLOAD)
        assert await reader.readexactly(100_000) == bytes(100_000)  # TCP still flows
        await viewer_net.block_udp(False)
        server.send(b"m")
        viewer_sock.send(b"m")
        await to_viewer.wait_marker()
        await to_server.wait_marker()
    assert to_viewer.counts == {b"d": 0, b"m": 1}
    assert to_server.counts == {b"d": 0, b"m": 1}


async def test_everything_is_removed_on_exit_even_after_a_failure() -> None:
    """No veth, nftables table, qdisc or holder process outlives its ViewerNet."""
    with pytest.raises(ZeroDivisionError):  # noqa: PT012 — the failure happens mid-test
        async with ViewerNet() as net:
            pid, ifname, table = net.pid, net.server_ifname, net.nft_table
            await net.set_rate(600)
            await net.set_loss(5)
            assert table in await run(*net.nsenter("nft", "list", "tables"))
            await net.block_udp(True)
            assert table in await run("nft", "list", "tables")
            assert ifname in await run("ip", "-o", "link", "show")
            assert "tbf" in await run("tc", "qdisc", "show", "dev", ifname)
            _ = 1 / 0
    assert ifname not in await run("ip", "-o", "link", "show")
    assert table not in await run("nft", "list", "tables")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(NetLabError):
        await run("nsenter", "-t", str(pid), "-n", "true")


# -- real viewers in the lab -------------------------------------------------------------------


@pytest.mark.browser
async def test_chromium_in_a_viewer_namespace_plays_webrtc_over_the_veth(
    make_server: ServerFactory, viewer_net: ViewerNet, playwright: Playwright
) -> None:
    """The lab's browser is a real viewer on the far side of the link, not on loopback."""
    server = await make_server(host="0.0.0.0", ice_addresses=(viewer_net.server_address,))
    async with chromium_in(viewer_net, playwright) as browser:
        context = await browser.new_context(viewport={"width": 800, "height": 600})
        await context.add_init_script(PICTURE_AGE_JS)
        page = await context.new_page()
        await page.goto(lab_url(server, viewer_net, "/"))
        await wait_for(
            page,
            "() => window.__bench?.video.length > 30",
            timeout_s=20,
            what="30 video frames presented",
            diagnosis_js='() => document.querySelector("peercam-view")?.info',
        )
        info = await page.evaluate('() => document.querySelector("peercam-view").info')
        pair = await page.evaluate(SELECTED_PAIR_JS)
        samples = await picture_samples(page)
        await context.close()
    assert info["mode"] == "WebRTC", info
    assert pair is not None, "no selected candidate pair"
    assert (pair["localAddress"].rsplit(":", 1)[0], pair["remoteAddress"].rsplit(":", 1)[0]) == (
        viewer_net.viewer_address,
        viewer_net.server_address,
    )
    assert (pair["local"], pair["protocol"]) == ("host", "udp")
    stats = picture_stats(samples, samples[0][0], samples[-1][0] + 0.001)
    assert stats.stamped > 0.5 * stats.frames, stats
    assert stats.age_p50_ms is not None, stats
    assert 0 <= stats.age_p50_ms < 2000, stats


async def test_aiortc_viewer_in_a_viewer_namespace_decodes_frames(
    make_server: ServerFactory, viewer_net: ViewerNet
) -> None:
    """The subprocess viewer signals and receives over the veth and reports what it decoded."""
    server = await make_server(host="0.0.0.0", ice_addresses=(viewer_net.server_address,))
    ws = lab_url(server, viewer_net, "/ws").replace("http://", "ws://")
    async with NetAiortcViewer(viewer_net, ws, codec="vp8") as viewer:
        report = await viewer.wait_until(lambda r: r.frames >= 30 or bool(r.error), timeout=30)
    assert report.error is None, report.error
    assert (report.width, report.height) == (640, 480)
    assert report.ages_ms, report
    assert 0 <= min(report.ages_ms) < 2000, report.ages_ms[:10]
    assert 0 < report.longest_gap_s < 5, report.longest_gap_s
