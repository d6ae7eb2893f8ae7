"""A network lab on one machine: viewers in their own network namespaces, behind links that are
slow, lossy or closed to UDP (../shared/NETLAB.md has the kernel's facts and pitfalls).

Topology of one :class:`ViewerNet` (``k`` = its index, 0-63)::

    current namespace (the server)                viewer namespace (held by `sleep infinity`)
    nl<k>s 198.51.100.<4k+1>/30  ==== veth ====  nl<k>v 198.51.100.<4k+2>/30, lo up,
      egress: tbf (the viewer's downlink)              default route via 198.51.100.<4k+1>
    nftables table `inet netlab_nl<k>s` in each namespace, on that veth only: loss and UDP
    blocking, applied where packets arrive

Nothing is routed any further: the current namespace is the test's own (``scripts/test.sh`` runs
pytest in ``unshare -n``) or the benchmark's. Clients run inside the viewer namespace with
``nsenter``: Chromium through a wrapper script (:func:`chromium_in`), the aiortc viewer as a
subprocess (:class:`NetAiortcViewer`, ``python -m tests.netlab_viewer``), and probe sockets made
in a throwaway thread that entered the namespace (:meth:`ViewerNet.socket`).

The NAT lab (:class:`NatLab`) builds real NATs from the same parts: an "internet" namespace with
a bridge and coturn, :class:`Router` namespaces that translate (nftables masquerade, cone or
symmetric), port forwards and UDP blocks, and :class:`Host` machines behind them (the current
namespace, with the in-process server, can join as one). docs/netlab.md has both topologies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import ipaddress
import itertools
import json
import logging
import os
import shlex
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, Playwright

from bench.clients import HARNESS_JS
from tests.browser import CHROMIUM_ARGS, DEFAULT_CHROMIUM
from tests.processes import stop_process
from tests.turn import Turn, coturn

logger = logging.getLogger(__name__)

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
SUBNET = ipaddress.IPv4Network("198.51.100.0/24")
MAX_NETS = SUBNET.num_addresses // 4  # one /30 each
DEFAULT_BURST_BYTES = 32 * 1024  # >= 32 kB: a smaller bucket stalls TCP (NETLAB.md, pitfalls)
CLONE_NEWNET = 0x40000000

#: In a page of peercam: the selected ICE candidate pair of its peer connection (candidate
#: types, transport, the relay's transport, both addresses as "address:port"); None before one.
SELECTED_PAIR_JS = """
async () => {
  const pc = document.querySelector("peercam-view").peerConnection;
  const report = await pc.getStats();
  let pair = null;
  report.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) {
      pair = report.get(r.selectedCandidatePairId);
    }
  });
  if (!pair) return null;
  const l = report.get(pair.localCandidateId), r = report.get(pair.remoteCandidateId);
  return { local: l.candidateType, remote: r.candidateType, protocol: l.protocol,
           relayProtocol: l.relayProtocol ?? null, localAddress: `${l.address}:${l.port}`,
           remoteAddress: `${r.address}:${r.port}` };
}
"""


#: Installed before the page's scripts: records ``[Date.now(), picture age ms | null]`` for
#: every video frame the page presents in ``window.__bench.video`` (the benchmark's harness:
#: requestVideoFrameCallback, a canvas strip, tests/timebar.js's readTimebar).
PICTURE_AGE_JS = HARNESS_JS


class NetLabError(RuntimeError):
    """A lab command failed (the message has the command and what it said)."""


async def run(*argv: str, stdin: str | None = None) -> str:
    """Run a short command (ip, tc, nft, nsenter); its stdout, or :class:`NetLabError`."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(None if stdin is None else stdin.encode())
    if process.returncode != 0:
        raise NetLabError(f"{shlex.join(argv)}: exit {process.returncode}: {err.decode().strip()}")
    return out.decode()


def is_isolated() -> bool:
    """Whether this process's network namespace has only ``lo`` (TESTING.md §1)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def socket_in(pid: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """An IPv4 socket that lives in ``pid``'s network namespace (non-blocking, for asyncio).

    Made by a throwaway thread that entered the namespace: a socket stays in the namespace it
    was made in, and no thread of a pool is ever moved.
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []
    path = f"/proc/{pid}/ns/net"

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_INET, kind))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=make, name=f"netns-{pid}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    made[0].setblocking(False)
    return made[0]


class Namespaced(Protocol):
    """Something whose commands run in a network namespace (a :class:`Netns`, a lab host)."""

    def nsenter(self, *argv: str) -> list[str]: ...


