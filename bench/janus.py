"""What fan-out through Janus costs peercam: CPU with 0, 1 and N Janus outputs, and viewers
through Janus against viewers served directly. Run by hand; it runs in a network namespace of
its own (Janus needs a veth there: tests/janus_lab.py). Results: bench/results/janus-<date>.*

    .venv/bin/python -m bench.janus --outputs 3 --viewers 4 --seconds 10

peercam is pinned to core 0 (at niceness -5) with ``--ladder off``, Janus and the aiortc viewers
(this process) to core 1, so the server's figure is its own. Each phase starts a fresh
peercam (``--janus`` is a start flag).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    CLIENT_CORE,
    RESULTS,
    ROOT,
    Server,
    ServerOptions,
    cpu_seconds,
    fmt,
    machine,
    peercam_server,
    pin,
    write_results,
)
from tests.aiortc_viewer import AiortcViewer
from tests.janus_lab import JanusAiortcViewer, JanusServer, lab_veth, peercam_mountpoints
from tests.netlab import is_isolated

logger = logging.getLogger("bench.janus")
INSIDE_ENV = "PEERCAM_BENCH_JANUS_INSIDE"


@dataclass(frozen=True)
class Phase:
    name: str
    outputs: int  # Janus instances peercam feeds
    direct: int  # aiortc viewers of peercam itself (H.264)
    via_janus: int  # aiortc viewers of the first Janus


async def _fed(server: Server, outputs: int, timeout: float = 30) -> dict[str, Any]:
    """peercam's status once every Janus output is feeding (polls: no event to wait on)."""
    async with asyncio.timeout(timeout):
        while True:
            status = await server.status()
            janus = status.get("janus", [])
            if len(janus) == outputs and all(
                j["state"] == "feeding" and j["packets"] > 0 for j in janus
            ):
                return status
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _viewers(
    server: Server, janus: Sequence[JanusServer], phase: Phase
) -> AsyncIterator[list[Any]]:
    direct = [
        AiortcViewer(f"{server.ws_url}/ws", decode_bar=False, codec="h264")
        for _ in range(phase.direct)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for viewer in direct:
            stack.push_async_callback(viewer.close)
            await viewer.connect()
        via: list[JanusAiortcViewer] = []
        if phase.via_janus:
            (mountpoint,) = await peercam_mountpoints(janus[0].url)
            for _ in range(phase.via_janus):
                watcher = JanusAiortcViewer(janus[0].url, mountpoint["id"])
                via.append(await stack.enter_async_context(watcher))
        for d in direct:
            await d.wait_frames(5, timeout=20)
        for v in via:
            await v.wait_frames(5, timeout=20)
        yield [*direct, *via]


def _encoded(status: dict[str, Any]) -> int:
    return sum(int(e["framesEncoded"]) for e in status["encoders"].values())


def _frames(viewer: Any) -> int:
    return int(
        viewer.received.frames if isinstance(viewer, AiortcViewer) else viewer.decoded.frames
    )


async def measure(
    phase: Phase, janus: Sequence[JanusServer], seconds: float, warmup: float
) -> dict[str, Any]:
    urls = [arg for j in janus[: phase.outputs] for arg in ("--janus", j.url)]
    # One rung: the feed is on the top rung, so direct viewers are too (no controller steps).
    flags = ["--ladder", "off", *urls]
    async with peercam_server(
        ServerOptions(codec="h264"), max_viewers=100, niceness=-5, extra_args=flags
    ) as server:
        if phase.outputs:
            await _fed(server, phase.outputs)
        async with _viewers(server, janus, phase) as viewers:
            await asyncio.sleep(warmup)  # a benchmark's settling time, not synchronisation
            frames0 = [_frames(v) for v in viewers]
            pids = [j.pid for j in janus if j.pid is not None]
            encoded0 = _encoded(await server.status())
            janus0 = [cpu_seconds(p) for p in pids]
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            await asyncio.sleep(seconds)  # the measurement window
            elapsed = time.monotonic() - t0
            server_cpu = 100 * (cpu_seconds(server.pid) - cpu0) / elapsed
            janus_cpu = [
                100 * (cpu_seconds(p) - c) / elapsed for p, c in zip(pids, janus0, strict=True)
            ]
            fps = [(_frames(v) - f) / elapsed for v, f in zip(viewers, frames0, strict=True)]
            status = await server.status()
            encoded_fps = (_encoded(status) - encoded0) / elapsed
    return {
        "phase": phase.name,
        "outputs": phase.outputs,
        "direct_viewers": phase.direct,
        "janus_viewers": phase.via_janus,
        "peercam_cpu_percent": round(server_cpu, 1),
        "janus_cpu_percent": round(sum(janus_cpu), 1),
        "viewer_fps_min": round(min(fps), 1) if fps else None,
        # Below the source's 30: the encoder itself was starved (a busy machine).
        "encoded_fps": round(encoded_fps, 1),
        "encoders_started": status["encodersStarted"],
        "janus_packets": [j["packets"] for j in status.get("janus", [])],
    }


async def run_benchmark(outputs: int, viewers: int, seconds: float, warmup: float) -> list[Any]:
    phases = [
        Phase("idle (no output, no viewer)", 0, 0, 0),
        Phase("1 direct viewer", 0, 1, 0),
        Phase("1 Janus output", 1, 0, 0),
        Phase(f"{outputs} Janus outputs", outputs, 0, 0),
        Phase(f"{viewers} direct viewers", 0, viewers, 0),
        Phase(f"1 Janus output, {viewers} viewers through it", 1, 0, viewers),
    ]
    results = []
    with lab_veth() as veth:
        async with contextlib.AsyncExitStack() as stack:
            janus = [
                await stack.enter_async_context(
                    JanusServer(i, veth, command_prefix=pin(CLIENT_CORE))
                )
                for i in range(outputs)
            ]
            for phase in phases:
                logger.info("phase: %s", phase.name)
                results.append(await measure(phase, janus, seconds, warmup))
    return results


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Janus fan-out, {report['date']}",
        "",
        f"`{report['command']}` — 640x480@30 H.264 test pattern, one rung; peercam on core 0, "
        f"Janus and the aiortc viewers on core 1; {report['seconds']:g} s windows. Load average "
        "at start: "
        f"{report['machine']['load_average_at_start']} (a shared machine: figures vary).",
        "",
        "| phase | peercam CPU % | Janus CPU % | encoded fps | slowest viewer fps "
        "| encoders started |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        started = ", ".join(f"{k} {v}" for k, v in r["encoders_started"].items() if v)
        lines.append(
            f"| {r['phase']} | {fmt(r['peercam_cpu_percent'])} | {fmt(r['janus_cpu_percent'])} "
            f"| {fmt(r['encoded_fps'])} | {fmt(r['viewer_fps_min'])} | {started or '—'} |"
        )
    return "\n".join(lines) + "\n"


def _in_own_namespace(argv: Sequence[str]) -> None:
    """Re-execute under ``unshare -n`` (lo up) unless this namespace already has only lo."""
    if is_isolated():
        return
    if os.environ.get(INSIDE_ENV):
        sys.exit("bench.janus: still not in a network namespace of its own")
    os.environ[INSIDE_ENV] = "1"
    command = [sys.executable, "-m", "bench.janus", *argv]
    os.execvp(
        "unshare", ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.janus", description=__doc__)
    parser.add_argument("--outputs", type=int, default=3, help="Janus instances fed at once")
    parser.add_argument("--viewers", type=int, default=4, help="viewers, direct and via Janus")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=3.0, help="settling time per phase")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.outputs < 1 or args.viewers < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--outputs and --viewers at least 1, --seconds > 0, --warmup >= 0")
    _in_own_namespace(argv)
    os.chdir(ROOT)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {CLIENT_CORE})  # the viewers: off the server's core
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started, host = time.time(), machine()
    results = asyncio.run(run_benchmark(args.outputs, args.viewers, args.seconds, args.warmup))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
        "machine": host,
        "command": " ".join(["python -m bench.janus", *argv]),
        "seconds": args.seconds,
        "results": results,
    }
    text = markdown(report)
    json_path, md_path = write_results(args.out, "janus", report, text)
    print(text)
    print(f"written: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
