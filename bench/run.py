"""peercam's benchmark: viewers of every kind against a pinned server (run by hand, not in CI).

For each scenario and run, peercam starts afresh on its test pattern, pinned with ``taskset``
to core 0; the viewers run in separate processes pinned to core 1 (``bench/clients.py``), so
their load stays out of the server's figures. Once every viewer shows pictures and a second
has passed (the joins' keyframes), a window of ``--window`` seconds is measured:

* per viewer: delivered fps (frames in the window / window; mean and minimum over viewers);
  *frames lost* = frames the source captured in the window (``/api/status`` → source.frames)
  minus the complete frames the viewer received in it, less one for the window's edges, never
  below 0, summed over viewers;
* glass-to-glass latency p50/p95/max: the viewer's clock minus the capture time, read from the
  bar in the picture (WebRTC, ``/video``, Chromium) or the JPEG header (JPEG mode);
* time to first frame: from the viewer's start (socket opened; Chromium: ``page.goto``);
  Chromium also reports its first picture and first WebRTC video frame after navigation;
* the server: CPU (% of one core, /proc/<pid>/stat), RSS (/proc/<pid>/status), event-loop
  lag p99 (``/api/status``, window reset at the start); and how much CPU other programs took
  on each core (/proc/stat).

Every scenario runs ``--runs`` times, interleaved (run 1 of all, then run 2…) so that other load
on the machine spreads evenly; tables give medians. A run during which other programs took more
than ``--busy-limit`` % of either core is repeated (``--retries``; the discarded runs stay in
the JSON): on a shared machine they, not peercam, would set its figures. Results:
``<out>/<name>-<date>.json`` and ``.md``. Without ``--kind``, the full suite runs: every
comparison and target of docs/performance.md side by side (about 15 minutes):

    .venv/bin/python -m bench.run
    .venv/bin/python -m bench.run --kind webrtc --viewers 1 4 8 --encoder shared per-viewer
    .venv/bin/python -m bench.run --kind jpeg legacy --viewers 50 --size 1280x720 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.clients import KINDS
from bench.common import (
    CLIENT_CORE,
    RESULTS,
    ROOT,
    SERVER_CORE,
    Server,
    ServerOptions,
    core_busy_percent,
    core_times,
    cpu_seconds,
    fmt,
    machine,
    machine_line,
    peercam_server,
    percentile,
    prefix,
    rss_mb,
    slope,
    tree_cpu_seconds,
    write_results,
)

logger = logging.getLogger("bench.run")

SETTLE = 1.0  # seconds between "every viewer shows pictures" and the window
READY_TIMEOUT = 60.0
SERVED_FPS = 29.0  # "served": every viewer received at least this many frames per second


@dataclass(frozen=True)
class Settings:
    """How every scenario is measured."""

    runs: int = 3
    window: float = 8.0  # seconds measured per run
    per_process: int = 25  # viewers per client process
    niceness: int = 0  # of the server and the viewers; negative shields them on a shared machine
    #: A run during which other programs used more than this % of either core is repeated
    #: (at most ``retries`` times): on a shared machine they, not peercam, set the figures.
    busy_limit: float = 15.0
    retries: int = 2


@dataclass(frozen=True)
class Scenario:
    """One measurement: ``viewers`` viewers of one kind against one server configuration."""

    kind: str  # one of bench.clients.KINDS, or "none" (the server alone)
    viewers: int
    server: ServerOptions = field(default_factory=ServerOptions)

    @property
    def label(self) -> str:
        encoder = f" {self.server.encoder}" if self.kind in ("webrtc", "chromium") else ""
        return f"{self.kind}{encoder} x{self.viewers} {self.server.size}"


def full_suite(base: ServerOptions) -> list[Scenario]:
    """Every comparison and target of docs/performance.md (640x480@30 unless said)."""
    per_viewer = replace(base, encoder="per-viewer")
    hd = replace(base, width=1280, height=720)
    return [
        Scenario("none", 0, base),
        # Shared encoder against aiortc's per-viewer encoding, same viewers, side by side.
        *(Scenario("webrtc", n, options) for options in (base, per_viewer) for n in (1, 4, 8)),
        # How many WebRTC viewers one server core serves at full rate.
        *(Scenario("webrtc", n, base) for n in (25, 50, 100)),
        # JPEG mode against the original /video protocol, same viewers, side by side.
        *(Scenario(kind, n, base) for n in (1, 25, 50, 100) for kind in ("jpeg", "legacy")),
        Scenario("chromium", 1, base),
        Scenario("chromium-jpeg", 1, base),
        Scenario("webrtc", 20, hd),
    ]


# -- one measurement ---------------------------------------------------------------------------


@dataclass
class Client:
    """One viewer process (``python -m bench.clients``) and how many viewers it holds."""

    process: asyncio.subprocess.Process
    count: int

    async def line(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line from the process; None if it ended or said nothing in time."""
        assert self.process.stdout is not None
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            return None
        if not raw:
            return None
        message: dict[str, Any] = json.loads(raw)
        return message

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(ConnectionError):
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            await self.process.stdin.drain()

    async def stop(self) -> None:
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                logger.warning("client %d did not exit: killing it", self.process.pid)
                self.process.kill()
                await self.process.wait()