class Netns:
    """A network namespace of its own with ``lo`` up, held by a ``sleep infinity`` process.

    ``async with Netns("name") as ns:``; on exit the holder is stopped and with it the namespace
    (and every interface in it) goes, also when the block raises. Processes started in it with
    :meth:`nsenter` must be stopped by their owners first.
    """

    def __init__(self, name: str = "netns") -> None:
        self.name = name
        self._holder: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The holder process: ``nsenter -t PID -n`` enters the namespace."""
        if self._holder is None:
            raise RuntimeError(f"namespace {self.name} is not up (use `async with`)")
        return self._holder.pid

    def nsenter(self, *argv: str) -> list[str]:
        """``argv`` as a command that runs inside the namespace."""
        return ["nsenter", "-t", str(self.pid), "-n", *argv]

    async def run(self, *argv: str, stdin: str | None = None) -> str:
        """:func:`run` inside the namespace."""
        return await run(*self.nsenter(*argv), stdin=stdin)

    def socket(self, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
        """A non-blocking IPv4 socket inside the namespace (:func:`socket_in`)."""
        return socket_in(self.pid, kind)

    def __repr__(self) -> str:
        where = "down" if self._holder is None else f"pid {self._holder.pid}"
        return f"Netns({self.name}, {where})"

    async def __aenter__(self) -> Self:
        # The holder says "ready" only once it is in its own namespace: before that, moving an
        # interface "into" its namespace would leave it here.
        holder = await asyncio.create_subprocess_exec(
            "unshare", "-n", "sh", "-c", "ip link set lo up && echo ready && exec sleep infinity",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._holder = holder
        try:
            assert holder.stdout is not None
            line = await asyncio.wait_for(holder.stdout.readline(), 10)
            if line.strip() != b"ready":
                raise NetLabError(f"the namespace holder did not start (exit {holder.returncode})")
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._holder is not None:
            await stop_process(self._holder, 5)


@dataclass(frozen=True)
class LinkState:
    """What a viewer's link does now: a rate limit of its downlink, loss, UDP blocked."""

    rate_kbit: int | None = None
    latency_ms: int = 500
    loss_percent: int = 0
    udp_blocked: bool = False


