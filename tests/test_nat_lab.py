"""Through real NATs: viewers and the server behind nftables routers in the NAT lab
(tests/netlab.py ``NatLab``, docs/netlab.md), coturn on the lab's "internet" for STUN and TURN.

Each topology has a control run that fails without the mechanism it proves (no STUN, no TURN,
no ``--ice-advertise``, UDP only); controls fail fast with a bounded ICE wait on the viewer's
side, and run alongside the run that works. The selected candidate pair of every run is logged
(``pytest -rA`` shows it) and tabled in docs/netlab.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, Playwright

from tests.browser import wait_for
from tests.conftest import ServerFactory, service_of
from tests.netlab import (
    SELECTED_PAIR_JS,
    AiortcReport,
    Host,
    Nat,
    NatLab,
    NetAiortcViewer,
    Router,
    chromium_in,
    run,
    together,
)
from webrtc.ice import IceServer, PortRange, TurnSecret

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

#: A run that works shows its first frame well within this (2 busy cores, ICE and DTLS).
WORKS_WITHIN = 45.0
#: A control run gives up after this: several times what a working run needs here (1-3 s).
CONTROL_GIVES_UP = 8.0
#: The paths are what is tested, not the pictures: a small, slow pattern spares the 2 cores.
SMALL_PATTERN = {"width": 320, "height": 240, "fps": 15}


async def start_server(
    lab: NatLab, make_server: ServerFactory, here: Host, **config: Any
) -> TestServer:
    """peercam in the current namespace (``here``), reached at ``here.public_address``; closed
    with the lab, before coturn stops (it releases its TURN allocations while coturn answers)."""
    config = {
        "ice_addresses": (here.address,),
        "allow_hosts": tuple({here.address, here.public_address}),
        "pattern": SMALL_PATTERN,
        **config,
    }
    server = await make_server(host="0.0.0.0", **config)
    lab.on_exit(server.close)
    return server


def ws_url(server: TestServer, here: Host) -> str:
    return f"ws://{here.public_address}:{server.port}/ws"


def server_pairs(server: TestServer) -> list[dict[str, Any] | None]:
    """The server's own selected pair for each of its viewers (aioice internals)."""
    pairs: list[dict[str, Any] | None] = []
    for peer in service_of(server).peers.peers():
        transport = peer._pc.getTransceivers()[0].sender.transport.transport
        pair = transport._connection._nominated.get(1)
        pairs.append(
            None
            if pair is None
            else {
                "local": pair.local_candidate.type,
                "remote": pair.remote_candidate.type,
                "protocol": pair.local_candidate.transport,
            }
        )
    return pairs


async def works(viewer: NetAiortcViewer, *, stop: bool = True) -> AiortcReport:
    """The viewer's report once it decoded frames over a selected pair (fails on an error);
    then it stops (``stop``), as its decoding would only slow down the others."""
    report = await viewer.wait_until(
        lambda r: (r.frames >= 5 and r.pair is not None) or bool(r.error), WORKS_WITHIN
    )
    assert report.error is None, report
    assert report.pair is not None, report
    if stop:
        await viewer.stop()
    return report


async def fails(viewer: NetAiortcViewer) -> AiortcReport:
    """The control viewer's report once it gave up (``connect_timeout``): no frame, no pair."""
    report = await viewer.wait_until(lambda r: bool(r.error), CONTROL_GIVES_UP + WORKS_WITHIN)
    assert report.error is not None
    assert report.error.startswith("no frame within"), report
    assert report.frames == 0, report
    assert report.pair is None, report
    return report


@pytest.fixture(autouse=True)
def _log_pairs(caplog: pytest.LogCaptureFixture) -> None:
    """The selected pairs are logged at INFO: ``pytest -rA`` shows them."""
    caplog.set_level(logging.INFO, logger=__name__)


def note(topology: str, run: str, pair: object) -> None:
    logger.info("natlab %s | %s | pair %s", topology, run, pair)


# -- Chromium -------------------------------------------------------------------------------------

INFO_JS = '() => document.querySelector("peercam-view")?.info'

#: Installed before the page's scripts: counts the page's peer connections and how many ever
#: connected, so a control can tell "never connected" from "connected, then fell back".
WATCH_PCS_JS = """
(() => {
  const seen = window.__natlab = { pcs: 0, connected: 0 };
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Original {
    constructor(...args) {
      super(...args);
      seen.pcs += 1;
      this.addEventListener("connectionstatechange", () => {
        if (this.connectionState === "connected") seen.connected += 1;
      });
    }
  };
})();
"""