def client_layout(kind: str, viewers: int, per_process: int) -> list[tuple[int, bool]]:
    """(viewers, decode) per client process.

    WebRTC and ``/video``: one process holds a viewer that decodes every picture and reads its
    bar (the latency sample); the others only count complete frames. JPEG mode reads the
    latency from each picture's header, for free. Chromium: one browser, one page per viewer.
    """
    if viewers == 0 or kind == "none":
        return []
    if kind.startswith("chromium"):
        return [(viewers, True)]
    if kind == "jpeg":
        first: list[tuple[int, bool]] = []
        rest = viewers
    else:
        first, rest = [(1, True)], viewers - 1
    chunks = math.ceil(rest / per_process) if rest else 0
    return first + [
        (rest // chunks + (1 if i < rest % chunks else 0), False) for i in range(chunks)
    ]


async def start_clients(server: Server, scenario: Scenario, settings: Settings) -> list[Client]:
    clients = []
    for count, decode in client_layout(scenario.kind, scenario.viewers, settings.per_process):
        process = await asyncio.create_subprocess_exec(
            *prefix(CLIENT_CORE, settings.niceness), sys.executable, "-m", "bench.clients",
            "--kind", scenario.kind, "--url", server.http_url, "--count", str(count),
            "--codec", scenario.server.codec, "--ready-timeout", str(READY_TIMEOUT),
            *(["--decode"] if decode else []),
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        clients.append(Client(process, count))
    return clients


async def sleep_until(epoch: float) -> None:
    # The measurement window: waiting for the clock is what measuring means here.
    await asyncio.sleep(max(0.0, epoch - time.time()))


async def measure(scenario: Scenario, settings: Settings) -> dict[str, Any]:
    """One run of one scenario, on a fresh server: the figures of its window."""
    window = settings.window
    server_run = peercam_server(scenario.server, scenario.viewers + 10, settings.niceness)
    async with server_run as server:
        clients = await start_clients(server, scenario, settings)
        try:
            readies = await asyncio.gather(*(c.line(READY_TIMEOUT + 60) for c in clients))
            start = time.time() + SETTLE
            end = start + window
            await asyncio.gather(*(c.send({"start": start, "end": end}) for c in clients))
            client_pids = [c.process.pid for c in clients]

            await sleep_until(start)
            began = time.monotonic()
            server_cpu, clients_cpu, cores = (
                cpu_seconds(server.pid),
                sum(tree_cpu_seconds(pid) for pid in client_pids),
                core_times(),
            )
            before = await server.status(reset_lag=True)
            await sleep_until(end)
            elapsed = time.monotonic() - began
            server_cpu = cpu_seconds(server.pid) - server_cpu
            clients_cpu = sum(tree_cpu_seconds(pid) for pid in client_pids) - clients_cpu
            busy = core_busy_percent(cores, core_times())
            after = await server.status()
            rss = rss_mb(server.pid)

            viewers: list[dict[str, Any]] = []
            for client, ready in zip(clients, readies, strict=True):
                result = await client.line(30) if ready is not None else None
                if result is None:
                    failed = {"frames": 0, "error": "the client process did not report"}
                    viewers += [dict(failed) for _ in range(client.count)]
                else:
                    viewers += result["viewers"]
        finally:
            await asyncio.gather(*(c.stop() for c in clients))
    expected = after["source"]["frames"] - before["source"]["frames"]
    server_percent = 100 * server_cpu / elapsed
    clients_percent = 100 * clients_cpu / elapsed
    return {
        "scenario": scenario.label,
        **summarize(viewers, expected, window),
        "server_cpu_percent": round(server_percent, 2),
        "server_rss_mb": round(rss, 1),
        "loop_lag_ms": after["loopLagMs"],
        "clients_cpu_percent": round(clients_percent, 2),
        "cores_busy_percent": busy,
        # Other programs on the two cores: they delay the server (loop lag, fps) or the viewers.
        "others_percent": {
            "server_core": round(max(0.0, busy.get(f"cpu{SERVER_CORE}", 0.0) - server_percent), 1),
            "client_core": round(max(0.0, busy.get(f"cpu{CLIENT_CORE}", 0.0) - clients_percent), 1),
        },
        "source_fps": round(expected / window, 2),
    }


def summarize(viewers: list[dict[str, Any]], expected: int, window: float) -> dict[str, Any]:
    """The figures over all viewers of one run."""
    fps = [v["frames"] / window for v in viewers]
    latencies = [ms for v in viewers for ms in v.get("latencies_ms", [])]
    first = [v["first_frame_s"] for v in viewers if v.get("first_frame_s") is not None]
    # The viewer counts frames by arrival, the source by capture, over windows of the same
    # length but a latency apart: the counts may differ by one frame with nothing lost.
    lost = [max(0, expected - v["frames"] - 1) for v in viewers]
    errors = sorted({v["error"] for v in viewers if v.get("error")})
    figures: dict[str, Any] = {
        "viewers": len(viewers),
        "viewers_failed": sum(1 for v in viewers if v.get("error")),
        "errors": errors[:5],
        "fps_mean": round(statistics.mean(fps), 2) if fps else None,
        "fps_min": round(min(fps), 2) if fps else None,
        "frames_expected_per_viewer": expected,
        "frames_lost": sum(lost),
        "frames_lost_percent": round(100 * sum(lost) / (expected * len(viewers)), 2)
        if viewers and expected
        else None,
        "latency_samples": len(latencies),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "latency_max_ms": max(latencies) if latencies else None,
        "first_frame_median_ms": round(1000 * statistics.median(first), 1) if first else None,
        "first_frame_max_ms": round(1000 * max(first), 1) if first else None,
    }
    for key in ("first_picture_ms", "first_video_ms"):
        values = [v[key] for v in viewers if v.get(key) is not None]
        if values:
            figures[key] = statistics.median(values)
    return figures


# -- the suite ---------------------------------------------------------------------------------


def median_figures(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of every numeric figure (nested dicts too); lists are concatenated."""
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
            merged[key] = round(statistics.median(present), 2)
        elif present and all(isinstance(v, dict) for v in present):
            merged[key] = median_figures(present)
        elif present and all(isinstance(v, list) for v in present):
            merged[key] = sorted({str(x) for v in present for x in v})
        else:
            merged[key] = present[0] if present else None
    return merged


async def run_suite(scenarios: Sequence[Scenario], settings: Settings) -> list[dict[str, Any]]:
    """Every scenario ``settings.runs`` times, interleaved; each scenario with its runs."""
    results: dict[Scenario, list[dict[str, Any]]] = {s: [] for s in scenarios}
    discarded: dict[Scenario, list[dict[str, Any]]] = {s: [] for s in scenarios}
    total = len(scenarios) * settings.runs
    runs = itertools.product(range(settings.runs), scenarios)
    for done, (run, scenario) in enumerate(runs, 1):
        for attempt in range(settings.retries + 1):
            started = time.monotonic()
            figures = await measure(scenario, settings)
            others = max(figures["others_percent"].values())
            logger.info(
                "[%d/%d] run %d %s: fps min %s, server CPU %s %%, lag p99 %s ms, p50 %s ms, "
                "others %s %% (%.0f s)",
                done, total, run + 1, scenario.label, figures["fps_min"],
                figures["server_cpu_percent"], figures["loop_lag_ms"].get("p99"),
                figures["latency_p50_ms"], others, time.monotonic() - started,
            )  # fmt: skip
            if not settings.busy_limit or others <= settings.busy_limit:
                break
            if attempt < settings.retries:
                logger.info("other programs used %s %% of a core: run repeated", others)
                discarded[scenario].append(figures)
            else:
                logger.warning("other programs used %s %% of a core: run kept", others)
        results[scenario].append(figures)
    return [
        {
            "scenario": asdict(s) | {"label": s.label},
            "median": median_figures(r),
            "runs": r,
            "discarded_runs": discarded[s],
        }
        for s, r in results.items()
    ]


# -- targets -----------------------------------------------------------------------------------

Row = dict[str, Any]


def _rows(
    results: Iterable[Row], kind: str, *, encoder: str = "shared", size: str = "640x480@30"
) -> list[Row]:
    found = [
        r
        for r in results
        if r["scenario"]["kind"] == kind
        and r["scenario"]["server"]["encoder"] == encoder
        and ServerOptions(**r["scenario"]["server"]).size == size
    ]
    return sorted(found, key=lambda r: int(r["scenario"]["viewers"]))


def _served(rows: Sequence[Row], goal: int) -> tuple[int | None, str]:
    """The most viewers at which every viewer got >= 29 fps (median of runs), and the detail.

    None when every count tried was served but none reached ``goal``: the limit is unknown.
    """
    best = 0
    for r in rows:
        if (r["median"]["fps_min"] or 0) >= SERVED_FPS and not r["median"]["viewers_failed"]:
            best = max(best, r["scenario"]["viewers"])
    detail = ", ".join(f"{r['scenario']['viewers']}: {r['median']['fps_min']}" for r in rows)
    tried = max((r["scenario"]["viewers"] for r in rows), default=0)
    if not rows or (best == tried and best < goal):
        return None, detail
    return best, detail


def _cpu_per_viewer(rows: Sequence[Row]) -> float | None:
    points = [
        (float(r["scenario"]["viewers"]), float(r["median"]["server_cpu_percent"]))
        for r in rows
        if r["scenario"]["viewers"] >= 1
    ]
    value = slope(points)
    return None if value is None else round(value, 3)


def _target(
    name: str, goal: str, measured: Any, met: Callable[[Any], bool], note: str = ""
) -> dict[str, Any]:
    return {
        "target": name,
        "goal": goal,
        "measured": measured,
        "met": None if measured is None else bool(met(measured)),
        "note": note,
    }


def evaluate_targets(results: Sequence[Row]) -> list[dict[str, Any]]:
    """The issue's targets against the medians, where the suite measured them."""
    shared = _rows(results, "webrtc")
    per_viewer = _rows(results, "webrtc", encoder="per-viewer")
    targets = []

    slope_shared, slope_per_viewer = _cpu_per_viewer(shared), _cpu_per_viewer(per_viewer)
    targets.append(
        _target(
            "WebRTC extra server CPU per viewer (% of a core; slope over the viewer counts)",
            "<= 0.5 (per-viewer encoding ~10)",
            slope_shared,
            lambda v: v <= 0.5,
            f"per-viewer encoding: {slope_per_viewer}",
        )
    )
    served, detail = _served(shared, 100)
    served_pv, detail_pv = _served(per_viewer, 0)
    targets.append(
        _target(
            "WebRTC viewers served at >= 29 fps each, server on one core",
            ">= 100 (per-viewer encoding ~8)",
            served,
            lambda v: v >= 100,
            f"min fps by viewers: {detail}; per-viewer encoding: {served_pv} ({detail_pv})",
        )
    )
    jpeg_served, jpeg_detail = _served(_rows(results, "jpeg"), 50)
    legacy_served, legacy_detail = _served(_rows(results, "legacy"), 0)
    targets.append(
        _target(
            "JPEG mode viewers served at >= 29 fps each",
            ">= 50 (original system 30/N each)",
            jpeg_served,
            lambda v: v >= 50,
            f"min fps by viewers: {jpeg_detail}; /video protocol: {legacy_served} "
            f"({legacy_detail})",
        )
    )
    chromium = _rows(results, "chromium")
    chromium_jpeg = _rows(results, "chromium-jpeg")
    c = chromium[0]["median"] if chromium else {}
    cj = chromium_jpeg[0]["median"] if chromium_jpeg else {}
    targets += [
        _target(
            "Chromium WebRTC glass-to-glass p50 / p95 (ms)",
            "<= 35 / <= 60",
            [c["latency_p50_ms"], c["latency_p95_ms"]] if c.get("latency_p50_ms") else None,
            lambda v: v[0] <= 35 and v[1] <= 60,
        ),
        _target(
            "Chromium JPEG mode glass-to-glass p50 (ms)",
            "<= 10",
            cj.get("latency_p50_ms"),
            lambda v: v <= 10,
        ),
        _target(
            "Chromium: first picture after navigation (ms)",
            "<= 300",
            c.get("first_picture_ms"),
            lambda v: v <= 300,
            f"JPEG mode: {cj.get('first_picture_ms')}",
        ),
        _target(
            "Chromium: first WebRTC video frame after navigation (ms)",
            "<= 700",
            c.get("first_video_ms"),
            lambda v: v <= 700,
        ),
    ]
    hd = [r for r in _rows(results, "webrtc", size="1280x720@30") if r["scenario"]["viewers"] == 20]
    h = hd[0]["median"] if hd else {}
    targets.append(
        _target(
            "1280x720@30 WebRTC, 20 viewers: min fps / server CPU %",
            ">= 29 / < 100",
            [h["fps_min"], h["server_cpu_percent"]] if h else None,
            lambda v: v[0] >= SERVED_FPS and v[1] < 100,
        )
    )
    hundred = [r for r in shared if r["scenario"]["viewers"] == 100]
    targets.append(
        _target(
            "Event-loop lag p99 with 100 WebRTC viewers (ms)",
            "<= 10",
            hundred[0]["median"]["loop_lag_ms"]["p99"] if hundred else None,
            lambda v: v <= 10,
        )
    )
    return targets


# -- output ------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# peercam benchmark, {report['date']}",
        "",
        machine_line(m),
        f"- Command: `{report['command']}`",
        f"- Server pinned to core 0, viewers to core 1; {report['runs']} run(s) per scenario, "
        f"interleaved; medians; window {report['window_s']:g} s per run"
        + (f"; niceness {report['niceness']}" if report["niceness"] else ""),
        f"- Runs during which other programs used more than {report['busy_limit']:g} % of either "
        f"core were repeated (at most {report['retries']} times): {report['repeated_runs']} "
        "repeated (kept in the JSON)"
        if report["busy_limit"]
        else "- Every run kept, whatever else ran on the machine",
        "",
    ]
    if report["targets"]:
        lines += [
            "## Targets",
            "",
            "| target | goal | measured | met | notes |",
            "|---|---|---|---|---|",
        ]
        for t in report["targets"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(
                f"| {t['target']} | {t['goal']} | {fmt(t['measured'], 2)} | {met} | {t['note']} |"
            )
        lines.append("")
    lines += [
        "## Measurements (medians of runs)",
        "",
        "| scenario | viewers (failed) | fps mean / min | frames lost (%) "
        "| latency p50 / p95 / max ms | first frame ms, median / max | server CPU % "
        "| RSS MB | loop lag p99 ms | viewers' CPU % | others' CPU % core 0 / 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        f = r["median"]
        first = fmt([f["first_frame_median_ms"], f["first_frame_max_ms"]], 0)
        if f.get("first_picture_ms") is not None:
            first += (
                f" (after navigation: picture {fmt(f['first_picture_ms'], 0)}, "
                f"video {fmt(f.get('first_video_ms'), 0)})"
            )
        lines.append(
            f"| {r['scenario']['label']} | {f['viewers']} ({f['viewers_failed']}) "
            f"| {fmt([f['fps_mean'], f['fps_min']])} "
            f"| {fmt(f['frames_lost'], 0)} ({fmt(f['frames_lost_percent'], 2)}) "
            f"| {fmt([f['latency_p50_ms'], f['latency_p95_ms'], f['latency_max_ms']])} "
            f"| {first} | {fmt(f['server_cpu_percent'])} | {fmt(f['server_rss_mb'], 0)} "
            f"| {fmt(f['loop_lag_ms'].get('p99'))} | {fmt(f['clients_cpu_percent'])} "
            f"| {fmt(f['others_percent']['server_core'], 0)} "
            f"/ {fmt(f['others_percent']['client_core'], 0)} |"
        )
    errors = sorted({e for r in report["results"] for e in r["median"].get("errors", [])})
    if errors:
        lines += ["", "Viewer errors: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


# -- CLI ---------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 640x480") from None
    return width, height


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--kind",
        nargs="+",
        choices=["none", *KINDS],
        help="viewer kinds to measure (none: the server alone); without --kind, the full "
        "suite of docs/performance.md runs",
    )
    parser.add_argument("--viewers", type=int, nargs="+", default=[1], help="viewer counts")
    parser.add_argument(
        "--encoder",
        nargs="+",
        choices=["shared", "per-viewer"],
        default=["shared"],
        help="server encoders to compare (WebRTC kinds)",
    )
    parser.add_argument("--size", type=_size, default="640x480", help="test pattern size")
    parser.add_argument("--fps", type=float, default=30.0, help="test pattern rate")
    parser.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (medians)")
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured per run")
    parser.add_argument("--per-process", type=int, default=25, help="viewers per client process")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the server and the viewers: e.g. -10 (root) shields them from other "
        "programs on a shared machine",
    )
    parser.add_argument(
        "--busy-limit",
        type=float,
        default=Settings.busy_limit,
        help="repeat a run during which other programs used more than this %% of either core "
        "(0: keep every run)",
    )
    parser.add_argument(
        "--retries", type=int, default=Settings.retries, help="repeats of one run at most"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument("--name", help="results file name: suite, or the kinds")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.window <= 0 or args.per_process < 1 or min(args.viewers) < 0:
        parser.error("--runs, --window, --per-process must be positive, --viewers >= 0")
    return args


def scenarios_of(args: argparse.Namespace) -> list[Scenario]:
    width, height = args.size
    base = ServerOptions(width=width, height=height, fps=args.fps, codec=args.codec)
    if not args.kind:
        return full_suite(base)
    scenarios: list[Scenario] = []
    for kind, viewers in itertools.product(args.kind, args.viewers):
        if kind == "none":
            scenarios.append(Scenario("none", 0, base))
            continue
        encoders = args.encoder if kind in ("webrtc", "chromium") else ["shared"]
        scenarios += [Scenario(kind, viewers, replace(base, encoder=e)) for e in encoders]
    return list(dict.fromkeys(scenarios))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    scenarios = scenarios_of(args)
    name = args.name or ("suite" if not args.kind else "-".join(args.kind))
    logger.info(
        "%d scenarios x %d runs, window %g s: about %.0f min",
        len(scenarios), args.runs, args.window,
        len(scenarios) * args.runs * (args.window + SETTLE + 2.5) / 60,
    )  # fmt: skip
    started, host = time.time(), machine()
    settings = Settings(
        args.runs, args.window, args.per_process, args.nice, args.busy_limit, args.retries
    )
    results = asyncio.run(run_suite(scenarios, settings))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
        "machine": host,
        "command": " ".join(["python -m bench.run", *(argv or sys.argv[1:])]),
        "runs": args.runs,
        "window_s": args.window,
        "niceness": args.nice,
        "busy_limit": args.busy_limit,
        "retries": args.retries,
        "repeated_runs": sum(len(r["discarded_runs"]) for r in results),
        "duration_s": round(time.time() - started),
        "targets": [t for t in evaluate_targets(results) if t["met"] is not None],
        "results": results,
    }
    text = markdown(report)
    json_path, md_path = write_results(args.out, name, report, text)
    print(text)
    print(f"written: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