class ViewerNet:
    """A viewer's network namespace behind its own veth link to the current namespace.

    ``async with ViewerNet() as net:`` creates it; everything (nftables table, veth pair, the
    holder process and with it the namespace) is removed on exit, also when the block raises.
    ``index`` picks the /30 (and names ``nl<index>s`` / ``nl<index>v``); by default the first one
    free in this namespace, so several viewers coexist.
    """

    def __init__(self, index: int | None = None) -> None:
        if index is not None and not 0 <= index < MAX_NETS:
            raise ValueError(f"index {index}: must be 0-{MAX_NETS - 1}")
        self._wanted = index
        self._index: int | None = None
        self._ns: Netns | None = None
        self._stack = contextlib.AsyncExitStack()
        self._link = LinkState()

    # -- what it is --

    @property
    def index(self) -> int:
        if self._index is None:
            raise RuntimeError("the viewer network is not up (use `async with`)")
        return self._index

    @property
    def pid(self) -> int:
        """The holder process: ``nsenter -t PID -n`` enters the viewer's namespace."""
        if self._ns is None:
            raise RuntimeError("the viewer network is not up (use `async with`)")
        return self._ns.pid

    @property
    def server_address(self) -> str:
        """The current namespace's end of the link (where the server is reached)."""
        return str(SUBNET.network_address + 4 * self.index + 1)

    @property
    def viewer_address(self) -> str:
        return str(SUBNET.network_address + 4 * self.index + 2)

    @property
    def server_ifname(self) -> str:
        return f"nl{self.index}s"

    @property
    def viewer_ifname(self) -> str:
        return f"nl{self.index}v"

    @property
    def nft_table(self) -> str:
        return f"netlab_{self.server_ifname}"

    @property
    def link(self) -> LinkState:
        return self._link

    def nsenter(self, *argv: str) -> list[str]:
        """``argv`` as a command that runs inside the viewer's namespace."""
        return ["nsenter", "-t", str(self.pid), "-n", *argv]

    def __repr__(self) -> str:
        where = "down" if self._index is None else f"{self.viewer_address} pid {self.pid}"
        return f"ViewerNet({where}, {self._link})"

    # -- lifetime --

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        self._ns = await self._stack.enter_async_context(Netns("viewer"))
        self._index = await self._add_veth(self._ns.pid)
        self._stack.push_async_callback(self._delete_veth, self.server_ifname)
        prefix = f"/{SUBNET.prefixlen + 6}"  # /30
        await run("ip", "addr", "add", self.server_address + prefix, "dev", self.server_ifname)
        await run("ip", "link", "set", self.server_ifname, "up")
        inside = self.nsenter("ip")
        await run(*inside, "addr", "add", self.viewer_address + prefix, "dev", self.viewer_ifname)
        await run(*inside, "link", "set", self.viewer_ifname, "up")
        # Browsers pick their "default" address from the default route; it leads nowhere else.
        await run(*inside, "route", "add", "default", "via", self.server_address)
        self._stack.push_async_callback(self._delete_nft_table)
        logger.info("%r: up", self)

    async def _add_veth(self, pid: int) -> int:
        """Create the veth pair at the first free index (or the one asked for); the index."""
        candidates = [self._wanted] if self._wanted is not None else range(MAX_NETS)
        for index in candidates:
            try:
                await run(
                    "ip", "link", "add", f"nl{index}s", "type", "veth",
                    "peer", "name", f"nl{index}v", "netns", str(pid),
                )  # fmt: skip
            except NetLabError as exc:
                if "exists" in str(exc) and self._wanted is None:
                    continue  # another viewer network has it: try the next
                raise
            return index
        raise NetLabError(f"all {MAX_NETS} viewer networks are in use")

    @staticmethod
    async def _delete_veth(ifname: str) -> None:
        with contextlib.suppress(NetLabError):  # gone already if the holder died first
            await run("ip", "link", "del", ifname)

    async def _delete_nft_table(self) -> None:
        for argv in (self.nsenter("nft"), ["nft"]):
            with contextlib.suppress(NetLabError):  # no table: no loss nor blocking was set
                await run(*argv, "delete", "table", "inet", self.nft_table)

    # -- link control --

    async def set_rate(
        self, kbit: int | None, latency_ms: int = 500, burst_bytes: int = DEFAULT_BURST_BYTES
    ) -> None:
        """Limit the viewer's downlink to ``kbit`` kbit/s (tbf on the server side's egress),
        queueing up to ``latency_ms``; None removes the limit. Takes effect at once."""
        if kbit is None:
            with contextlib.suppress(NetLabError):  # no qdisc of ours: clean already
                await run("tc", "qdisc", "del", "dev", self.server_ifname, "root")
        else:
            if kbit <= 0 or latency_ms <= 0 or burst_bytes < 1600:
                raise ValueError("the rate and latency must be positive, the burst >= 1600 B")
            await run(
                "tc", "qdisc", "replace", "dev", self.server_ifname, "root", "tbf",
                "rate", f"{kbit}kbit", "burst", str(burst_bytes), "latency", f"{latency_ms}ms",
            )  # fmt: skip
        self._link = LinkState(kbit, latency_ms, self._link.loss_percent, self._link.udp_blocked)
        logger.info("%r: rate set", self)

    async def set_loss(self, percent: int) -> None:
        """Drop ``percent`` % of the UDP packets towards the viewer, at random."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss {percent} %: must be 0-100")
        self._link = LinkState(self._link.rate_kbit, self._link.latency_ms, percent,
                               self._link.udp_blocked)  # fmt: skip
        await self._apply_filter()

    async def block_udp(self, on: bool) -> None:
        """Drop every UDP packet to and from the viewer (WebRTC media); TCP still flows."""
        self._link = LinkState(self._link.rate_kbit, self._link.latency_ms,
                               self._link.loss_percent, on)  # fmt: skip
        await self._apply_filter()

    async def _apply_filter(self) -> None:
        """Make this link's nftables tables say what ``link`` says, each in one transaction.

        Packets are dropped where they *arrive* (prerouting on the receiving end of the veth): a
        drop on the sender's output path would fail its ``send()`` with EPERM, which no real
        network does. Towards the viewer: a table in the viewer's namespace; towards the server
        (only when UDP is blocked): one here.
        """
        link = self._link
        towards_viewer, towards_server = [], []
        if link.udp_blocked:
            towards_viewer.append(f'iifname "{self.viewer_ifname}" meta l4proto udp drop')
            towards_server.append(f'iifname "{self.server_ifname}" meta l4proto udp drop')
        elif link.loss_percent:
            towards_viewer.append(
                f'iifname "{self.viewer_ifname}" meta l4proto udp '
                f"numgen random mod 100 < {link.loss_percent} drop"
            )
        await run(*self.nsenter("nft", "-f", "-"), stdin=self._nft_script(towards_viewer))
        await run("nft", "-f", "-", stdin=self._nft_script(towards_server))
        logger.info("%r: filter set", self)

    def _nft_script(self, rules: Sequence[str]) -> str:
        # "add" then "delete" makes the deletion valid whether or not the table exists.
        table = self.nft_table
        script = [f"add table inet {table}", f"delete table inet {table}"]
        if rules:
            script += [
                f"table inet {table} {{",
                "  chain arriving { type filter hook prerouting priority -150; policy accept;",
                *(f"    {rule}" for rule in rules),
                "  }",
                "}",
            ]
        return "\n".join(script) + "\n"

    # -- probes --

    def socket(self, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
        """A non-blocking IPv4 socket that lives in the viewer's namespace (:func:`socket_in`)."""
        return socket_in(self.pid, kind)


