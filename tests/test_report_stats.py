"""Regression statistics: shifted samples flagged, identical ones not, threshold-only metrics, change points."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from edgelr.errors import HistoryError, UsageError
from edgelr.report import stats as S


def lognormal(rng: np.random.Generator, n: int, median: float, cv: float = 0.03) -> np.ndarray:
    return median * rng.lognormal(0.0, math.sqrt(math.log1p(cv * cv)), n)


def test_parse_threshold() -> None:
    assert S.parse_threshold("5%") == S.Threshold(0.05, "rel", "5%")
    assert S.parse_threshold("0.5pt") == S.Threshold(0.5, "abs", "0.5pt")
    for bad in ("5", "five%", "-1%", "5 ms"):
        with pytest.raises(UsageError, match="expected a relative"):
            S.parse_threshold(bad, "latency")
    assert S.metric_of("energy") == "energy_per_inference"
    with pytest.raises(UsageError, match="does not measure"):
        S.metric_of("happiness")


def test_ten_percent_slowdown_is_a_regression_with_ci_around_it() -> None:
    rng = np.random.default_rng(1)
    base, cur = lognormal(rng, 30, 10.0), lognormal(rng, 30, 11.0)
    v = S.compare_samples(cur, base, S.parse_threshold("5%"))
    assert v.status == "regression" and v.method == "mann-whitney-u"
    assert v.p_value < 1e-6
    assert v.ci_low < 0.10 < v.ci_high and 0.07 < v.effect < 0.13
    assert v.n_current == v.n_baseline == 30


def test_identical_distributions_are_not_flagged() -> None:
    rng = np.random.default_rng(2)
    flagged = sum(S.compare_samples(lognormal(rng, 20, 10.0), lognormal(rng, 20, 10.0),
                                    S.parse_threshold("5%")).status == "regression" for _ in range(200))
    assert flagged <= 2


def test_significant_but_small_shift_is_not_a_regression() -> None:
    """1% slower with tiny noise: p is tiny, but the whole interval is far below the 5% threshold."""
    rng = np.random.default_rng(3)
    v = S.compare_samples(lognormal(rng, 50, 10.1, cv=0.002), lognormal(rng, 50, 10.0, cv=0.002),
                          S.parse_threshold("5%"))
    assert v.p_value < 1e-6 and v.ci_high < 0.05 and v.status == "ok"


def test_improvement_is_reported_never_a_regression() -> None:
    rng = np.random.default_rng(4)
    v = S.compare_samples(lognormal(rng, 30, 8.0), lognormal(rng, 30, 10.0), S.parse_threshold("5%"))
    assert v.status == "improvement" and v.effect < -0.15


def test_too_few_samples_falls_back_to_threshold_only() -> None:
    v = S.compare_samples([11.0, 11.1, 11.2], [10.0, 10.1, 10.2], S.parse_threshold("5%"))
    assert v.method == "threshold-only (n<8)" and v.status == "regression"
    assert math.isnan(v.p_value) and "no significance test" in v.note


def test_threshold_only_metrics_direction() -> None:
    t = S.parse_threshold("10%")
    assert S.compare_values([45.0], [40.0], t).status == "regression"          # +12.5% memory
    assert S.compare_values([43.0], [40.0], t).status == "ok"                  # +7.5%
    acc = S.parse_threshold("0.5pt")
    v = S.compare_values([81.2], [82.0], acc, higher_is_better=True)           # -0.8 points
    assert v.status == "regression" and v.effect == pytest.approx(-0.8) and v.method == "threshold-only"
    assert S.compare_values([82.4], [82.0], acc, higher_is_better=True).status == "ok"
    assert S.compare_values([83.0], [82.0], acc, higher_is_better=True).status == "improvement"


def test_segment_l1_finds_a_synthetic_step() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([lognormal(rng, 20, 10.0, 0.01), lognormal(rng, 15, 10.6, 0.01)])
    assert S.segment_l1(x) == [20]
    assert S.segment_l1(lognormal(rng, 35, 10.0, 0.01)) == []
    y = np.concatenate([np.full(10, 5.0), np.full(10, 6.0), np.full(10, 5.5)]) + rng.normal(0, 0.02, 30)
    assert S.segment_l1(y) == [10, 20]


def history_frame(medians: list[float], n: int = 20, seed: int = 0, sessions: int = 8) -> pd.DataFrame:
    """A loaded-history-like frame: one run per median, each of ``sessions`` sessions (a 2 % session
    effect) with n latency samples, + a peak_memory value."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, med in enumerate(medians):
        rid = f"r{k:02d}"
        for rep in range(sessions):
            vals = lognormal(rng, n, med * float(np.exp(rng.normal(0, 0.02))))
            parts.append(pd.DataFrame({"run_id": rid, "run_started": f"2026-11-{k + 1:02d}T00:00:00",
                                       "model": "clf", "device": "pi4", "metric": "latency", "repeat": rep,
                                       "sample": range(n), "value": vals}))
        parts.append(pd.DataFrame({"run_id": [rid], "run_started": [f"2026-11-{k + 1:02d}T00:00:00"],
                                   "model": ["clf"], "device": ["pi4"], "metric": ["peak_memory"],
                                   "repeat": [0], "sample": [-1], "value": [40.0]}))
    return pd.concat(parts, ignore_index=True)


NO_BASE = pd.DataFrame(columns=["name", "run_id", "accepted_at"])


def test_compare_run_flags_latency_and_locates_the_step() -> None:
    frame = history_frame([10.0] * 8 + [11.0] * 2)
    out = S.compare_run(frame, NO_BASE, "r09", {"latency": "5%", "peak_memory": "10%", "energy": "8%"},
                        baseline="window:8")
    lat = out[out["metric"] == "latency"].iloc[0]
    # window:8 holds r01..r08, one of them already slow: still a clear regression over sessions
    assert lat["status"] == "regression" and lat["baseline"] == "window:8"
    assert lat["change_run"] == "r08"
    mem = out[out["metric"] == "peak_memory"].iloc[0]
    assert mem["status"] == "ok" and mem["method"] == "threshold-only"
    assert "energy_per_inference" not in set(out["metric"])   # not measured: nothing to compare


def test_baseline_selection_accepted_previous_named() -> None:
    frame = history_frame([10.0, 11.0, 11.0])
    # no accepted baseline: the previous run (already slow) -> ok
    out = S.compare_run(frame, NO_BASE, "r02", {"latency": "5%"})
    assert out["baseline"].item() == "previous:r01" and out["status"].item() == "ok"
    acc = pd.DataFrame({"name": ["accepted"], "run_id": ["r00"], "accepted_at": ["x"]})
    out = S.compare_run(frame, acc, "r02", {"latency": "5%"})
    assert out["baseline"].item() == "accepted:r00" and out["status"].item() == "regression"
    with pytest.raises(HistoryError, match="no baseline named 'rel1'"):
        S.compare_run(frame, acc, "r02", {"latency": "5%"}, baseline="rel1")
    out = S.compare_run(frame, NO_BASE, "r00", {"latency": "5%"})
    assert out["status"].item() == "no-baseline"
    with pytest.raises(UsageError):
        S.parse_baseline("window:0")