#: The element's selected candidate pair (types, protocol, addresses), from getStats.


async def new_page(browser: Browser) -> Page:
    context = await browser.new_context(viewport={"width": 800, "height": 600})
    await context.add_init_script(WATCH_PCS_JS)
    return await context.new_page()


async def page_plays(browser: Browser, server: TestServer, here: Host) -> dict[str, Any]:
    """The page plays WebRTC (a slow machine must not make it fall back); its selected pair."""
    page = await new_page(browser)
    url = f"http://{here.public_address}:{server.port}/?codec=vp8&fallback-after=60"
    await page.goto(url)
    await wait_for(
        page,
        """() => { const i = document.querySelector("peercam-view")?.info;
                   return i?.mode === "WebRTC" && i.state === "playing"; }""",
        timeout_s=WORKS_WITHIN,
        what=f"{url} plays WebRTC",
        diagnosis_js=INFO_JS,
    )
    pair: dict[str, Any] | None = await page.evaluate(SELECTED_PAIR_JS)
    assert pair is not None
    await page.context.close()
    return pair


async def page_falls_back(browser: Browser, server: TestServer, here: Host) -> dict[str, Any]:
    """The control page: WebRTC never connects, the page falls back to JPEG after
    :data:`CONTROL_GIVES_UP`; its element's info."""
    page = await new_page(browser)
    url = f"http://{here.public_address}:{server.port}/?fallback-after={CONTROL_GIVES_UP:g}"
    await page.goto(url)
    info: dict[str, Any] = await wait_for(
        page,
        """() => { const i = document.querySelector("peercam-view")?.info;
                   return i?.mode === "JPEG" && i.state === "playing" ? i : null; }""",
        timeout_s=CONTROL_GIVES_UP + WORKS_WITHIN,
        what="the control page falls back to JPEG",
        diagnosis_js=INFO_JS,
    )
    seen = await page.evaluate("() => window.__natlab")
    await page.context.close()
    assert info["fallbackReason"] in ("no-video", "failed"), info
    assert seen["pcs"] >= 1, seen
    assert seen["connected"] == 0, seen  # WebRTC never connected, not "connected, then lost"
    return info


async def forward_http(router: Router, here: Host, *servers: TestServer) -> None:
    """The server's router forwards its HTTP port(s), TCP only."""
    for server in servers:
        assert server.port is not None
        await router.forward("tcp", server.port, here.address)


# -- the lab itself ------------------------------------------------------------------------------


async def _receive(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    data, source = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(sock, 2048), 10)
    return data, (str(source[0]), int(source[1]))


async def test_routers_map_and_filter_as_cone_and_symmetric_nats_do(nat_lab: NatLab) -> None:
    """Behind the cone router one socket keeps one public port (its own) whatever it sends to;
    behind the symmetric one each destination sees another port. Both let in only the replies
    of whom a packet went to: another socket at the same address is dropped. A router without
    NAT passes the private address on as it is."""
    here, elsewhere = await nat_lab.here(), await nat_lab.host()
    loop = asyncio.get_running_loop()
    receivers = []
    for host in (here, elsewhere):
        sock = host.socket(socket.SOCK_DGRAM)
        sock.bind((host.address, 0))
        receivers.append(sock)
    try:
        for nat in (Nat.CONE, Nat.SYMMETRIC, Nat.NONE):
            inside = await nat_lab.host(await nat_lab.router(nat))
            with inside.socket(socket.SOCK_DGRAM) as sock:
                sock.bind((inside.address, 0))
                seen = []
                for receiver in receivers:
                    await loop.sock_sendto(sock, b"out", receiver.getsockname())
                    seen.append((await _receive(receiver))[1])
                if nat is Nat.NONE:
                    assert seen == [sock.getsockname()] * 2, seen  # untranslated, unanswerable
                    continue
                assert {address for address, _ in seen} == {inside.public_address}, seen
                ports = {port for _, port in seen}
                if nat is Nat.CONE:
                    assert ports == {sock.getsockname()[1]}, seen  # one mapping, port kept
                else:
                    assert len(ports) == 2, seen  # one mapping per destination
                # Filtering: a stranger at the contacted address first, then the contacted one.
                with here.socket(socket.SOCK_DGRAM) as stranger:
                    stranger.bind((here.address, 0))
                    await loop.sock_sendto(stranger, b"unasked", seen[0])
                await loop.sock_sendto(receivers[0], b"reply", seen[0])
                assert await _receive(sock) == (b"reply", receivers[0].getsockname())
    finally:
        for sock in receivers:
            sock.close()