# -- the NAT lab: an "internet", routers that translate, hosts behind them ----------------------

INTERNET = ipaddress.IPv4Network("203.0.113.0/24")
#: The "internet" namespace's own address on its bridge: where coturn (STUN and TURN) listens.
INTERNET_HOST = str(INTERNET.network_address + 1)
#: A next hop on the internet that no namespace is: the lab's sink for unroutable packets.
NOWHERE = str(INTERNET.broadcast_address - 1)


class Nat(enum.Enum):
    """What a :class:`Router` does to what its LAN sends out.

    ``CONE``: ``masquerade``, which keeps a source port while it is free, so one inside socket
    has one outside port whatever it talks to (endpoint-independent mapping); conntrack lets in
    only replies from the address and port a packet went to (port-restricted filtering), so STUN
    plus both sides sending punches through. ``SYMMETRIC``: ``masquerade fully-random``: a new
    random outside port per destination, so the port STUN saw is not the one a peer sees and
    only a relay gets through (when the other side filters too). ``NONE``: routing only, the
    LAN's private addresses go out as they are (and no answer can find its way back).
    """

    NONE = "none"
    CONE = "cone"
    SYMMETRIC = "symmetric"


@dataclass(frozen=True)
class Forward:
    """A port forward: ``proto`` ports ``low``-``high`` of the router's public address to the
    same ports of ``to`` (never renumbered)."""

    proto: str
    low: int
    high: int
    to: str


