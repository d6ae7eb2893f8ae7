"""The benchmark harness itself, run briefly: it is run by hand, so only this keeps it working.

Each test runs ``python -m bench.run`` as a user would, with two viewers of each kind for two
seconds, into a temporary directory (never bench/results/), and checks that the results are
written and that the figures are sane, not that they are good: that is the benchmark's job.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run_bench(out: Path, *kinds: str) -> tuple[dict[str, Any], str]:
    """Run the harness for ``kinds`` with 2 viewers each; the JSON report and the table."""
    command = [
        sys.executable, "-m", "bench.run", "--kind", *kinds, "--viewers", "2",
        "--runs", "1", "--window", "2", "--busy-limit", "0", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-4000:]
    [json_path] = out.glob("*.json")
    [md_path] = out.glob("*.md")
    report: dict[str, Any] = json.loads(json_path.read_text())
    table = md_path.read_text()
    assert table in done.stdout, "the CLI prints the table it writes"
    return report, table


def check_figures(report: dict[str, Any], table: str, kinds: set[str]) -> dict[str, Any]:
    """Figures present and plausible for every kind; returns the medians by kind."""
    figures = {r["scenario"]["kind"]: r["median"] for r in report["results"]}
    assert set(figures) == kinds
    for kind, f in figures.items():
        assert (f["viewers"], f["viewers_failed"]) == (2, 0), (kind, f["errors"])
        assert 0 < f["fps_min"] <= f["fps_mean"] < 40, (kind, f)
        assert f["frames_lost"] >= 0, (kind, f)
        assert f["latency_samples"] > 0, (kind, f)
        # Same clock at both ends: a latency is positive, and seconds only if something is wrong.
        assert 0 <= f["latency_p50_ms"] <= f["latency_p95_ms"] <= f["latency_max_ms"] < 5000
        assert 0 < f["first_frame_median_ms"] <= f["first_frame_max_ms"] < 30_000, (kind, f)
        assert f["server_cpu_percent"] > 0, (kind, f)
        assert f["server_rss_mb"] > 20, (kind, f)
        assert f["loop_lag_ms"]["samples"] > 0, (kind, f)
        assert 10 < f["source_fps"] <= 35, (kind, f)
        assert f"| {kind} " in table
    assert report["machine"]["cpus"] >= 1
    assert report["command"].startswith("python -m bench.run --kind")
    return figures


def test_harness_measures_webrtc_jpeg_and_original_protocol_viewers(tmp_path: Path) -> None:
    """aiortc viewers (counting and decoding), JPEG mode and /video all yield their figures."""
    report, table = run_bench(tmp_path, "webrtc", "jpeg", "legacy")
    check_figures(report, table, {"webrtc", "jpeg", "legacy"})


@pytest.mark.browser
def test_harness_measures_chromium_viewers(tmp_path: Path) -> None:
    """The browser's own figures: latency on presented frames, first picture, first video."""
    report, table = run_bench(tmp_path, "chromium", "chromium-jpeg")
    figures = check_figures(report, table, {"chromium", "chromium-jpeg"})
    assert 0 < figures["chromium"]["first_picture_ms"] <= figures["chromium"]["first_video_ms"]
    assert figures["chromium-jpeg"]["first_picture_ms"] > 0
    targets = {t["target"] for t in report["targets"]}
    assert any("first WebRTC video" in t for t in targets), targets