async def test_the_lab_removes_everything_even_after_a_failure() -> None:
    """Namespaces, the current namespace's veth and route, and coturn go with the lab."""
    with pytest.raises(ZeroDivisionError):  # noqa: PT012 — the failure happens mid-test
        async with NatLab() as lab:
            router = await lab.router(Nat.SYMMETRIC)
            host = await lab.host(router)
            here = await lab.here(router)
            await router.forward("udp", (40000, 40009), here.address)
            await router.block_udp()
            turn = await lab.coturn()
            assert host.ns is not None
            pids = [lab.internet.pid, router.ns.pid, host.ns.pid]
            assert "natlab" in await run("ip", "-o", "link", "show")
            assert "203.0.113.0/24 via" in await run("ip", "route")
            assert "turnserver" in await run(*lab.internet.nsenter("ss", "-lntp"))
            assert turn.port == 3478
            _ = 1 / 0
    assert "natlab" not in await run("ip", "-o", "link", "show")
    assert "203.0.113." not in await run("ip", "route")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- 1. viewer behind NAT, server public ----------------------------------------------------------


async def test_viewer_behind_nat_reaches_a_public_server_directly(
    nat_lab: NatLab, make_server: ServerFactory
) -> None:
    """No STUN, no TURN: behind a cone and behind a symmetric NAT alike, the server learns the
    viewer's mapped address from its checks (peer-reflexive) and answers there. Control: the
    same viewer and server, the server's ICE announcing no public address (as a server behind
    NAT without STUN: test 2's control) — then nothing connects."""
    here = await nat_lab.here()
    server = await start_server(nat_lab, make_server, here)
    hidden = await start_server(nat_lab, make_server, here, ice_addresses=("127.0.0.1",))
    cone, symmetric = [await nat_lab.router(nat) for nat in (Nat.CONE, Nat.SYMMETRIC)]
    viewers = [await nat_lab.host(router) for router in (cone, symmetric)]
    url = ws_url(server, here)
    async with (
        NetAiortcViewer(viewers[0], url, codec="vp8") as behind_cone,
        NetAiortcViewer(viewers[1], url, codec="vp8") as behind_symmetric,
        NetAiortcViewer(
            viewers[0], ws_url(hidden, here), codec="vp8", connect_timeout=CONTROL_GIVES_UP
        ) as control,
    ):
        reports = await asyncio.gather(
            works(behind_cone, stop=False), works(behind_symmetric, stop=False), fails(control)
        )
        on_server = server_pairs(server)
    for report, router in zip(reports[:2], (cone, symmetric), strict=True):
        pair = report.pair
        assert pair is not None
        note("viewer behind NAT", f"aiortc, {router.nat.value} NAT", pair)
        assert (pair["local"], pair["remote"], pair["protocol"]) == ("host", "host", "udp"), report
        assert pair["remoteAddress"].startswith(f"{here.address}:"), report
        assert report.ice["local"] == ["host"], report  # no STUN, no TURN
    note("viewer behind NAT", "control: no public server address", reports[2].ice)
    assert reports[2].ice["remote"] == ["host"], reports[2]
    # The server's side: its host candidate, the viewer's mapped address learned from checks.
    assert (
        sorted(map(str, on_server))
        == [str({"local": "host", "remote": "prflx", "protocol": "udp"})] * 2
    ), on_server


# -- 2. both behind cone NATs: STUN ---------------------------------------------------------------


async def test_both_behind_cone_nats_connect_with_stun(
    nat_lab: NatLab, make_server: ServerFactory, playwright: Playwright
) -> None:
    """Server and viewer each behind a cone NAT (the server's router forwards only HTTP): STUN's
    server-reflexive candidates let both punch through. Control: no STUN, no path."""
    turn = await nat_lab.coturn(secret="unused")  # STUN only: answers binding requests
    home = await nat_lab.router(Nat.CONE)
    here = await nat_lab.here(home)
    stun = (IceServer((turn.stun_url(),)),)
    server = await start_server(nat_lab, make_server, here, ice_servers=stun)
    control = await start_server(nat_lab, make_server, here)
    await forward_http(home, here, server, control)
    viewer = await nat_lab.host(await nat_lab.router(Nat.CONE))
    async with (
        NetAiortcViewer(
            viewer, ws_url(server, here), codec="vp8", config_ice_servers=True
        ) as aiortc_viewer,
        chromium_in(viewer, playwright) as browser,
    ):
        chromium, aiortc, _ = await asyncio.gather(
            page_plays(browser, server, here),
            works(aiortc_viewer),
            page_falls_back(browser, control, here),
        )
    note("both behind cone NATs", "Chromium, STUN", chromium)
    note("both behind cone NATs", "aiortc, STUN", aiortc.pair)
    assert (chromium["local"], chromium["remote"], chromium["protocol"]) == (
        "srflx",
        "srflx",
        "udp",
    ), chromium
    assert chromium["remoteAddress"].startswith(f"{home.public_address}:"), chromium
    assert aiortc.pair is not None
    # aioice names a pair's local side by its base (the host candidate STUN went out from).
    assert (aiortc.pair["local"], aiortc.pair["remote"]) == ("host", "srflx"), aiortc.pair
    assert aiortc.pair["remoteAddress"].startswith(f"{home.public_address}:"), aiortc.pair
    assert "srflx" in aiortc.ice["local"], aiortc