class Router:
    """A home router: its own namespace, ``wan`` on the lab's internet, ``lan`` a bridge for its
    LAN (``100.64.<index>.0/24``, the router ``.1``). Made by :meth:`NatLab.router`.

    Its nftables table ``ip natlab`` says everything at once (rewritten in one transaction on
    every change): the NAT, the port forwards, a firewall that drops what arrives from the
    internet unasked (as home routers do; it also keeps unasked packets out of conntrack, where
    they would make masquerade renumber the port a hole was punched for) and, on request, all
    UDP in both directions.
    """

    def __init__(self, ns: Netns, index: int, public_address: str, nat: Nat) -> None:
        self.ns = ns
        self.index = index
        self.public_address = public_address
        self.nat = nat
        self.lan = ipaddress.IPv4Network(f"100.64.{index}.0/24")
        self.forwards: tuple[Forward, ...] = ()
        self.udp_blocked = False
        self._hosts = 0

    @property
    def lan_address(self) -> str:
        return str(self.lan.network_address + 1)

    def nsenter(self, *argv: str) -> list[str]:
        return self.ns.nsenter(*argv)

    def next_lan_address(self) -> str:
        self._hosts += 1
        return str(self.lan.network_address + 1 + self._hosts)

    def __repr__(self) -> str:
        return (f"Router({self.public_address} nat={self.nat.value} lan={self.lan} "
                f"forwards={list(self.forwards)} udp_blocked={self.udp_blocked})")  # fmt: skip

    async def forward(self, proto: str, ports: int | tuple[int, int], to: str) -> None:
        """Forward ``proto`` ("udp" or "tcp") port(s) of the public address to ``to``."""
        if proto not in ("udp", "tcp"):
            raise ValueError(f"forward {proto!r}: udp or tcp")
        low, high = (ports, ports) if isinstance(ports, int) else ports
        self.forwards = (*self.forwards, Forward(proto, low, high, to))
        await self.apply()

    async def block_udp(self, on: bool = True) -> None:
        """Drop every UDP packet between the LAN and the internet (TCP still flows)."""
        self.udp_blocked = on
        await self.apply()

    def nft_script(self) -> str:
        masquerade = {
            Nat.NONE: [],
            Nat.CONE: ['oifname "wan" masquerade'],
            Nat.SYMMETRIC: ['oifname "wan" masquerade fully-random'],
        }[self.nat]
        dnat = [
            f'iifname "wan" {f.proto} dport {f.low}-{f.high} dnat to {f.to}' for f in self.forwards
        ]
        udp = ["meta l4proto udp drop"] if self.udp_blocked else []
        lines = [
            "add table ip natlab",
            "delete table ip natlab",
            "table ip natlab {",
            "  chain pre { type nat hook prerouting priority dstnat; policy accept;",
            *(f"    {rule}" for rule in dnat),
            "  }",
            "  chain post { type nat hook postrouting priority srcnat; policy accept;",
            *(f"    {rule}" for rule in masquerade),
            "  }",
            "  chain forward { type filter hook forward priority filter; policy drop;",
            *(f"    {rule}" for rule in udp),
            "    ct state established,related accept",
            '    iifname "lan" oifname "wan" accept',
            '    iifname "wan" ct status dnat accept',
            "  }",
            "  chain input { type filter hook input priority filter; policy accept;",
            '    iifname "wan" ct state established,related accept',
            '    iifname "wan" drop',
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"

    async def apply(self) -> None:
        await self.ns.run("nft", "-f", "-", stdin=self.nft_script())
        logger.info("%r: rules set", self)


@dataclass(frozen=True)
class Host:
    """A machine in the NAT lab: its address, its namespace (None: the current one, where the
    in-process server runs) and the router it sits behind (None: on the internet itself)."""

    address: str
    ns: Netns | None
    router: Router | None

    def nsenter(self, *argv: str) -> list[str]:
        return list(argv) if self.ns is None else self.ns.nsenter(*argv)

    def socket(self, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
        if self.ns is None:
            sock = socket.socket(socket.AF_INET, kind)
            sock.setblocking(False)
            return sock
        return self.ns.socket(kind)

    @property
    def public_address(self) -> str:
        """Where the internet reaches it: its router's public address, or its own."""
        return self.address if self.router is None else self.router.public_address


async def _has_default_route() -> bool:
    """Whether the current namespace routes anywhere (a real network; ``unshare -n`` does not)."""
    return bool((await run("ip", "-4", "route", "show", "default")).strip())


class NatLab:
    """NATs on one machine: an "internet", home routers that translate, hosts behind them.

    ::

        internet namespace: bridge "wan" 203.0.113.1/24 (coturn listens here: STUN + TURN)
          ├─ router k (own namespace): wan 203.0.113.<10+n>, NAT/forwards/firewall (nftables),
          │    └─ bridge "lan" 100.64.k.1/24 ── hosts 100.64.k.2, .3 … (default via .1)
          └─ public hosts 203.0.113.<10+n> (default via the bridge, which routes nowhere)

    ``async with NatLab() as lab:`` is the one owner of every piece: namespaces, veth pairs, the
    current namespace's interface and route (:meth:`here`), coturn (:meth:`coturn`) and what the
    test hands it with :meth:`on_exit` (e.g. the server's close, so that it releases its TURN
    allocations while coturn still answers); all go on exit in reverse order, also on failure.
    Nothing is routed between LANs except through the routers, and the internet namespace does
    not forward at all: a private address is reachable only from its own LAN, as on the
    Internet. The current namespace must have no default route (``unshare -n`` first).
    """

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._internet: Netns | None = None
        self._public = 9  # the last public address handed out: .10 is the first
        self._ports = 0  # the internet bridge's ports
        self._routers = 0
        self._here = False

    @property
    def internet(self) -> Netns:
        if self._internet is None:
            raise RuntimeError("the NAT lab is not up (use `async with`)")
        return self._internet

    async def __aenter__(self) -> Self:
        try:
            internet = await self._stack.enter_async_context(Netns("internet"))
            self._internet = internet
            await internet.run("ip", "link", "add", "wan", "type", "bridge")
            await internet.run("ip", "addr", "add", f"{INTERNET_HOST}/{INTERNET.prefixlen}",
                               "dev", "wan")  # fmt: skip
            await internet.run("ip", "link", "set", "wan", "up")
            # The rest of the Internet: whatever has no address here (a LAN's private one) goes
            # to a neighbour nobody is and vanishes, as on the Internet. Without a route, a send
            # would fail at once with ENETUNREACH, and coturn ends the whole allocation of a
            # client whose relayed packet failed so (a viewer's private candidate would do it).
            await internet.run("ip", "neigh", "add", NOWHERE, "lladdr", "02:00:00:00:00:fe",
                               "dev", "wan", "nud", "permanent")  # fmt: skip
            await internet.run("ip", "route", "add", "default", "via", NOWHERE)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    def on_exit(self, callback: Callable[[], Awaitable[object]]) -> None:
        """Run ``callback`` when the lab closes, before everything made so far goes."""
        self._stack.push_async_callback(callback)

    async def enter(self, manager: contextlib.AbstractAsyncContextManager[T]) -> T:
        """Enter ``manager`` (a client, a process) with the lab as its owner."""
        return await self._stack.enter_async_context(manager)

    def _next_public(self) -> str:
        self._public += 1
        address = INTERNET.network_address + self._public
        if address >= ipaddress.IPv4Address(NOWHERE):
            raise NetLabError("no public address left")
        return str(address)

    async def _plug(self, ns: Netns, ifname: str, address: str, prefixlen: int) -> None:
        """A veth from the internet bridge to ``ns``, named ``ifname`` there, addressed."""
        self._ports += 1
        port = f"p{self._ports}"
        await self.internet.run("ip", "link", "add", port, "type", "veth",
                                "peer", "name", ifname, "netns", str(ns.pid))  # fmt: skip
        await self.internet.run("ip", "link", "set", port, "master", "wan", "up")
        await ns.run("ip", "addr", "add", f"{address}/{prefixlen}", "dev", ifname)
        await ns.run("ip", "link", "set", ifname, "up")

    async def router(self, nat: Nat = Nat.CONE) -> Router:
        """A new router on the internet with an empty LAN behind it."""
        self._routers += 1
        index = self._routers
        if index > 255:
            raise NetLabError("no LAN left")
        ns = await self.enter(Netns(f"router{index}"))
        public = self._next_public()
        await self._plug(ns, "wan", public, INTERNET.prefixlen)
        await ns.run("ip", "route", "add", "default", "via", INTERNET_HOST)
        router = Router(ns, index, public, nat)
        await ns.run("ip", "link", "add", "lan", "type", "bridge")
        await ns.run("ip", "addr", "add", f"{router.lan_address}/24", "dev", "lan")
        await ns.run("ip", "link", "set", "lan", "up")
        await ns.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        await router.apply()
        logger.info("%r: up", router)
        return router

    async def host(self, behind: Router | None = None) -> Host:
        """A new machine (its own namespace) behind ``behind``, or on the internet itself."""
        ns = await self.enter(Netns("host"))
        if behind is None:
            address = self._next_public()
            await self._plug(ns, "eth0", address, INTERNET.prefixlen)
            await ns.run("ip", "route", "add", "default", "via", INTERNET_HOST)
        else:
            address = behind.next_lan_address()
            port = f"h{address.rsplit('.', 1)[1]}"
            await behind.ns.run("ip", "link", "add", port, "type", "veth",
                                "peer", "name", "eth0", "netns", str(ns.pid))  # fmt: skip
            await behind.ns.run("ip", "link", "set", port, "master", "lan", "up")
            await ns.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
            await ns.run("ip", "link", "set", "eth0", "up")
            await ns.run("ip", "route", "add", "default", "via", behind.lan_address)
        return Host(address, ns, behind)

    async def here(self, behind: Router | None = None) -> Host:
        """Join the current namespace (the in-process server's) to the lab, behind ``behind`` or
        on the internet: one veth and a route to the internet's /24 (no default route)."""
        if self._here:
            raise NetLabError("the current namespace is in this lab already")
        if await _has_default_route():
            raise NetLabError("the NAT lab adds routes here: run it in `unshare -n`, not here")
        self._here = True
        peer = "here"  # in a namespace of this lab's: no other name there is "here"
        target = self.internet if behind is None else behind.ns
        for index in itertools.count():
            ifname = f"natlab{index}"
            try:
                await run("ip", "link", "add", ifname, "type", "veth",
                          "peer", "name", peer, "netns", str(target.pid))  # fmt: skip
            except NetLabError as exc:
                if "exists" in str(exc) and index < 64:
                    continue  # another lab's, in this namespace: try the next name
                raise
            break
        self._stack.push_async_callback(ViewerNet._delete_veth, ifname)
        if behind is None:
            address = self._next_public()
            await self.internet.run("ip", "link", "set", peer, "master", "wan", "up")
            await run("ip", "addr", "add", f"{address}/{INTERNET.prefixlen}", "dev", ifname)
            await run("ip", "link", "set", ifname, "up")
        else:
            address = behind.next_lan_address()
            await behind.ns.run("ip", "link", "set", peer, "master", "lan", "up")
            await run("ip", "addr", "add", f"{address}/24", "dev", ifname)
            await run("ip", "link", "set", ifname, "up")
            await run("ip", "route", "add", str(INTERNET), "via", behind.lan_address)
        return Host(address, None, behind)

    async def coturn(self, **kwargs: Any) -> Turn:
        """coturn in the internet namespace on :data:`INTERNET_HOST` (STUN and TURN; keywords:
        :func:`tests.turn.coturn`'s), stopped with the lab."""
        internet = self.internet
        return await self.enter(
            coturn(host=INTERNET_HOST, prefix=internet.nsenter(), connect=internet.socket, **kwargs)
        )


# -- Chromium in a viewer namespace ------------------------------------------------------------


def lab_url(server: TestServer, net: ViewerNet, path: str) -> str:
    """``path`` on an in-process server, as the viewer in ``net`` reaches it (its veth)."""
    return f"http://{net.server_address}:{server.port}{path}"


def chromium_executable() -> Path:
    """Debian's Chromium, or ``PEERCAM_CHROMIUM`` (tests/browser.py's choice)."""
    path = Path(os.environ.get("PEERCAM_CHROMIUM") or DEFAULT_CHROMIUM)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"Chromium not found at {path} (apt-get install chromium)")
    return path


@contextlib.asynccontextmanager
async def chromium_in(
    net: Namespaced,
    playwright: Playwright,
    *,
    prefix: Sequence[str] = (),
    args: Sequence[str] = (),
) -> AsyncIterator[Browser]:
    """Headless Chromium whose every process runs in ``net``'s namespace (a :class:`ViewerNet`,
    a NAT lab :class:`Host`; ``prefix``: e.g. a ``taskset`` command; ``args``: more flags).
    Playwright drives it over a pipe, so control needs no network."""
    with tempfile.TemporaryDirectory(prefix="netlab-chromium-") as directory:
        wrapper = Path(directory) / "chromium"
        command = shlex.join([*net.nsenter(*prefix, str(chromium_executable()))])
        wrapper.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        wrapper.chmod(0o755)
        browser = await playwright.chromium.launch(
            executable_path=str(wrapper), headless=True, args=[*CHROMIUM_ARGS, *args]
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass(frozen=True)
class PictureStats:
    """What a viewer saw in a window: new pictures, their age, the longest freeze."""

    frames: int
    fps: float
    stamped: int  # pictures whose capture-time bar decoded
    age_p50_ms: float | None
    age_p95_ms: float | None
    age_max_ms: float | None
    longest_freeze_s: float  # the longest time without a new picture, window edges included


#: One presented picture: (wall-clock time in s, its age in ms or None if the bar was damaged).
Sample = tuple[float, float | None]


async def picture_samples(page: Page) -> list[Sample]:
    """Every picture the page presented so far (needs :data:`PICTURE_AGE_JS` installed)."""
    raw: list[list[float | None]] = await page.evaluate("() => window.__bench?.video ?? []")
    return [(float(wall or 0) / 1000, age) for wall, age in raw]


def _percentile(values: Sequence[float], p: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def picture_stats(samples: Sequence[Sample], start: float, end: float) -> PictureStats:
    """The figures of the pictures presented within ``[start, end)`` (wall-clock seconds)."""
    if end <= start:
        raise ValueError("the window must not be empty")
    inside = [(t, age) for t, age in samples if start <= t < end]
    ages = [age for _, age in inside if age is not None]
    edges = [start, *(t for t, _ in inside), end]
    freeze = max(b - a for a, b in itertools.pairwise(edges))
    return PictureStats(
        frames=len(inside),
        fps=len(inside) / (end - start),
        stamped=len(ages),
        age_p50_ms=_percentile(ages, 50),
        age_p95_ms=_percentile(ages, 95),
        age_max_ms=max(ages, default=None),
        longest_freeze_s=freeze,
    )


# -- the aiortc viewer in a viewer namespace ---------------------------------------------------


@dataclass
class AiortcReport:
    """What ``tests.netlab_viewer`` has said so far (its lines, accumulated)."""

    frames: int = 0
    ages_ms: list[float] = field(default_factory=list)
    longest_gap_s: float = 0.0
    width: int = 0
    height: int = 0
    error: str | None = None
    ended: bool = False
    lines: int = 0
    #: ICE: ``state``, candidate types ``local``/``remote``, the selected ``pair`` (or None).
    ice: dict[str, Any] = field(default_factory=dict)

    @property
    def pair(self) -> dict[str, Any] | None:
        """The selected candidate pair: ``local``/``remote`` types, ``protocol``, addresses."""
        pair: dict[str, Any] | None = self.ice.get("pair")
        return pair


class NetAiortcViewer:
    """``python -m tests.netlab_viewer`` inside ``net``'s namespace, read line by line.

    ``async with NetAiortcViewer(net, ws_url) as viewer: await viewer.wait_until(...)``; on exit
    the process gets SIGTERM (closes its peer connection and exits) and is awaited. ``net``: a
    :class:`ViewerNet` (ICE then announces its viewer address only) or any other namespace (a
    NAT lab :class:`Host`: every address there, or ``address``). ``config_ice_servers``: the
    server's STUN/TURN list, as the page uses it; ``ice_servers``: STUN URLs of its own;
    ``relay``: relayed candidates only; ``connect_timeout``: the viewer gives up (``error``) if
    no frame came within that many seconds — how a control run fails fast.
    """

    def __init__(
        self,
        net: Namespaced,
        ws_url: str,
        *,
        codec: str | None = None,
        seconds: float | None = None,
        address: str | None = None,
        config_ice_servers: bool = False,
        ice_servers: Sequence[str] = (),
        relay: bool = False,
        connect_timeout: float | None = None,
    ) -> None:
        self.net = net
        self.ws_url = ws_url
        self.codec = codec
        self.seconds = seconds
        if address is None and isinstance(net, ViewerNet):
            address = net.viewer_address
        self.address = address
        self.config_ice_servers = config_ice_servers
        self.ice_servers = tuple(ice_servers)
        self.relay = relay
        self.connect_timeout = connect_timeout
        self.report = AiortcReport()
        self._changed = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        argv = [sys.executable, "-m", "tests.netlab_viewer", "--ws", self.ws_url]
        if self.address:
            argv += ["--address", self.address]
        if self.codec:
            argv += ["--codec", self.codec]
        if self.seconds is not None:
            argv += ["--seconds", f"{self.seconds:g}"]
        if self.config_ice_servers:
            argv.append("--config-ice-servers")
        for url in self.ice_servers:
            argv += ["--ice-server", url]
        if self.relay:
            argv.append("--relay")
        if self.connect_timeout is not None:
            argv += ["--connect-timeout", f"{self.connect_timeout:g}"]
        self._process = await asyncio.create_subprocess_exec(
            *self.net.nsenter(*argv), cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.get_running_loop().create_task(self._read(self._process))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """SIGTERM (the viewer closes its peer connection), then wait for it (idempotent)."""
        if self._process is not None:
            await stop_process(self._process)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        # Runs until the process closes its stdout; always marks the report ended, so that
        # waiters learn the viewer is gone instead of waiting out their bound.
        assert process.stdout is not None
        try:
            async for raw in process.stdout:
                line: dict[str, Any] = json.loads(raw)
                report = self.report
                report.lines += 1
                report.frames = int(line.get("frames", report.frames))
                report.ages_ms += [float(a) for a in line.get("ages_ms", [])]
                report.longest_gap_s = float(line.get("longest_gap_s", report.longest_gap_s))
                report.width = int(line.get("width", report.width))
                report.height = int(line.get("height", report.height))
                report.error = line.get("error") or report.error
                report.ice = line.get("ice", report.ice)
                self._changed.set()
        except json.JSONDecodeError:
            logger.exception("netlab viewer: a line that is not JSON")
        finally:
            self.report.ended = True
            self._changed.set()

    async def wait_until(
        self, predicate: Callable[[AiortcReport], bool], timeout: float
    ) -> AiortcReport:
        """Wait (at most ``timeout`` s) until ``predicate(report)``; raises TimeoutError, or
        :class:`NetLabError` if the viewer ended first."""
        async with asyncio.timeout(timeout):
            while not predicate(self.report):
                if self.report.ended:
                    raise NetLabError(f"the viewer ended: {self.report}")
                self._changed.clear()
                await self._changed.wait()
        return self.report


@contextlib.asynccontextmanager
async def together(*viewers: NetAiortcViewer) -> AsyncIterator[tuple[NetAiortcViewer, ...]]:
    """Run aiortc viewers side by side and stop them all at once on exit (each one's close takes
    a moment: one after the other, they would add up)."""
    async with contextlib.AsyncExitStack() as stack:
        for viewer in viewers:
            await stack.enter_async_context(viewer)
        try:
            yield viewers
        finally:
            await asyncio.gather(*(viewer.stop() for viewer in viewers))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def viewer_net() -> AsyncIterator[ViewerNet]:
    """A viewer namespace behind a clean link (shape it with ``set_rate`` and friends)."""
    async with ViewerNet() as net:
        yield net


@pytest.fixture
async def make_viewer_net() -> AsyncIterator[Callable[[], Awaitable[ViewerNet]]]:
    """Start more viewer namespaces, each on its own /30; all are removed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start() -> ViewerNet:
            return await stack.enter_async_context(ViewerNet())

        yield start


@pytest.fixture
async def nat_lab() -> AsyncIterator[NatLab]:
    """An empty NAT lab (add routers, hosts, coturn); everything in it goes after the test."""
    async with NatLab() as lab:
        yield lab
