"""The link-profile benchmark, run briefly (it is run by hand, so only this keeps it working),
and the figures it derives from what a viewer saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.links import Check, age_back_under, counted_rates, top_rung_after
from tests.netlab import picture_stats

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.browser
def test_the_step_profile_runs_and_reports_its_figures(tmp_path: Path) -> None:
    """One profile, one mode, a few seconds: the report has every figure and pictures came."""
    command = [
        sys.executable, "-m", "bench.links", "--profiles", "step", "--modes", "ladder",
        "--seconds", "3", "--warmup", "0.5", "--runs", "1", "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-4000:]
    [json_path] = tmp_path.glob("links-*.json")
    [md_path] = tmp_path.glob("links-*.md")
    report: dict[str, Any] = json.loads(json_path.read_text())
    assert md_path.read_text() in done.stdout, "the CLI prints the table it writes"
    [result] = report["results"]
    assert (result["profile"], result["mode"]) == ("step", "ladder")
    figures = result["median"]
    assert figures["error"] is None, figures
    assert figures["mode"] == "WebRTC", figures
    assert figures["fps"] > 0, figures
    assert figures["received_fps"] > 0, figures  # the page's own counters, read in the window
    for key in ("age_p50_ms", "age_p95_ms", "longest_freeze_s", "rung", "rung_switches",
                "estimate_kbps", "age_back_under_300ms_s", "top_rung_after_s"):  # fmt: skip
        assert key in figures, key
    assert figures["link"] == "2 Mbit/s → 300 kbit/s → 2 Mbit/s"
    assert isinstance(figures["age_back_under_300ms_s_never"], bool)
    assert [t["target"] for t in result["targets"]] == [
        "age_back_under_300ms_s <= 2.0",
        "top_rung_after_s <= 15.0",
    ]


def test_picture_stats_count_the_window_and_its_longest_freeze() -> None:
    """fps and freezes come from new pictures in the window; edges count as freeze time."""
    samples = [(10.0 + i / 10, 50.0) for i in range(10)] + [(12.0, 120.0), (12.1, None)]
    stats = picture_stats(samples, 10.0, 13.0)
    assert stats.frames == 12
    assert stats.fps == pytest.approx(4.0)
    assert stats.stamped == 11
    assert stats.age_p50_ms == 50.0
    assert stats.age_max_ms == 120.0
    assert stats.longest_freeze_s == pytest.approx(1.1)  # 10.9 → 12.0


def test_age_back_under_follows_the_picture_on_screen() -> None:
    """A freeze makes the picture on screen old even though no sample says so."""
    fresh = [(t / 30, 40.0) for t in range(0, 300)]  # 10 s of young pictures at 30 fps
    assert age_back_under(fresh, 2.0, 8.0, 300) == 0.0
    # No picture from 3.0 to 4.0 s: the one on screen is 1 s older by then.
    frozen = [(t, a) for t, a in fresh if not 3.0 < t < 4.0]
    assert age_back_under(frozen, 2.0, 8.0, 300) == pytest.approx(2.0, abs=0.04)
    # Pictures that stay old until the end of the drop: never back under.
    late = [(t, 400.0 if t > 5 else a) for t, a in fresh]
    assert age_back_under(late, 2.0, 8.0, 300) is None


def test_top_rung_after_is_the_first_report_of_rung_0() -> None:
    polls = [(1.0, {"rungIndex": 2}), (2.0, {"rungIndex": 0}), (3.0, {"rungIndex": 1}),
             (4.5, {"rungIndex": 0})]  # fmt: skip
    assert top_rung_after(polls, 2.5) == pytest.approx(2.0)
    assert top_rung_after(polls, 5.0) is None
    assert top_rung_after([(1.0, {})], 0.0) is None  # a server without the ladder


def test_a_target_that_never_happened_fails_and_an_unreported_one_is_not_measured() -> None:
    check = Check("top_rung_after_s", "<=", 15.0)
    assert check.met({"top_rung_after_s": 4.0}) is True
    assert check.met({"top_rung_after_s": None, "top_rung_after_s_never": True}) is False
    assert check.met({"top_rung_after_s": None, "top_rung_after_s_never": False}) is None


def test_counted_rates_are_per_second_of_the_window_and_absent_without_both_ends() -> None:
    counters: list[tuple[float, dict[str, float]]] = [
        (10.0, {"received": 100, "decoded": 98, "dropped": 1}),
        (12.0, {"received": 160, "decoded": 150, "dropped": 5}),
    ]
    assert counted_rates(counters) == {
        "received_fps": 30.0,
        "decoded_fps": 26.0,
        "dropped_fps": 2.0,
    }
    assert counted_rates(counters[:1])["received_fps"] is None
    assert counted_rates([(10.0, {}), (12.0, {"received": 1})])["received_fps"] is None
