"""The link-profile benchmark (issue #9, "Live on every link"): Chromium viewers behind slow,
lossy and changing links, against peercam in each of its modes, side by side.

Each viewer is headless Chromium in its own network namespace behind a veth whose downlink is
shaped (tbf) and made lossy (nftables) by the network lab (tests/netlab.py, docs/netlab.md).
peercam runs as a subprocess on its test pattern (640x480@30, VP8), pinned to core 0, bound to
0.0.0.0 and announcing the veth addresses; Chromium is pinned to core 1. The benchmark runs in
a network namespace of its own (it re-executes itself under ``unshare -n`` when the machine has
interfaces besides ``lo``): no packet leaves the machine.

For each run, profile and mode (interleaved: run 1 of everything, then run 2…), once every
viewer shows a first picture and ``--warmup`` seconds have passed, a window of ``--seconds``
(twice that for the step) is measured. Per viewer:

* fps: new pictures presented (requestVideoFrameCallback) per second of the window;
* picture age p50/p95/max: the page's clock minus the capture time in the picture's bar;
* longest freeze: the longest time without a new picture (window edges included);
* what it ended on: WebRTC or JPEG, the video size; and from ``GET /api/status`` every 0.5 s,
  when the server reports them, the rung (``peers[*].rung`` / ``rungIndex``, 0 = top), rung
  switches, the bandwidth estimate, loss fraction and RTT;
* the step profile (2 Mbit/s → 300 kbit/s at 1/4 of the window → 2 Mbit/s at 1/2): the time from
  the drop until the picture on screen is younger than 300 ms for good (its age grows while no
  new picture arrives), and from the recovery until the top rung again.

Tables give medians over ``--runs``, with the issue's targets. Results:
``<out>/links-<date>.json`` and ``.md``.

    .venv/bin/python -m bench.links
    .venv/bin/python -m bench.links --profiles 600kbit 300kbit step --modes ladder per-viewer
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import operator
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, Playwright, async_playwright

from bench.common import (
    CLIENT_CORE,
    RESULTS,
    ROOT,
    Server,
    ServerOptions,
    fmt,
    machine,
    machine_line,
    peercam_server,
    pin,
    write_results,
)
from tests.netlab import (
    PICTURE_AGE_JS,
    Sample,
    ViewerNet,
    chromium_in,
    is_isolated,
    picture_samples,
    picture_stats,
)

logger = logging.getLogger("bench.links")

#: Extra server flags of each mode. The lead adjusts these as the ladder lands: "ladder" is the
#: server's default; a mode whose flags the server refuses is reported as unavailable.
MODES: dict[str, tuple[str, ...]] = {
    "ladder": (),
    "ladder-off": ("--ladder", "off"),
    "per-viewer": ("--encoder", "per-viewer"),
}

STATUS_EVERY = 0.5  # seconds between /api/status polls
FIRST_PICTURE_TIMEOUT = 30.0
AGE_LIMIT_MS = 300.0  # the step profile: "picture age back under 300 ms"
INSIDE_ENV = "PEERCAM_NETLAB_NAMESPACE"  # set once re-executed in a namespace of our own


# -- profiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """From ``at`` (a fraction of the window) on, the link is ``rate_kbit`` (None: clean) with
    ``loss`` % random loss of UDP towards the viewer."""

    at: float
    rate_kbit: int | None
    loss: int = 0

    def describe(self) -> str:
        rate = "clean" if self.rate_kbit is None else _kbit(self.rate_kbit)
        return rate + (f" + {self.loss} % loss" if self.loss else "")


def _kbit(kbit: int) -> str:
    return f"{kbit / 1000:g} Mbit/s" if kbit >= 1000 else f"{kbit} kbit/s"


@dataclass(frozen=True)
class Link:
    """One viewer's link over the window: its phases, the first at 0."""

    phases: tuple[Phase, ...]

    @classmethod
    def fixed(cls, rate_kbit: int | None, loss: int = 0) -> Link:
        return cls((Phase(0.0, rate_kbit, loss),))

    def describe(self) -> str:
        return " → ".join(p.describe() for p in self.phases)


