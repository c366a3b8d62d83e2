"""Detection quality of edgelr's regression rule on simulated device noise.

Model of a device: per-run latency log-normal with a coefficient of variation of 3% (10 ms median).
A "5% slow-down" multiplies every current-side sample by 1.05. For each number of runs per side we draw
1,000 independent baseline/current pairs with the slow-down (power = fraction flagged as a regression)
and 1,000 pairs from the same distribution (false-alarm rate = fraction flagged), through
:func:`edgelr.report.stats.compare_samples` with the defaults `edgelr regress` uses (DEFAULT_ALPHA,
MIN_SAMPLES, threshold "5%", effect rule "ci"); the "point" effect rule is measured for comparison.

Goals (issue 7): power >= 95% and false alarms <= 1% at 20 runs per side.

Run:  .venv/bin/python tests/perf/bench_detection.py [--trials 1000] [--seed 0]
Writes reports/detection.md and prints the same table.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from edgelr.report.stats import DEFAULT_ALPHA, MIN_SAMPLES, compare_samples, parse_threshold

CV = 0.03
SLOWDOWN = 1.05
POWER_GOAL = 0.95
FA_GOAL = 0.01


def rates(n: int, trials: int, rng: np.random.Generator, rule: str, alpha: float,
          slowdown: float = SLOWDOWN) -> tuple[float, float, float]:
    """(power, false-alarm rate, false alarms of the U test alone) for ``n`` runs per side."""
    sigma = math.sqrt(math.log1p(CV ** 2))
    thr = parse_threshold("5%", "latency")
    hits = alarms = u_alarms = 0
    for _ in range(trials):
        base = 10.0 * rng.lognormal(0.0, sigma, n)
        slow = 10.0 * slowdown * rng.lognormal(0.0, sigma, n)
        same = 10.0 * rng.lognormal(0.0, sigma, n)
        hits += compare_samples(slow, base, thr, alpha=alpha, effect_rule=rule).status == "regression"
        v = compare_samples(same, base, thr, alpha=alpha, effect_rule=rule)
        alarms += v.status == "regression"
        u_alarms += v.status != "improvement" and v.p_value < alpha
    return hits / trials, alarms / trials, u_alarms / trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "reports" / "detection.md"))
    args = ap.parse_args()
    t0 = time.time()
    ns = [MIN_SAMPLES, 10, 12, 14, 16, 18, 20, 25, 30]
    lines = ["| rule | alpha | runs per side | power (5% slow-down) | false alarms | false alarms of U test alone "
             "| meets both goals |",
             "|---|---|---|---|---|---|---|"]
    smallest: dict[tuple[str, float], int | None] = {}
    at20: dict[tuple[str, float], tuple[float, float]] = {}
    configs = [("ci", DEFAULT_ALPHA, ns), ("point", DEFAULT_ALPHA, [20]), ("ci", 0.05, [12, 20]), ("ci", 0.002, [20])]
    for rule, alpha, n_list in configs:
        smallest[(rule, alpha)] = None
        for n in n_list:
            rng = np.random.default_rng(args.seed + 1000 * n)
            p, fa, ufa = rates(n, args.trials, rng, rule, alpha)
            ok = p >= POWER_GOAL and fa <= FA_GOAL
            if ok and smallest[(rule, alpha)] is None:
                smallest[(rule, alpha)] = n
            if n == 20:
                at20[(rule, alpha)] = (p, fa)
            default = " (default)" if (rule, alpha) == ("ci", DEFAULT_ALPHA) else ""
            lines.append(f"| {rule}{default} | {alpha} | {n} | {p:.1%} | {fa:.1%} | {ufa:.1%} | {'yes' if ok else 'no'} |")
            print(lines[-1], flush=True)
    sub = []
    for small in (1.02, 1.03):   # changes below the threshold: how often the default rule still flags them
        q, _, _ = rates(20, args.trials, np.random.default_rng(args.seed + 7), "ci", DEFAULT_ALPHA, small)
        sub.append(f"- {small - 1:.0%} slow-down (below the 5% threshold), 20 runs per side: flagged in {q:.1%}")
        print(sub[-1], flush=True)
    p20, fa20 = at20[("ci", DEFAULT_ALPHA)]
    n_min = smallest[("ci", DEFAULT_ALPHA)]
    summary = (f"Default rule (one-sided Mann-Whitney U, alpha={DEFAULT_ALPHA}, effect CI reaching 5%, "
               f"min {MIN_SAMPLES} samples), 20 runs per side: power {p20:.1%} (goal >= {POWER_GOAL:.0%}), "
               f"false alarms {fa20:.1%} (goal <= {FA_GOAL:.0%}). Smallest runs per side meeting both "
               f"(of {ns}): {n_min}. Below {MIN_SAMPLES} runs edgelr does not test (threshold only).")
    text = "\n".join([
        "# Regression detection on simulated device noise",
        "",
        f"Per-run latency log-normal, CV {CV:.0%}; slow-down x{SLOWDOWN}; {args.trials} comparisons per cell "
        f"and side (seed {args.seed}); threshold \"5%\". Produced by `.venv/bin/python tests/perf/bench_detection.py` "
        f"in {time.time() - t0:.0f} s.",
        "",
        summary,
        "",
        "Rules: `ci` = regression when p < alpha and the upper end of the 95% Hodges-Lehmann interval of the "
        "ratio reaches the threshold (edgelr's default); `point` = p < alpha and the point estimate reaches it.",
        "",
        *lines,
        "",
        "Changes smaller than the threshold (the grey zone the effect gate trades off):",
        "",
        *sub,
        "",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(summary)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