# -- 3. one symmetric NAT: only TURN --------------------------------------------------------------


async def test_symmetric_nat_needs_turn_and_check_says_only_through_the_relay(
    nat_lab: NatLab, make_server: ServerFactory, playwright: Playwright
) -> None:
    """The viewer behind a symmetric NAT, the server behind a cone NAT: the port STUN saw is not
    the one the server's checks meet, and the server's NAT filters, so only TURN connects.
    Control: STUN alone fails. /check, loaded in that viewer's namespace, says exactly that."""
    turn = await nat_lab.coturn(secret="lab secret")
    home = await nat_lab.router(Nat.CONE)
    here = await nat_lab.here(home)
    stun = (IceServer((turn.stun_url(),)),)
    relay = TurnSecret((turn.url("udp"), turn.url("tcp")), "lab secret", ttl=600)
    server = await start_server(nat_lab, make_server, here, ice_servers=stun, turn_secret=relay)
    control = await start_server(nat_lab, make_server, here, ice_servers=stun)
    await forward_http(home, here, server, control)
    viewer = await nat_lab.host(await nat_lab.router(Nat.SYMMETRIC))
    async with (
        together(
            NetAiortcViewer(
                viewer,
                ws_url(control, here),
                codec="vp8",
                config_ice_servers=True,
                connect_timeout=CONTROL_GIVES_UP,
            ),
        ) as (aiortc_control,),
        chromium_in(viewer, playwright) as browser,
    ):
        chromium, stun_only, check = await asyncio.gather(
            page_plays(browser, server, here),
            fails(aiortc_control),
            run_check(browser, server, here),
        )
    note("one symmetric NAT", "Chromium, TURN", chromium)
    note("one symmetric NAT", "control: aiortc, STUN only", stun_only.ice)
    note(
        "one symmetric NAT",
        "/check",
        {k: (v["status"], v.get("pair", {}).get("text")) for k, v in check["results"].items()},
    )
    assert "relay" in (chromium["local"], chromium["remote"]), chromium
    assert "srflx" in stun_only.ice["local"], stun_only  # STUN worked; the path did not
    statuses = {path: result["status"] for path, result in check["results"].items()}
    assert statuses == {
        "direct": "fails",
        "stun": "fails",
        "turn-udp": "works",
        "turn-tcp": "works",
        "turns": "skipped",
    }, check
    # STUN's path connected only to the server's own relay: /check does not call that STUN.
    stun_path = check["results"]["stun"]
    if "pair" in stun_path:
        assert stun_path["detail"] == "only through the server's relay", check
    assert "Direct paths are blocked here, but TURN over UDP works" in check["advice"], check


async def run_check(browser: Browser, server: TestServer, here: Host) -> dict[str, Any]:
    """/check in this browser: every path's result and the advice."""
    page = await new_page(browser)
    await page.goto(f"http://{here.public_address}:{server.port}/check")
    await wait_for(
        page,
        '() => document.body.dataset.done === "true"',
        timeout_s=90,  # five paths, at most 8 s each when one fails, on a busy machine
        what="/check done",
        diagnosis_js="() => window.results",
    )
    check: dict[str, Any] = await page.evaluate(
        """() => ({ results: window.results,
                    advice: document.getElementById("advice").textContent })"""
    )
    await page.context.close()
    return check


# -- 4. server behind NAT: port forward, --udp-ports, --ice-advertise -----------------------------


