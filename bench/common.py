"""Helpers shared by the benchmark: a pinned peercam server, /proc readings, figures, results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.processes import stop_process

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CORE = 0
CLIENT_CORE = 1

logger = logging.getLogger(__name__)


# -- /proc -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (a browser is many processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(current)
        todo += children.get(current, [])
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def core_times() -> dict[str, tuple[float, float]]:
    """(busy, total) jiffies per core (``cpu0``, ``cpu1``…) from /proc/stat."""
    cores: dict[str, tuple[float, float]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [float(v) for v in values[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            cores[name] = (sum(ticks) - idle, sum(ticks))
    return cores


def core_busy_percent(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """How busy each core was between two :func:`core_times` readings, by anyone, in %."""
    busy = {}
    for name, (b1, t1) in after.items():
        b0, t0 = before.get(name, (b1, t1))
        busy[name] = round(100 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else 0.0
    return busy


def pin(core: int) -> list[str]:
    """A taskset prefix pinning to ``core`` (server on 0, clients on 1), where possible."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def prefix(core: int, niceness: int = 0) -> list[str]:
    """The command prefix of a bench process: pinned to ``core``, at ``niceness`` if not 0.

    A negative niceness (root only) shields the measured processes from other programs on a
    shared machine; ``nice`` warns and carries on where it is not allowed.
    """
    return (["nice", "-n", str(niceness)] if niceness else []) + pin(core)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


# -- figures -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank), or None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``y`` over ``x``; None with fewer than two distinct ``x``."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


# -- the server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerOptions:
    """How peercam runs for one measurement: the test pattern at a size and rate."""

    width: int = 640
    height: int = 480
    fps: float = 30.0
    encoder: str = "shared"  # or "per-viewer": aiortc's usual encoding, for the comparison
    codec: str = "vp8"

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}@{self.fps:g}"


class Server:
    """A running peercam process pinned to the server's core."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    async def status(self, *, reset_lag: bool = False) -> dict[str, Any]:
        """``GET /api/status``; ``reset_lag`` clears the event-loop lag window first."""
        url = f"{self.http_url}/api/status" + ("?reset=lag" if reset_lag else "")
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            response.raise_for_status()
            data: dict[str, Any] = await response.json()
            return data


#: Every bench viewer comes from 127.0.0.1 without a token: access control (a token, a cap of
#: connections per address) guards real deployments, not this measurement.
ACCESS_FLAGS = ("--no-auth", "--max-per-address", "100000")


@contextlib.asynccontextmanager
async def peercam_server(
    options: ServerOptions,
    max_viewers: int,
    niceness: int = 0,
    *,
    host: str = "127.0.0.1",
    ice_addresses: Sequence[str] = ("127.0.0.1",),
    extra_args: Sequence[str] = (),
) -> AsyncIterator[Server]:
    """peercam on the test pattern, pinned to the server core, ready to serve.

    ``host``, ``ice_addresses`` and ``extra_args`` serve the link benchmark (viewers in network
    namespaces reach it on their veth; modes add flags). Raises RuntimeError if it exits early
    (e.g. a flag it does not know).
    """
    port = free_port()
    args = [
        *prefix(SERVER_CORE, niceness), sys.executable, "server.py",
        # --source is repeatable (several cameras): the test pattern unless the caller names one.
        *(() if "--source" in extra_args else ("--source", "test")),
        "--width", str(options.width), "--height", str(options.height),
        "--fps", f"{options.fps:g}", "--encoder", options.encoder, "--codec", options.codec,
        "--host", host, "--port", str(port),
        *(arg for address in ice_addresses for arg in ("--ice-address", address)),
        # --no-auth serves loopback Host names only: the lab's viewers use the veth address.
        *(arg for a in ice_addresses if a != "127.0.0.1" for arg in ("--allow-host", a)),
        "--max-viewers", str(max(1, max_viewers)), "--log-level", "WARNING",
        *ACCESS_FLAGS, *extra_args,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*args, cwd=ROOT)
    server = Server(process, port)
    try:
        await _wait_until_serving(server)
        yield server
    finally:
        await stop_process(process)


async def _wait_until_serving(server: Server, timeout: float = 60.0) -> None:
    """Until /healthz answers 200: every camera's source delivers frames (polls: no event
    exists)."""
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
        while True:
            if server.process.returncode is not None:
                raise RuntimeError(f"peercam exited with {server.process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{server.http_url}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)


# -- results -----------------------------------------------------------------------------------


def machine_line(m: dict[str, Any]) -> str:
    """The "Machine:" line of a results file, from :func:`machine`."""
    return (
        f"- Machine: {m['cpus']} × {m['cpu_model']}, Python {m['python']}, Linux {m['kernel']}; "
        f"load average at start {m['load_average_at_start']}"
    )


def write_results(
    out: Path, name: str, data: dict[str, Any], markdown: str, stamp: str | None = None
) -> tuple[Path, Path]:
    """``<out>/<name>-<stamp>.json`` and ``.md``; returns both paths."""
    stamp = stamp or time.strftime("%Y-%m-%d-%H%M")
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}-{stamp}.json"
    md_path = out / f"{name}-{stamp}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def fmt(value: Any, digits: int = 1) -> str:
    """A figure for a results table: "—" for none, lists joined with " / "."""
    if value is None:
        return "—"
    if isinstance(value, list):
        return " / ".join(fmt(v, digits) for v in value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
