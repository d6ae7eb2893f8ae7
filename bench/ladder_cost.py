"""What the bitrate ladder costs (issue #9: "all rungs busy <= 1.6x one encoder").

One process, the test pattern, no network: the source alone, then, alternating a few times,
the top rung's shared encoder alone and every rung of the default ladder at once, each for a
window, CPU time of the whole process (all threads) per second of wall time. The encoders'
cost is each phase minus the source alone; the figure is all rungs / top rung. Run pinned to
one core (``taskset -c 0``) so that the encoders' threads compete as they do on a small board.

    taskset -c 0 python -m bench.ladder_cost --codec vp8 h264 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import RESULTS, fmt, machine, machine_line, write_results
from webrtc.encoders import Codec, VideoKey, default_bitrate, make_encoder_pool
from webrtc.ladder import LadderSpec
from webrtc.sources import TestPatternSource

logger = logging.getLogger("bench.ladder_cost")

PAIRS = 4  # top-alone and all-rungs windows per run, alternating
SETTLE = 0.5  # seconds after the rungs start or stop before a window


async def _cpu_per_second(seconds: float) -> float:
    """Process CPU seconds per wall second over the next ``seconds``."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)  # the measuring window itself
    return (time.process_time() - cpu0) / (time.monotonic() - wall0)


async def measure(
    codec: Codec, width: int, height: int, fps: float, seconds: float, ladder_spec: LadderSpec,
    pairs: int = PAIRS,
) -> dict[str, Any]:  # fmt: skip
    """One run: CPU share of the source alone, then ``pairs`` times the top rung alone and
    every rung at once, one after the other (each window ``seconds``; the medians of each).

    Alternating the two phases, rather than one window each, keeps a burst of the machine's
    other load from landing on one phase only: it moved single-window ratios by +-0.5."""
    source = TestPatternSource(width, height, fps)
    bitrate = default_bitrate(width, height, fps)
    ladder = ladder_spec.resolve(width, height, fps, bitrate)
    keys = [VideoKey(codec, r.height, r.bitrate, r.fps) for r in ladder.rungs]
    pool = make_encoder_pool(source.frames, fps=fps, bitrate=bitrate)
    tops: list[float] = []
    everys: list[float] = []
    source.start()
    try:
        await asyncio.sleep(1.0)  # warm-up: the source's first frames
        idle = await _cpu_per_second(seconds)
        async with pool.leases() as leases:
            for _ in range(pairs):
                leases.keep_only([leases.take(keys[0])])
                await asyncio.sleep(SETTLE)  # the rungs stop; the top goes on
                tops.append(await _cpu_per_second(seconds))
                for key in keys[1:]:
                    leases.take(key)
                await asyncio.sleep(SETTLE)  # they open and encode their first IDR
                everys.append(await _cpu_per_second(seconds))
            encoded = {str(k): e.stats().get("framesEncoded") for k, e in pool.running().items()}
    finally:
        await pool.aclose()
        await asyncio.to_thread(source.stop)
    top, every = statistics.median(tops), statistics.median(everys)
    return {
        "source_pct": 100 * idle,
        "top_pct": 100 * (top - idle),
        "all_pct": 100 * (every - idle),
        "ratio": (every - idle) / (top - idle) if top > idle else None,
        "rungs": [str(k) for k in keys],
        "encoded": encoded,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# peercam ladder cost, {report['date']}",
        "",
        machine_line(m),
        f"- Command: `{report['command']}`",
        f"- Test pattern {report['size']}; the source alone, then {PAIRS} times the top rung "
        f"alone and all rungs, alternating, {report['seconds']:g} s each; "
        f"{report['runs']} run(s), medians; CPU in % of one core",
        "",
        "| codec | rungs | source alone | top rung | all rungs | all / top |",
        "|---|---|---|---|---|---|",
    ]
    for codec, r in report["results"].items():
        lines.append(
            f"| {codec} | {', '.join(r['rungs'])} | {fmt(r['source_pct'], 1)} "
            f"| {fmt(r['top_pct'], 1)} | {fmt(r['all_pct'], 1)} | {fmt(r['ratio'], 2)} "
            f"(runs: {', '.join(fmt(x, 2) for x in r['ratios'])}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.ladder_cost", description=__doc__)
    parser.add_argument("--codec", nargs="+", choices=[str(c) for c in Codec], default=["vp8"])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="per window")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ladder", default="auto", help="as the server's --ladder")
    parser.add_argument("--name", default="ladder-cost")
    args = parser.parse_args(argv)
    width, height = (int(x) for x in args.size.split("x"))
    spec = LadderSpec.parse(args.ladder)
    logging.basicConfig(level=logging.WARNING)
    started, host = time.time(), machine()
    results: dict[str, Any] = {}
    for name in args.codec:
        runs = [
            asyncio.run(measure(Codec(name), width, height, args.fps, args.seconds, spec))
            for _ in range(args.runs)
        ]
        ratios = [r["ratio"] for r in runs if r["ratio"] is not None]
        results[name] = {
            key: statistics.median(r[key] for r in runs)
            for key in ("source_pct", "top_pct", "all_pct")
        } | {
            "ratio": statistics.median(ratios) if ratios else None,
            "ratios": ratios,
            "rungs": runs[0]["rungs"],
        }
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
        "machine": host,
        "command": " ".join(["python -m bench.ladder_cost", *argv]),
        "size": args.size,
        "seconds": args.seconds,
        "runs": args.runs,
        "results": results,
    }
    text = markdown(report)
    json_path, md_path = write_results(RESULTS, args.name, report, text)
    print(text)
    print(f"written: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