@dataclass(frozen=True)
class Check:
    """A target on one figure of one viewer: ``figure op value``."""

    figure: str
    op: str  # one of OPS
    value: float | str
    viewer: int = 0

    def describe(self) -> str:
        return f"{self.figure} {self.op} {self.value}"

    def met(self, figures: dict[str, Any]) -> bool | None:
        """Whether the target was met; None if it was not measured. A figure that was measured
        but never happened (``<figure>_never``: e.g. the age never came back) fails."""
        measured = figures.get(self.figure)
        if measured is None:
            return False if figures.get(f"{self.figure}_never") else None
        return bool(OPS[self.op](measured, self.value))


OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Profile:
    """What the viewers' links do, how long the window is (× ``--seconds``), the targets."""

    name: str
    links: tuple[Link, ...]
    targets: tuple[Check, ...] = ()
    length: float = 1.0


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("clean", (Link.fixed(None),)),
        Profile("2mbit", (Link.fixed(2000),)),
        Profile("1mbit", (Link.fixed(1000),)),
        Profile(
            "600kbit",
            (Link.fixed(600),),
            (
                Check("fps", ">=", 25),
                Check("age_p95_ms", "<=", 150),
                Check("longest_freeze_s", "<=", 0.5),
            ),
        ),
        Profile(
            "300kbit", (Link.fixed(300),), (Check("fps", ">=", 20), Check("age_p95_ms", "<=", 200))
        ),
        Profile(
            "150kbit",
            (Link.fixed(150),),
            (Check("mode", "==", "WebRTC"), Check("fps", ">=", 10), Check("age_p95_ms", "<=", 400)),
        ),
        Profile(
            "loss5",
            (Link.fixed(None, 5),),
            (Check("fps", ">=", 25), Check("longest_freeze_s", "<=", 1.0)),
        ),
        Profile("600kbit-loss2", (Link.fixed(600, 2),)),
        Profile(
            "step",
            (Link((Phase(0.0, 2000), Phase(0.25, 300), Phase(0.5, 2000))),),
            (Check("age_back_under_300ms_s", "<=", 2.0), Check("top_rung_after_s", "<=", 15.0)),
            length=2.0,
        ),
        Profile(
            "clean-beside-300kbit",
            (Link.fixed(None), Link.fixed(300)),
            (Check("fps", ">=", 29), Check("received_fps", ">=", 29), Check("width", "==", 640)),
        ),
        # The control for the one above: the same two Chromiums on one core, both clean. What
        # the first viewer presents here is what its core lets it present beside another.
        Profile("clean-beside-clean", (Link.fixed(None), Link.fixed(None))),
    )
}


# -- one measurement ---------------------------------------------------------------------------


@dataclass
class Viewer:
    """One Chromium viewer: its namespace, page and the server's view of it."""

    net: ViewerNet
    link: Link
    browser: Browser | None = None
    page: Page | None = None
    peer_id: str | None = None
    error: str | None = None
    polls: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (time, peer)
    #: The page's inbound video counters (getStats) at the window's start and end.
    counters: list[tuple[float, dict[str, float]]] = field(default_factory=list)


#: In a page of peercam: its inbound video counters (frames received, decoded, dropped).
INBOUND_JS = """
async () => {
  const pc = document.querySelector("peercam-view")?.peerConnection;
  const out = {};
  if (!pc) return out;
  (await pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      out.received = r.framesReceived ?? 0;
      out.decoded = r.framesDecoded ?? 0;
      out.dropped = r.framesDropped ?? 0;
    }
  });
  return out;
}
"""


async def _count(viewer: Viewer) -> None:
    """Snapshot the page's inbound counters (none for a page that has no peer connection)."""
    if viewer.page is None:
        return
    with contextlib.suppress(Exception):  # Playwright's errors: that viewer has no figure
        viewer.counters.append((time.time(), await viewer.page.evaluate(INBOUND_JS)))


