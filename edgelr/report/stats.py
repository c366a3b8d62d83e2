"""Regression statistics: is the current run worse than its baseline, and where did a step begin?

**Latency is compared between sessions, never between the inferences of one process.** A session is
one fresh benchmark process (:mod:`edgelr.bench.run`); its median latency is one observation. The
per-inference samples of one process are correlated: here (REFERENCE.md §8) session medians of an
unchanged model moved -19 % to +16 % while each session's per-inference interval was +-2-3 % wide, so a
test over inferences declared identical files different (the U test over inferences flagged +16 % on an
unchanged model). Model: y_ij = mu + s_i + e_ij; the mean of K sessions has variance
s2_s/K + s2_w/(K N) and only more sessions shrink the first term.

Two designs, two tests:

1. **Paired, interleaved** (:func:`compare_paired`; ``bench`` of several models, the demo, and the
   confirmation re-run of ``regress``): block b holds one session of each model in random order, so
   drift cancels in d_b = log(c_b / a_b). The test is the one-sided Wilcoxon signed-rank test on d_b;
   the effect is exp(HL) - 1 with HL the Hodges-Lehmann estimate (median of the Walsh averages) and
   its exact distribution-free interval from the signed-rank distribution. Why this and not a t-test
   or a bootstrap: with the session order randomized inside each block, d_b of two identical models is
   symmetric about 0 by construction, which is exactly the signed-rank test's null, so its false-alarm
   rate is alpha whatever the noise distribution; the block log-ratios under memory-bandwidth bursts
   are heavy-tailed (block ratios of identical models 0.38-2.14, medians 0.90-1.02), where the t
   interval is inflated by single outliers; and a percentile bootstrap over 10 blocks is
   anti-conservative (its interval undercovers for n < 20). Below 6 blocks no 95 % signed-rank interval
   exists; a t interval on d_b is given then, and said so.
2. **Unpaired, against a stored baseline** (:func:`compare_samples` on session medians; the first
   stage of ``regress``): Mann-Whitney U over the K session medians of each run with the Hodges-Lehmann
   ratio and its U-based interval. Runs days apart do not share drift, so this stage only *suggests*
   a change; ``regress`` then re-measures both models interleaved and decides on paired data
   (:func:`compare_paired`), as Chromium's Pinpoint does.

Decision rule (both designs): a **regression** needs significance in the worse direction (one-sided
p < ``alpha``) *and* an effect interval that reaches the threshold (``ci_high >= threshold`` for a
slow-down): the data are significantly worse and compatible with a change at least as large as the
threshold. Improvements are reported (mirrored test) but never fail a run. Metrics without sessions
or samples (memory, energy, accuracy, size) are compared by threshold only and say so.

Smallest detectable change (:func:`min_detectable_change`): with the sd of the block log-ratios
sd_d, K blocks, one-sided alpha and power 1 - beta, delta = (z_{1-alpha} + z_{1-beta}) sd_d / sqrt(K),
and nothing is detectable when 2**-K > alpha (the signed-rank test's smallest p). ``regress`` warns
when the threshold is below it.

``alpha`` defaults to 0.01: between asv (0.002) and Google benchmark's compare.py (0.05).

Measured on this 2-core shared machine (``tests/perf/bench_detection.py``, ``reports/detection.md``;
100 interleaved blocks of real sessions, quiet and beside a bursty CPU + memory-bandwidth load):

* The session effect is per process, not drift: for a 0.3 ms MLP the residual of a session around its
  block mean had sd 0.24 (log) against 0.20 for the block means themselves, with no position effect
  inside blocks and no autocorrelation between blocks; a 15 M-MAC CNN had a between-session CV of 7 %
  and an sd of block log-ratios of 0.15-0.17. Longer sessions did not help: 20, 200, 1,000 and 2,000
  timed inferences per session gave sd 0.13-0.19 alike, hence N = 20 runs per session (cheap) and K
  sessions as the lever (``edgelr.bench.run.DEFAULT_SESSIONS``).
* Heavy tails: single sessions 3-5x slower than their block (0.33 -> 1.1-1.8 ms) under both
  conditions; the rank tests and the HL interval are not moved by them, a t interval is.
* Paired signed-rank at K = 10: 0.2 % false alarms (A/A), 53 % power for a 1.14x slower CNN; the
  whole ``regress`` decision (stored baseline suggests, a paired re-run of up to 40 blocks decides,
  :func:`edgelr.regress.confirm_blocks`): 0.2 % false alarms and 99.5-99.8 % power, quiet and under load.

Change points: :func:`segment_l1` fits piecewise-constant segments to a series of per-run medians by
minimising the L1 cost plus a penalty per segment (Potts model, as asv does), by dynamic programming.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from edgelr.errors import HistoryError, UsageError

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_ALPHA = 0.01
"""Significance level of the one-sided Mann-Whitney U test (see the module docstring)."""
MIN_SAMPLES = 8
"""Fewest samples per side for the U test on per-inference samples (tools that print no sessions)."""
MIN_SESSIONS = 5
"""Fewest sessions per side for the U test over session medians (5 vs 5: smallest one-sided p 0.004)."""
MIN_BLOCKS = 2
"""Fewest interleaved blocks for a paired comparison with an interval."""
SESSION_METRIC = "latency_median"
"""The per-session summary a latency comparison uses (one row per session, sample = -1)."""
CI_LEVEL = 0.95
"""Two-sided confidence level of the effect interval."""
MAX_PAIRS = 4_000_000
"""Above n_current * n_baseline pairwise differences, both sides are thinned to quantiles first."""

METRIC_ALIASES: dict[str, str] = {"energy": "energy_per_inference", "memory": "peak_memory", "size": "model_size"}
"""Threshold keys of a suite file -> metric names of the results frame."""
HIGHER_IS_BETTER: frozenset[str] = frozenset({"accuracy"})
SAMPLED_METRICS: frozenset[str] = frozenset({"latency"})
LATENCY_FALLBACKS = ("latency_median", "latency_avg")
"""Aggregates used (threshold only) when a run has no per-run latency samples."""


# ------------------------------------------------------------------------------------------ thresholds
@dataclass(frozen=True)
class Threshold:
    """A tolerated worsening: relative (``"5%"`` -> 0.05) or absolute (``"0.5pt"`` -> 0.5 metric units)."""

    value: float
    kind: Literal["rel", "abs"]
    text: str


_THRESHOLD_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(%|pt)\s*$")


def parse_threshold(text: str | float, metric: str = "?") -> Threshold:
    """Parse ``"5%"`` (relative) or ``"0.5pt"`` (absolute, in the metric's unit; points for accuracy)."""
    m = _THRESHOLD_RE.match(str(text))
    if not m:
        raise UsageError(f"threshold for {metric} is {text!r}; expected a relative '5%' or an absolute "
                         f"'0.5pt' (points of the metric's unit)")
    v = float(m.group(1))
    return Threshold(v / 100.0 if m.group(2) == "%" else v, "rel" if m.group(2) == "%" else "abs", m.group(0).strip())


def metric_of(key: str) -> str:
    """The results-frame metric a threshold key names (``energy`` -> ``energy_per_inference``)."""
    from edgelr.bench.frame import METRICS

    name = METRIC_ALIASES.get(key, key)
    if name not in METRICS:
        raise UsageError(f"threshold names metric {key!r}, which edgelr does not measure; expected one of "
                         f"{sorted(set(METRICS) | set(METRIC_ALIASES))}")
    return name


# ------------------------------------------------------------------------------------------ verdicts
@dataclass
class Verdict:
    """Outcome of one (model, device, metric) comparison.

    ``effect`` is relative (``current/baseline - 1``) for ``%`` thresholds and absolute (metric units)
    for ``pt`` thresholds; positive means the metric value went up.
    """

    status: str                      # regression | improvement | ok | no-baseline | not-measured
    method: str                      # mann-whitney-u | threshold-only (...)
    effect: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    current: float = math.nan        # median of the current values
    baseline: float = math.nan       # median of the baseline values
    n_current: int = 0
    n_baseline: int = 0
    threshold: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d.update(self.extra)
        return d


def hodges_lehmann_log_ratio(current: np.ndarray, baseline: np.ndarray,
                             ci_level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Ratio shift ``current/baseline - 1`` by Hodges-Lehmann on logs, with its U-based interval.

    Parameters
    ----------
    current, baseline : ndarray, shapes (n,), (m,)
        Positive samples (e.g. latencies in ms).
    ci_level : float
        Two-sided confidence level.

    Returns
    -------
    (estimate, low, high) : tuple of float
        Relative shifts (0.05 = 5% larger).
    """
    from scipy.stats import norm

    x = np.log(np.asarray(current, float))
    y = np.log(np.asarray(baseline, float))
    x, y = _thin(x), _thin(y)
    d = np.sort((x[:, None] - y[None, :]).ravel())
    n1, n2, N = len(x), len(y), d.size
    z = norm.ppf(0.5 + ci_level / 2)
    k = int(math.floor(n1 * n2 / 2 - z * math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)))
    k = min(max(k, 1), N)
    lo, hi = d[k - 1], d[N - k]
    return float(np.expm1(np.median(d))), float(np.expm1(lo)), float(np.expm1(hi))


def _thin(a: np.ndarray) -> np.ndarray:
    limit = int(math.sqrt(MAX_PAIRS))
    if a.size <= limit:
        return a
    return np.quantile(a, (np.arange(limit) + 0.5) / limit)


def compare_samples(current: Sequence[float], baseline: Sequence[float], threshold: Threshold, *,
                    higher_is_better: bool = False, alpha: float = DEFAULT_ALPHA,
                    min_samples: int = MIN_SAMPLES, ci_level: float = CI_LEVEL,
                    effect_rule: Literal["ci", "point"] = "ci") -> Verdict:
    """Compare per-run samples (see the module docstring for the rule).

    Parameters
    ----------
    current, baseline : sequence of float, shapes (n,), (m,)
        Per-run samples of one metric (latency in ms), NaNs dropped.
    threshold : Threshold
        Relative thresholds use the log-ratio effect; absolute ones the plain shift (metric units).
    """
    from scipy.stats import mannwhitneyu

    x = np.asarray([v for v in current if v == v], float)
    y = np.asarray([v for v in baseline if v == v], float)
    if x.size == 0 or y.size == 0:
        return Verdict("not-measured" if x.size == 0 else "no-baseline", "mann-whitney-u", n_current=x.size,
                       n_baseline=y.size, threshold=threshold.text,
                       note="no current samples" if x.size == 0 else "no baseline samples")
    if x.size < min_samples or y.size < min_samples:
        v = compare_values(x, y, threshold, higher_is_better=higher_is_better)
        v.method = f"threshold-only (n<{min_samples})"
        v.note = (f"only {x.size} current / {y.size} baseline samples (< {min_samples}): no significance "
                  f"test, compared medians by threshold. Use more runs")
        return v
    worse, better = ("less", "greater") if higher_is_better else ("greater", "less")
    p_worse = float(mannwhitneyu(x, y, alternative=worse).pvalue)
    if threshold.kind == "rel" and (x > 0).all() and (y > 0).all():
        est, lo, hi = hodges_lehmann_log_ratio(x, y, ci_level)
    else:
        est, lo, hi = _hodges_lehmann_shift(x, y, ci_level)
        if threshold.kind == "rel":
            base = float(np.median(y))
            est, lo, hi = est / base, lo / base, hi / base
    t = threshold.value
    # signed so that positive = worse
    s_est, s_lo, s_hi = (-est, -hi, -lo) if higher_is_better else (est, lo, hi)
    reach = s_hi >= t if effect_rule == "ci" else s_est >= t
    reach_better = (-s_lo) >= t if effect_rule == "ci" else (-s_est) >= t
    if p_worse < alpha and reach:
        status = "regression"
    else:
        p_better = float(mannwhitneyu(x, y, alternative=better).pvalue) if reach_better else 1.0
        status = "improvement" if p_better < alpha and reach_better else "ok"
    return Verdict(status, "mann-whitney-u", est, lo, hi, p_better if status == "improvement" else p_worse,
                   float(np.median(x)), float(np.median(y)), int(x.size), int(y.size), threshold.text,
                   note="one-sided U test p (worse direction)" if status != "improvement"
                   else "one-sided U test p (better direction)")


def _signed_rank_null(n: int) -> np.ndarray:
    """Exact null distribution of the Wilcoxon signed-rank statistic T+ for n untied values: P(T+ = t)."""
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=float)
    counts[0] = 1.0
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    return counts / counts.sum()


def signed_rank_interval(d: Sequence[float], ci_level: float = CI_LEVEL) -> tuple[float, float, float, str]:
    """Hodges-Lehmann estimate of the centre of ``d`` and its interval.

    Parameters
    ----------
    d : sequence of float, shape (n,)
        Paired differences (per-block log-ratios).
    ci_level : float
        Two-sided confidence level.

    Returns
    -------
    (estimate, low, high, how) : tuple
        ``how`` says which interval: ``signed-rank`` (exact, n >= 6 for 95 %), ``t`` (n 2-5), ``none`` (n 1).
    """
    x = np.asarray(d, float)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan, "none"
    i, j = np.triu_indices(n)
    walsh = np.sort((x[i] + x[j]) / 2.0)
    est = float(np.median(walsh))
    a = 1.0 - ci_level
    cdf = np.cumsum(_signed_rank_null(n)) if n <= 200 else None
    if cdf is not None:
        # k = largest k with P(T+ <= k - 1) <= a/2; the interval is [W_(k), W_(M + 1 - k)] (1-based)
        k = int(np.searchsorted(cdf, a / 2.0, side="right"))
    else:
        from scipy.stats import norm

        mu, sd = n * (n + 1) / 4.0, math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
        k = int(math.floor(mu - norm.ppf(1 - a / 2.0) * sd))
    m = walsh.size
    if k >= 1:
        return est, float(walsh[k - 1]), float(walsh[m - k]), "signed-rank"
    if n >= 2:
        from scipy.stats import t as student

        half = float(student.ppf(1 - a / 2.0, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
        mean = float(x.mean())
        return est, mean - half, mean + half, "t"
    return est, math.nan, math.nan, "none"


def compare_paired(current: Sequence[float], reference: Sequence[float], threshold: Threshold, *,
                   higher_is_better: bool = False, alpha: float = DEFAULT_ALPHA,
                   ci_level: float = CI_LEVEL) -> Verdict:
    """Compare interleaved sessions block by block (see the module docstring).

    Parameters
    ----------
    current, reference : sequence of float, shapes (n,), (n,)
        Session summaries (median latency, ms) of the two models, aligned by block; blocks where
        either is missing (NaN) are dropped.
    threshold : Threshold
        Relative (``5%``): the effect is ``exp(HL(log c - log a)) - 1``; absolute: HL of ``c - a``.

    Returns
    -------
    Verdict
        ``method`` ``wilcoxon-signed-rank (paired sessions)``; ``n_current`` = ``n_baseline`` = blocks;
        ``extra["blocks"]`` the per-block ratios (or differences).
    """
    from scipy.stats import wilcoxon

    c = np.asarray(current, float)
    r = np.asarray(reference, float)
    if c.shape != r.shape:
        raise ValueError(f"paired sessions must align: got {c.shape} current and {r.shape} reference blocks")
    ok = np.isfinite(c) & np.isfinite(r)
    c, r = c[ok], r[ok]
    n = int(c.size)
    method = "wilcoxon-signed-rank (paired sessions)"
    if n == 0:
        return Verdict("not-measured", method, threshold=threshold.text, note="no complete block of sessions")
    rel = threshold.kind == "rel" and (c > 0).all() and (r > 0).all()
    d = np.log(c) - np.log(r) if rel else c - r
    est, lo, hi, how = signed_rank_interval(d, ci_level)
    if rel:
        est, lo, hi = float(np.expm1(est)), float(np.expm1(lo)), float(np.expm1(hi))
    elif threshold.kind == "rel":
        base = float(np.median(r))
        est, lo, hi = est / base, lo / base, hi / base
    worse, better = ("less", "greater") if higher_is_better else ("greater", "less")
    nonzero = d[d != 0]
    if nonzero.size:
        p_worse = float(wilcoxon(nonzero, alternative=worse).pvalue)
        p_better = float(wilcoxon(nonzero, alternative=better).pvalue)
    else:
        p_worse = p_better = 1.0
    t = threshold.value
    s_est, s_lo, s_hi = (-est, -hi, -lo) if higher_is_better else (est, lo, hi)
    finite = math.isfinite(s_hi)
    reach = finite and s_hi >= t
    reach_better = finite and -s_lo >= t
    if p_worse < alpha and reach:
        status = "regression"
    elif p_better < alpha and reach_better:
        status = "improvement"
    else:
        status = "ok"
    notes = [f"{n} interleaved block(s)"]
    if how == "t":
        notes.append("t interval: fewer than 6 blocks give no 95 % signed-rank interval")
    elif how == "none":
        notes.append("1 block: no interval; use more sessions")
    if 2.0 ** -n >= alpha:
        notes.append(f"{n} blocks cannot reach p < {alpha:g} (smallest p is 2^-{n}); use >= "
                     f"{math.ceil(math.log2(1 / alpha)) + 1} sessions")
    v = Verdict(status, method, est, lo, hi, p_better if status == "improvement" else p_worse,
                float(np.median(c)), float(np.median(r)), n, n, threshold.text, note="; ".join(notes))
    v.extra["blocks"] = [float(x) for x in (np.exp(d) if rel else d)]
    return v


def speedup(verdict: Verdict) -> tuple[float, float, float]:
    """(speed-up, low, high) of the current model over the reference from a relative latency verdict.

    Speed-up = reference latency / current latency = 1 / (1 + effect), interval bounds swapped.
    """
    def inv(x: float) -> float:
        return 1.0 / (1.0 + x) if math.isfinite(x) and x > -1 else math.nan

    return inv(verdict.effect), inv(verdict.ci_high), inv(verdict.ci_low)


def format_speedup(verdict: Verdict) -> str:
    """``1.84x [1.71, 1.97]`` (95 % interval), or ``1.84x`` with the reason when there is none."""
    s, lo, hi = speedup(verdict)
    if not math.isfinite(s):
        return ""
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{s:.2f}x [{lo:.2f}, {hi:.2f}]"
    return f"{s:.2f}x [no interval: {verdict.n_current} session(s)]"


def min_detectable_change(sd_log: float, blocks: int, alpha: float = DEFAULT_ALPHA,
                          power: float = 0.95) -> float:
    """Smallest relative change a paired comparison of ``blocks`` blocks detects with ``power``.

    Parameters
    ----------
    sd_log : float
        Standard deviation of the per-block log-ratios of two identical models (between-session noise).
    blocks : int
        Interleaved blocks (sessions per model), K.

    Returns
    -------
    float
        Relative change (0.05 = 5 %); ``inf`` when 2**-K > alpha (no p below alpha is possible).
    """
    from scipy.stats import norm

    if blocks < 1 or 2.0 ** -blocks > alpha or not math.isfinite(sd_log):
        return math.inf
    # the signed-rank test has asymptotic relative efficiency 3/pi (0.955) against the t-test
    delta = (norm.ppf(1 - alpha) + norm.ppf(power)) * sd_log / math.sqrt(blocks * 3.0 / math.pi)
    return float(math.expm1(delta))


def _hodges_lehmann_shift(x: np.ndarray, y: np.ndarray, ci_level: float) -> tuple[float, float, float]:
    from scipy.stats import norm

    x, y = _thin(x), _thin(y)
    d = np.sort((x[:, None] - y[None, :]).ravel())
    n1, n2, N = len(x), len(y), d.size
    z = norm.ppf(0.5 + ci_level / 2)
    k = min(max(int(math.floor(n1 * n2 / 2 - z * math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0))), 1), N)
    return float(np.median(d)), float(d[k - 1]), float(d[N - k])


def compare_values(current: Sequence[float], baseline: Sequence[float], threshold: Threshold, *,
                   higher_is_better: bool = False) -> Verdict:
    """Threshold-only comparison of the medians of two sets of values (no significance test)."""
    x = np.asarray([v for v in current if v == v], float)
    y = np.asarray([v for v in baseline if v == v], float)
    if x.size == 0 or y.size == 0:
        return Verdict("not-measured" if x.size == 0 else "no-baseline", "threshold-only", n_current=x.size,
                       n_baseline=y.size, threshold=threshold.text,
                       note="not measured in the current run" if x.size == 0 else "not measured in the baseline")
    cur, base = float(np.median(x)), float(np.median(y))
    if threshold.kind == "rel":
        if base == 0:
            effect = 0.0 if cur == 0 else math.inf
        else:
            effect = cur / base - 1.0
    else:
        effect = cur - base
    signed = -effect if higher_is_better else effect
    status = "regression" if signed > threshold.value else "improvement" if -signed > threshold.value else "ok"
    return Verdict(status, "threshold-only", effect, math.nan, math.nan, math.nan, cur, base, int(x.size),
                   int(y.size), threshold.text, note="no per-run samples: threshold only, no significance test")


# ------------------------------------------------------------------------------------ change points
def segment_l1(values: Sequence[float], penalty: float | None = None) -> list[int]:
    """Optimal piecewise-constant segmentation under L1 cost plus ``penalty`` per segment (Potts).

    Parameters
    ----------
    values : sequence of float, shape (n,)
        A time-ordered series (per-run medians).
    penalty : float, optional
        Cost of one more segment, in the values' units. Default ``3 * sigma * ln(n + 1)`` with sigma
        a robust noise estimate (MAD of first differences / sqrt 2).

    Returns
    -------
    list of int
        Indices where a new segment starts (empty: no change). Shape (n_changes,).
    """
    x = np.asarray(values, float)
    n = x.size
    if n < 2:
        return []
    if penalty is None:
        sigma = 1.4826 * float(np.median(np.abs(np.diff(x)))) / math.sqrt(2)
        sigma = max(sigma, 1e-9 * max(float(np.median(np.abs(x))), 1e-12))
        penalty = 3.0 * sigma * math.log(n + 1)
    # cost[i, j] = L1 cost of x[i:j]
    cost = np.full((n + 1, n + 1), np.inf)
    for i in range(n):
        for j in range(i + 1, n + 1):
            seg = x[i:j]
            cost[i, j] = float(np.abs(seg - np.median(seg)).sum())
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    prev = np.zeros(n + 1, int)
    for j in range(1, n + 1):
        cand = best[:j] + cost[:j, j] + penalty
        i = int(np.argmin(cand))
        best[j], prev[j] = cand[i], i
    starts: list[int] = []
    j = n
    while j > 0:
        i = int(prev[j])
        if i > 0:
            starts.append(i)
        j = i
    return sorted(starts)


def run_series(frame: "pd.DataFrame", model: str, device: str, metric: str) -> "pd.DataFrame":
    """Per-run median of ``metric`` for (model, device), oldest run first: columns run_id, run_started, value."""
    import pandas as pd

    sel = frame[(frame["model"] == model) & (frame["device"] == device) & (frame["metric"] == metric)]
    if metric in SAMPLED_METRICS:
        samples = sel[sel["sample"] >= 0]
        sel = samples if len(samples) else sel
    if not len(sel):
        return pd.DataFrame(columns=["run_id", "run_started", "value"])
    g = sel.groupby(["run_started", "run_id"], sort=True)["value"].median().reset_index()
    return g[["run_id", "run_started", "value"]]


def locate_step(frame: "pd.DataFrame", model: str, device: str, metric: str,
                penalty: float | None = None) -> str | None:
    """Run id where the last step change of (model, device, metric) began, or None (no step / < 4 runs)."""
    s = run_series(frame, model, device, metric)
    if len(s) < 4:
        return None
    starts = segment_l1(s["value"].to_numpy(float), penalty)
    return str(s["run_id"].iloc[starts[-1]]) if starts else None


# ------------------------------------------------------------------------------------------ baselines
def parse_baseline(spec: str) -> tuple[str, int]:
    """``last`` -> ("accepted", 0); ``NAME`` -> (NAME, 0); ``window:N`` -> ("window", N)."""
    spec = (spec or "last").strip()
    if spec == "last":
        return "accepted", 0
    if spec.startswith("window:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise UsageError(f"--baseline {spec!r}: expected window:N with N >= 1, e.g. window:10")
        return "window", n
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", spec):
        raise UsageError(f"--baseline {spec!r}: expected last, window:N or a baseline name (letters, digits, _.-)")
    return spec, 0


def select_baseline(frame: "pd.DataFrame", accepted: "pd.DataFrame", current_run: str, spec: str,
                    model: str, device: str, metric: str) -> tuple[list[str], str]:
    """Baseline run ids for one (model, device, metric), and a label saying how they were chosen.

    Parameters
    ----------
    frame : DataFrame
        :func:`edgelr.report.history.load` output (complete/partial runs).
    accepted : DataFrame
        :func:`edgelr.report.history.baselines` output.
    spec : str
        ``last`` (the last run accepted as ``accepted``; else the previous run), a baseline name, or
        ``window:N`` (the N previous runs pooled).
    """
    name, n = parse_baseline(spec)
    have = frame[(frame["model"] == model) & (frame["device"] == device) & (frame["metric"] == metric)]
    order = have.drop_duplicates("run_id")[["run_id", "run_started"]]
    cur_start = frame.loc[frame["run_id"] == current_run, "run_started"]
    if len(cur_start):
        order = order[order["run_started"] < cur_start.iloc[0]]
    earlier = [r for r in order.sort_values("run_started")["run_id"] if r != current_run]
    if name == "window":
        runs_ = earlier[-n:]
        return runs_, f"window:{len(runs_)}"
    valid = set(earlier)
    named = accepted[accepted["name"] == name] if len(accepted) else accepted
    for rid in reversed(named["run_id"].tolist() if len(named) else []):
        if rid in valid:
            return [rid], f"{name}:{rid}"
    if name != "accepted":
        if not len(named):
            names = sorted(set(accepted["name"])) if len(accepted) else []
            raise HistoryError(f"no baseline named {name!r} in the history (names: {names or 'none'}); "
                               f"accept a run with --accept or pick last / window:N")
        return [], f"{name}:none"
    if earlier:
        return [earlier[-1]], f"previous:{earlier[-1]}"
    return [], "none"


def compare_run(frame: "pd.DataFrame", accepted: "pd.DataFrame", current_run: str,
                thresholds: dict[str, str], *, baseline: str = "last", alpha: float = DEFAULT_ALPHA,
                min_sessions: int = MIN_SESSIONS, ci_level: float = CI_LEVEL,
                effect_rule: Literal["ci", "point"] = "ci", locate: bool = True) -> "pd.DataFrame":
    """Compare every (model, device, metric) of ``current_run`` with its baseline.

    Parameters
    ----------
    frame : DataFrame
        The history (:func:`edgelr.report.history.load`), including ``current_run``.
    thresholds : dict
        Suite thresholds, e.g. ``{"latency": "5%", "energy": "8%", "accuracy": "0.5pt"}``.

    Returns
    -------
    DataFrame
        One row per comparison: run_id, baseline, model, device, metric, status, method, p_value,
        effect, ci_low, ci_high, threshold, n_current, n_baseline, current, baseline_value,
        change_run, note.
    """
    import pandas as pd

    if not 0 < alpha < 1:
        raise UsageError(f"--alpha {alpha}: expected a probability between 0 and 1, e.g. 0.01")
    parsed = {metric_of(k): parse_threshold(v, k) for k, v in thresholds.items()}
    cur = frame[frame["run_id"] == current_run]
    rows: list[dict[str, Any]] = []
    for (model, device), part in cur.groupby(["model", "device"], sort=True):
        for metric, thr in parsed.items():
            sessions = metric in SAMPLED_METRICS
            use = metric
            if sessions:
                cvals = session_values(part)["value"].to_numpy(float)
                present = len(cvals) > 0 or (part["metric"].isin([metric, *LATENCY_FALLBACKS])).any()
            else:
                cvals = _values(part, use)
                present = bool((part["metric"] == use).any())
            if not present:
                continue  # not measured in this run at all (e.g. no energy probe): nothing to compare
            base_runs, label = select_baseline(frame, accepted, current_run, baseline, model, device,
                                               SESSION_METRIC if sessions else use)
            if sessions and not base_runs:
                base_runs, label = select_baseline(frame, accepted, current_run, baseline, model, device, use)
            hib = metric in HIGHER_IS_BETTER
            if not len(cvals):
                v = Verdict("not-measured", "-", threshold=thr.text,
                            note=next((n for n in part.loc[part["metric"] == use, "note"] if n), "no value")
                            if "note" in part.columns else "no value")
            elif not base_runs:
                v = Verdict("no-baseline", "-", n_current=len(cvals), threshold=thr.text,
                            current=float(np.median(cvals)) if len(cvals) else math.nan,
                            note="no earlier run with this model, device and metric")
            else:
                bpart = frame[frame["run_id"].isin(base_runs) & (frame["model"] == model)
                              & (frame["device"] == device)]
                if sessions:
                    bvals = session_values(bpart)["value"].to_numpy(float)
                    v = compare_samples(cvals, bvals, thr, higher_is_better=hib, alpha=alpha,
                                        min_samples=min_sessions, ci_level=ci_level, effect_rule=effect_rule)
                    if v.method == "mann-whitney-u":
                        v.method = "mann-whitney-u (sessions)"
                        v.note = (f"{len(cvals)} vs {len(bvals)} session medians; runs at different times: "
                                  f"a suggestion until confirmed by a paired re-run")
                    elif v.method.startswith("threshold-only"):
                        v.method = f"threshold-only (sessions<{min_sessions})"
                        v.note = (f"only {len(cvals)} current / {len(bvals)} baseline session(s) (< {min_sessions}): "
                                  f"no significance test, compared medians by threshold. Use more --sessions")
                else:
                    bvals = _values(bpart, use)
                    v = compare_values(cvals, bvals, thr, higher_is_better=hib)
            change = locate_step(frame, model, device, use) if (locate and v.status == "regression") else None
            row = {"run_id": current_run, "baseline": label, "model": model, "device": device, "metric": use}
            d = v.as_dict()
            d["baseline_value"] = d.pop("baseline")
            row.update(d)
            row["change_run"] = change
            rows.append(row)
    cols = ["run_id", "baseline", "model", "device", "metric", "status", "method", "p_value", "effect", "ci_low",
            "ci_high", "threshold", "n_current", "n_baseline", "current", "baseline_value", "change_run", "note"]
    return pd.DataFrame(rows, columns=cols)


def session_values(part: "pd.DataFrame") -> "pd.DataFrame":
    """One latency value per session of ``part`` (rows of one model and device, one or more runs).

    The session's ``latency_median`` row; where it is missing or NaN, the median of the session's
    per-inference ``latency`` samples; else its ``latency_avg`` (tools that print only an average).

    Returns
    -------
    DataFrame
        Columns run_id, repeat, value (ms), ordered by run and session; one row per session measured.
    """
    import pandas as pd

    out: list[dict[str, Any]] = []
    keys = ["run_id", "repeat"]
    lat = part[part["metric"].isin([SESSION_METRIC, "latency", "latency_avg"])]
    for (run_id, rep), g in lat.groupby(keys, sort=True):
        value = math.nan
        for metric in (SESSION_METRIC, "latency", "latency_avg"):
            sel = g.loc[g["metric"] == metric, "value"].dropna()
            if metric == "latency":
                sel = g.loc[(g["metric"] == metric) & (g["sample"] >= 0), "value"].dropna()
            if len(sel):
                value = float(sel.median())
                break
        if math.isfinite(value):
            out.append({"run_id": run_id, "repeat": int(rep), "value": value})
    return pd.DataFrame(out, columns=["run_id", "repeat", "value"])


def paired_speedup(frame: "pd.DataFrame", model: str, reference: str, device: str | None = None
                   ) -> tuple[Verdict, dict[str, Any]]:
    """Speed-up of ``model`` over ``reference`` from their interleaved sessions in ``frame``.

    The one place that turns paired sessions into a speed-up (``bench``, the demo, the report): the
    paired verdict (:func:`compare_paired` at a 5 % threshold; the threshold only labels the status) and
    {speedup, low, high (95 %), blocks, text (:func:`format_speedup`), method}.
    """
    cur, ref = paired_sessions(frame, model, reference, device)
    v = compare_paired(cur, ref, parse_threshold("5%"))
    s, lo, hi = speedup(v)
    return v, {"speedup": s, "low": lo, "high": hi, "blocks": int(v.n_current), "text": format_speedup(v),
               "method": v.method}


def paired_sessions(frame: "pd.DataFrame", model: str, reference: str, device: str | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Session values of ``model`` and ``reference`` aligned by (run, block): shapes (n,), (n,).

    Only blocks where both models have a session count (an interleaved block is the pairing unit).
    """
    sel = frame if device is None else frame[frame["device"] == device]
    a = session_values(sel[sel["model"] == model]).set_index(["run_id", "repeat"])["value"]
    b = session_values(sel[sel["model"] == reference]).set_index(["run_id", "repeat"])["value"]
    both = a.index.intersection(b.index)
    return a.loc[both].to_numpy(float), b.loc[both].to_numpy(float)


def _values(part: "pd.DataFrame", metric: str) -> np.ndarray:
    sel = part[part["metric"] == metric]
    if metric in SAMPLED_METRICS:
        s = sel[sel["sample"] >= 0]
        sel = s if len(s) else sel
    vals = sel["value"].to_numpy(float)
    return vals[~np.isnan(vals)]