async def test_server_behind_nat_with_a_port_forward_and_ice_advertise(
    nat_lab: NatLab, make_server: ServerFactory, playwright: Playwright
) -> None:
    """The README's recipe: the router forwards UDP LO-HI to the server, which binds its ICE
    sockets there (--udp-ports) and announces the router's public address (--ice-advertise). A
    viewer outside (behind its own NAT, no STUN) connects to the forwarded port. Controls: the
    same without --ice-advertise, and with it but no forward, fail."""
    home = await nat_lab.router(Nat.CONE)
    here = await nat_lab.here(home)
    advertise = (home.public_address,)
    ranges = [PortRange(40000, 40009), PortRange(40010, 40019), PortRange(40020, 40029)]
    server = await start_server(
        nat_lab, make_server, here, udp_ports=ranges[0], ice_advertise=advertise
    )
    unadvertised = await start_server(nat_lab, make_server, here, udp_ports=ranges[1])
    unforwarded = await start_server(
        nat_lab, make_server, here, udp_ports=ranges[2], ice_advertise=advertise
    )
    await forward_http(home, here, server, unadvertised, unforwarded)
    for ports in ranges[:2]:
        await home.forward("udp", (ports.low, ports.high), here.address)
    viewer = await nat_lab.host(await nat_lab.router(Nat.CONE))

    def control(target: TestServer) -> NetAiortcViewer:
        return NetAiortcViewer(
            viewer, ws_url(target, here), codec="vp8", connect_timeout=CONTROL_GIVES_UP
        )

    async with (
        together(
            NetAiortcViewer(viewer, ws_url(server, here), codec="vp8"),
            control(unadvertised),
        ) as (aiortc_viewer, no_advertise),
        chromium_in(viewer, playwright) as browser,
    ):
        chromium, aiortc, *_ = await asyncio.gather(
            page_plays(browser, server, here),
            works(aiortc_viewer),
            fails(no_advertise),
            page_falls_back(browser, unforwarded, here),
        )
    note("server behind NAT, port forward", "Chromium", chromium)
    note("server behind NAT, port forward", "aiortc", aiortc.pair)
    for pair in (chromium, aiortc.pair):
        assert pair is not None
        assert pair["remote"] == "host", pair  # the advertised copy of the server's host one
        host, port = pair["remoteAddress"].rsplit(":", 1)
        assert host == home.public_address, pair
        assert int(port) in ranges[0], pair
        assert pair["protocol"] == "udp", pair


# -- 5. UDP blocked: TURN over TCP and over TLS ---------------------------------------------------


async def test_udp_blocked_viewer_gets_through_turn_over_tcp_and_tls(
    nat_lab: NatLab, make_server: ServerFactory, playwright: Playwright
) -> None:
    """The viewer's router drops all UDP: TURN over TCP and TURN over TLS (coturn with a
    self-signed certificate, ``turns:``) carry the media. Control: UDP-only ICE (STUN and TURN
    over UDP) fails."""
    turn = await nat_lab.coturn(secret="lab secret", tls=True)
    here = await nat_lab.here()
    stun = (IceServer((turn.stun_url(),)),)

    def relay(url: str) -> TurnSecret:
        return TurnSecret((url,), "lab secret", ttl=600)

    over_tcp = await start_server(nat_lab, make_server, here, turn_secret=relay(turn.url("tcp")))
    over_tls = await start_server(nat_lab, make_server, here, turn_secret=relay(turn.tls_url()))
    udp_only = await start_server(
        nat_lab, make_server, here, ice_servers=stun, turn_secret=relay(turn.url("udp"))
    )
    router = await nat_lab.router(Nat.CONE)
    await router.block_udp()
    viewer = await nat_lab.host(router)
    trust = f"--ignore-certificate-errors-spki-list={turn.tls_spki}"
    async with (
        NetAiortcViewer(
            viewer, ws_url(over_tcp, here), codec="vp8", config_ice_servers=True
        ) as aiortc_viewer,
        # Chromium checks a TURN server's certificate: it trusts this self-signed one (only).
        chromium_in(viewer, playwright, args=(trust,)) as browser,
    ):
        tcp, tls, aiortc, _ = await asyncio.gather(
            page_plays(browser, over_tcp, here),
            page_plays(browser, over_tls, here),
            works(aiortc_viewer),
            page_falls_back(browser, udp_only, here),
        )
    note("UDP blocked", "Chromium, TURN over TCP", tcp)
    note("UDP blocked", "Chromium, TURN over TLS", tls)
    note("UDP blocked", "aiortc, TURN over TCP", aiortc.pair)
    assert (tcp["local"], tcp["relayProtocol"]) == ("relay", "tcp"), tcp
    assert (tls["local"], tls["relayProtocol"]) == ("relay", "tls"), tls
    assert aiortc.pair is not None
    assert (aiortc.pair["local"], aiortc.pair["relayProtocol"]) == ("relay", "tcp"), aiortc.pair