async def _apply(net: ViewerNet, phase: Phase) -> None:
    if net.link.rate_kbit != phase.rate_kbit:
        await net.set_rate(phase.rate_kbit)
    if net.link.loss_percent != phase.loss:
        await net.set_loss(phase.loss)


async def _peer_ids(server: Server) -> list[str]:
    return [str(p.get("viewerId")) for p in (await server.status())["peers"]]


async def _open(
    viewer: Viewer, playwright: Playwright, server: Server, stack: contextlib.AsyncExitStack
) -> None:
    """Open the page in the viewer's namespace; wait for its first picture and its peer."""
    viewer.browser = await stack.enter_async_context(
        chromium_in(viewer.net, playwright, prefix=pin(CLIENT_CORE))
    )
    context = await viewer.browser.new_context(viewport={"width": 800, "height": 600})
    await context.add_init_script(PICTURE_AGE_JS)
    viewer.page = await context.new_page()
    known = set(await _peer_ids(server))
    url = f"http://{viewer.net.server_address}:{server.port}/?mode=webrtc&codec=vp8"
    try:
        await viewer.page.goto(url)
        await viewer.page.wait_for_function(
            "() => window.__bench?.video.length > 0", timeout=FIRST_PICTURE_TIMEOUT * 1000
        )
    except Exception as exc:  # Playwright's errors: recorded, the other viewers carry on
        viewer.error = f"no first picture: {type(exc).__name__}: {exc}".splitlines()[0]
    # Its peer exists before its first video frame; a viewer that fell back has none.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while viewer.peer_id is None and viewer.error is None:
                new = [i for i in await _peer_ids(server) if i not in known]
                if new:
                    viewer.peer_id = new[0]
                else:
                    await asyncio.sleep(0.1)  # polling the server's state: no event exists


