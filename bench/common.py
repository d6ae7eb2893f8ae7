"""Helpers shared by the benchmarks: a pinned peercam server, /proc readings, results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pin(core: int) -> list[str]:
    """A taskset prefix pinning to ``core`` (server on 0, clients on 1), where possible."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@contextlib.contextmanager
def peercam_server(*flags: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """peercam on the test pattern, pinned to core 0; yields the process and its port."""
    port = free_port()
    process = subprocess.Popen(
        [*pin(0), sys.executable, "server.py", "--source", "test", "--port", str(port),
         "--ice-address", "127.0.0.1", "--log-level", "WARNING", *flags],
        cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        time.sleep(1)  # the source is live and steady
        yield process, port
    finally:
        process.terminate()
        process.wait(10)


def median_of(runs: Sequence[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def write_results(name: str, meta: dict[str, Any], table: list[str]) -> Path:
    stamp = time.strftime("%Y-%m-%d")
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"date": stamp, "cpus": os.cpu_count(), "command": " ".join(sys.argv), **meta}
    (RESULTS / f"{name}-{stamp}.json").write_text(json.dumps(meta, indent=2) + "\n")
    path = RESULTS / f"{name}-{stamp}.md"
    path.write_text("\n".join(table) + "\n")
    return path