async def _poll_status(server: Server, viewers: Sequence[Viewer], stop: asyncio.Event) -> None:
    """Every STATUS_EVERY s, each viewer's entry in /api/status (until ``stop``)."""
    while not stop.is_set():
        now = time.time()
        with contextlib.suppress(OSError, ValueError, KeyError):
            peers = {str(p.get("viewerId")): p for p in (await server.status())["peers"]}
            mapped = {v.peer_id for v in viewers}
            for viewer in viewers:
                if viewer.peer_id not in peers:  # the page reconnected: its new peer
                    fresh = [i for i in peers if i not in mapped]
                    if len(fresh) == 1:
                        viewer.peer_id = fresh[0]
                if viewer.peer_id in peers:
                    viewer.polls.append((now, peers[viewer.peer_id]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATUS_EVERY)  # the polling period itself


async def _drive_links(viewers: Sequence[Viewer], start: float, window: float) -> None:
    """Apply each link's later phases at their times in the window."""
    changes = sorted(
        (start + phase.at * window, n, phase)
        for n, viewer in enumerate(viewers)
        for phase in viewer.link.phases[1:]
    )
    for at, n, phase in changes:
        await asyncio.sleep(max(0.0, at - time.time()))  # the schedule of the profile itself
        await _apply(viewers[n].net, phase)
        logger.info("viewer %d: link now %s", n, phase.describe())


async def measure(
    playwright: Playwright,
    profile: Profile,
    mode: str,
    settings: Settings,
) -> list[dict[str, Any]]:
    """One run of ``profile`` against a fresh server in ``mode``: figures per viewer."""
    window = settings.seconds * profile.length
    async with contextlib.AsyncExitStack() as stack:
        viewers = []
        for link in profile.links:
            net = await stack.enter_async_context(ViewerNet())
            await _apply(net, link.phases[0])
            viewers.append(Viewer(net, link))
        server = await stack.enter_async_context(
            peercam_server(
                ServerOptions(),
                max_viewers=len(viewers),
                host="0.0.0.0",
                ice_addresses=[v.net.server_address for v in viewers],
                extra_args=MODES[mode],
            )
        )
        for viewer in viewers:
            await _open(viewer, playwright, server, stack)
        # Polled from the warm-up on: a trace shows how each viewer started; the figures
        # take the window's polls only.
        stop = asyncio.Event()
        poller = asyncio.get_running_loop().create_task(_poll_status(server, viewers, stop))
        await asyncio.sleep(settings.warmup)  # the warm-up is a duration, not a wait for state
        start = time.time()
        await asyncio.gather(*map(_count, viewers))
        try:
            await _drive_links(viewers, start, window)
            await asyncio.sleep(max(0.0, start + window - time.time()))  # the window
        finally:
            stop.set()
            await poller
        end = time.time()
        await asyncio.gather(*map(_count, viewers))
        figures = [await _figures(v, profile, start, end) for v in viewers]
        if settings.trace is not None:
            await _write_trace(settings.trace, profile, mode, viewers, start, end)
        return figures


async def _write_trace(
    folder: Path, profile: Profile, mode: str, viewers: Sequence[Viewer], start: float, end: float
) -> None:
    """Each viewer's pictures (time, age ms) and status polls, times relative to ``start``."""
    traced = []
    for viewer in viewers:
        samples = [] if viewer.page is None else await picture_samples(viewer.page)
        traced.append(
            {
                "link": viewer.link.describe(),
                "pictures": [(round(t - start, 3), a) for t, a in samples if t >= start - 5],
                "polls": [(round(t - start, 3), p) for t, p in viewer.polls],  # warm-up's too
            }
        )
    name = f"{profile.name}-{mode}-{time.strftime('%H%M%S')}.json"
    body = {"window_s": round(end - start, 3), "viewers": traced}
    await asyncio.to_thread(_save, folder / name, json.dumps(body))


def _save(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def _figures(viewer: Viewer, profile: Profile, start: float, end: float) -> dict[str, Any]:
    page = viewer.page
    samples: list[Sample] = [] if page is None else await picture_samples(page)
    info: dict[str, Any] = {}
    if page is not None:
        info = await page.evaluate(
            """() => { const el = document.querySelector("peercam-view");
                       return { mode: el?.info.mode, width: el?.video.videoWidth,
                                height: el?.video.videoHeight }; }"""
        )
    stats = picture_stats(samples, start, end)
    polls = [(t, p) for t, p in viewer.polls if t >= start]
    rungs = [p.get("rung") for _, p in polls if p.get("rung") is not None]
    last = polls[-1][1] if polls else {}
    figures: dict[str, Any] = {
        "link": viewer.link.describe(),
        "error": viewer.error,
        "mode": info.get("mode"),
        "width": info.get("width"),
        "height": info.get("height"),
        **{k: _round(v) for k, v in asdict(stats).items()},
        "rung": last.get("rung"),
        "rung_index": last.get("rungIndex"),
        "rung_switches": sum(a != b for a, b in itertools.pairwise(rungs)) if rungs else None,
        "estimate_kbps": None if last.get("estimateBps") is None else last["estimateBps"] / 1000,
        "fraction_lost": last.get("fractionLost"),
        "rtt_ms": last.get("rttMs"),
        **counted_rates(viewer.counters),
    }
    phases = viewer.link.phases
    if len(phases) == 3:  # the step: drop at phases[1], recovery at phases[2]
        window = end - start
        drop, recovery = start + phases[1].at * window, start + phases[2].at * window
        back = age_back_under(samples, drop, recovery, AGE_LIMIT_MS)
        figures["age_back_under_300ms_s"] = _round(back)
        figures["age_back_under_300ms_s_never"] = back is None
        top = top_rung_after(polls, recovery)
        figures["top_rung_after_s"] = _round(top)
        # Never back at the top, or a server that does not report rungs (not measured).
        reported = any("rungIndex" in p for _, p in polls)
        figures["top_rung_after_s_never"] = reported and top is None
    return figures


def counted_rates(counters: Sequence[tuple[float, dict[str, float]]]) -> dict[str, Any]:
    """Frames received, decoded and dropped by the page per second of the window, from its
    counters at the window's start and end (None each without both).

    Received frames are what the server sent and the link carried; presented ones (``fps``)
    are what the viewer's machine also found time to decode and show."""
    rates: dict[str, Any] = {"received_fps": None, "decoded_fps": None, "dropped_fps": None}
    if len(counters) < 2:
        return rates
    (t0, first), (t1, last) = counters[0], counters[-1]
    for name in ("received", "decoded", "dropped"):
        if t1 > t0 and name in first and name in last:
            rates[f"{name}_fps"] = _round((last[name] - first[name]) / (t1 - t0))
    return rates


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def age_back_under(
    samples: Sequence[Sample], since: float, until: float, limit_ms: float
) -> float | None:
    """Seconds from ``since`` until the picture on screen stays younger than ``limit_ms`` up to
    ``until``; 0 if it never was that old, None if it still was at ``until``.

    The picture on screen ages between new pictures: at ``t`` after picture ``i`` (age ``a_i``
    when shown at ``t_i``) its age is ``a_i + (t - t_i)``; a damaged bar keeps the last age.
    """
    last_bad: float | None = None
    age: float | None = None
    shown = [(t, a) for t, a in samples if t < until]
    for n, (t, a) in enumerate(shown):
        age = a if a is not None else age
        following = shown[n + 1][0] if n + 1 < len(shown) else until
        if age is None or following < since:
            continue
        if age + (following - t) * 1000 >= limit_ms:
            last_bad = min(following, until)
    if last_bad is None:
        return 0.0
    if last_bad >= until:
        return None
    return max(0.0, last_bad - since)


def top_rung_after(polls: Sequence[tuple[float, dict[str, Any]]], since: float) -> float | None:
    """Seconds from ``since`` until the server reports the top rung (rungIndex 0); None if it
    never does (or does not report rungs)."""
    for t, peer in polls:
        if t >= since and peer.get("rungIndex") == 0:
            return t - since
    return None


# -- the benchmark -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    seconds: float = 18.0
    warmup: float = 3.0
    runs: int = 1
    #: Where to write each run's raw series (picture ages, status polls), for diagnosis.
    trace: Path | None = None


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, bool) for v in present):
        return sum(present) * 2 > len(present)  # the majority of runs
    if all(isinstance(v, int | float) for v in present):
        return _round(statistics.median(present))
    return max(set(map(str, present)), key=[str(v) for v in present].count)


async def run_benchmark(
    profiles: Sequence[Profile], modes: Sequence[str], settings: Settings
) -> dict[str, Any]:
    unavailable: dict[str, str] = {}
    runs: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    async with async_playwright() as playwright:
        for run in range(settings.runs):
            for profile in profiles:
                for mode in modes:
                    if mode in unavailable:
                        continue
                    logger.info("run %d: %s, %s", run + 1, profile.name, mode)
                    try:
                        figures = await measure(playwright, profile, mode, settings)
                    except RuntimeError as exc:  # the server refused its flags, or died
                        if "peercam exited" in str(exc):
                            unavailable[mode] = f"{' '.join(MODES[mode])}: {exc}"
                            logger.warning("mode %s unavailable: %s", mode, exc)
                            continue
                        raise
                    runs.setdefault((profile.name, mode), []).append(figures)
    results = []
    for (name, mode), measured in runs.items():
        profile = PROFILES[name]
        for n in range(len(profile.links)):
            per_run = [viewers[n] for viewers in measured]
            median = {k: _median([f.get(k) for f in per_run]) for k in per_run[0]}
            targets = [
                {"target": c.describe(), "met": c.met(median)}
                for c in profile.targets
                if c.viewer == n
            ]
            results.append(
                {"profile": name, "mode": mode, "viewer": n, "median": median,
                 "targets": targets, "runs": per_run}
            )  # fmt: skip
    return {"unavailable": unavailable, "results": results}


# -- output ------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# peercam link profiles, {report['date']}",
        "",
        machine_line(m),
        f"- Command: `{report['command']}`",
        f"- Test pattern 640x480@30 VP8; server on core 0, Chromium on core 1, each viewer in its "
        f"own network namespace (tbf downlink, nftables loss); window {report['seconds']:g} s "
        f"(step: ×2) after {report['warmup']:g} s warm-up; {report['runs']} run(s), medians",
        "- Modes: "
        + "; ".join(
            f"`{mode}` = `{' '.join(args) or '(defaults)'}`"
            for mode, args in report["modes"].items()
        ),
    ]
    for mode, reason in report["unavailable"].items():
        lines.append(f"- **{mode} unavailable**: {reason}")
    lines += [
        "",
        "| profile | mode | viewer link | shown as | fps shown (received) | age p50 / p95 ms "
        "| longest freeze s "
        "| rung (switches) | estimate kbit/s | step: age < 300 ms after s / top rung after s "
        "| targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        f = r["median"]
        shown = f"{fmt(f['mode'])} {fmt(f['width'])}x{fmt(f['height'])}"
        if f.get("error"):
            shown += f" ({f['error']})"
        step = "—"
        if "age_back_under_300ms_s" in f:
            step = " / ".join(
                "never" if f.get(f"{key}_never") else fmt(f[key])
                for key in ("age_back_under_300ms_s", "top_rung_after_s")
            )
        targets = "; ".join(
            f"{t['target']}: " + {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            for t in r["targets"]
        )
        lines.append(
            f"| {r['profile']} | {r['mode']} | {f['link']} | {shown} "
            f"| {fmt(f['fps'])} ({fmt(f.get('received_fps'))}) "
            f"| {fmt(f['age_p50_ms'], 0)} / {fmt(f['age_p95_ms'], 0)} "
            f"| {fmt(f['longest_freeze_s'], 2)} "
            f"| {fmt(f['rung'])} ({fmt(f['rung_switches'])}) | {fmt(f['estimate_kbps'], 0)} "
            f"| {step} | {targets or '—'} |"
        )
    return "\n".join(lines) + "\n"


# -- CLI ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.links",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--profiles", nargs="+", choices=list(PROFILES), default=list(PROFILES))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--seconds", type=float, default=Settings.seconds, help="window per profile (step: ×2)"
    )
    parser.add_argument("--warmup", type=float, default=Settings.warmup)
    parser.add_argument("--runs", type=int, default=Settings.runs, help="runs (medians)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument("--name", default="links", help="results file name")
    parser.add_argument(
        "--trace", type=Path, help="folder for each run's raw picture ages and status polls"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--runs and --seconds must be positive, --warmup >= 0")
    return args


def _in_own_namespace(argv: Sequence[str]) -> None:
    """Re-execute under ``unshare -n`` (lo up) unless this namespace already has only lo."""
    if is_isolated():
        return
    if os.environ.get(INSIDE_ENV):
        sys.exit("bench.links: still not in a network namespace of its own")
    os.environ[INSIDE_ENV] = "1"
    command = [sys.executable, "-m", "bench.links", *argv]
    os.execvp(
        "unshare", ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    _in_own_namespace(argv)
    os.chdir(ROOT)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("tests.netlab").setLevel(logging.WARNING)
    profiles = [PROFILES[name] for name in args.profiles]
    settings = Settings(args.seconds, args.warmup, args.runs, args.trace)
    total = sum(p.length * args.seconds + args.warmup + 4 for p in profiles)
    logger.info(
        "%d profiles x %d modes x %d runs: about %.0f min",
        len(profiles), len(args.modes), args.runs, total * len(args.modes) * args.runs / 60,
    )  # fmt: skip
    started, host = time.time(), machine()
    measured = asyncio.run(run_benchmark(profiles, args.modes, settings))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
        "machine": host,
        "command": " ".join(["python -m bench.links", *argv]),
        "seconds": args.seconds,
        "warmup": args.warmup,
        "runs": args.runs,
        "modes": {mode: list(MODES[mode]) for mode in args.modes},
        "profiles": {p.name: [link.describe() for link in p.links] for p in profiles},
        "duration_s": round(time.time() - started),
        **measured,
    }
    text = markdown(report)
    json_path, md_path = write_results(args.out, args.name, report, text)
    print(text)
    print(f"written: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
