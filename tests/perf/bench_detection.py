"""Detection quality of edgelr's latency comparisons on REAL sessions of this machine, plus a simulation.

Real part. Three float32 CNN ``.tflite`` files (32x32x3 input, three 3x3 convs, 15 M MACs) are built
once with TensorFlow (in a subprocess): ``A`` and ``A2`` (the same model, two files: an unchanged model)
and ``B`` (the middle conv widened from 64 to 72 channels: +11.8 % MACs, so truly slower; its real ratio
is measured in the quiet interleaved run). An earlier version used a 512-1024-1024-1024 MLP (4 MB of
weights, memory-bound): its session medians scattered twice as much (sd of log 0.24-0.43) and a
10 % wider layer made it 17-30 % slower (cache effects), so it described neither a typical model nor a
10 % change. They are measured on the
``local`` device by :func:`edgelr.bench.run.benchmark` as ``--blocks`` interleaved blocks (each block:
one fresh benchmark process per model, random order), once quiet and once beside the load generator
(:func:`load_generator`: bursts of CPU spinning and of 64 MiB memory copies in 3 processes, alternating,
bounded in time, stopping by itself). From the pool of blocks, ``--comparisons`` comparisons of K
blocks (the default K of ``edgelr bench``/``regress``) are drawn without replacement inside each
comparison and decided by :func:`edgelr.report.stats.compare_paired` at the 5 % threshold:
A2 vs A gives the false-alarm rate, B vs A the power. Comparisons drawn from one pool share blocks,
so they are not independent: the rates are resampling estimates from a 40+ block pool.
The wall time of one regress comparison (K blocks of two models) is reported from the measured session
times.

Simulation part: session-level random effect (CV 3 % and 10 %) on top of within-session noise (CV 3 %),
paired design, 1,000 trials, K = default: false alarms and power for a 10 % slow-down.

Run:  .venv/bin/python tests/perf/bench_detection.py [--blocks 40] [--comparisons 400] [--no-load]
Writes reports/detection.md and prints the same table.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from types import SimpleNamespace

from edgelr.bench.run import DEFAULT_RUNS, DEFAULT_SESSIONS, BenchModel, BenchSettings, benchmark
from edgelr.report.stats import (DEFAULT_ALPHA, MIN_SESSIONS, compare_paired, compare_samples, min_detectable_change,
                                 paired_sessions, parse_threshold)

from edgelr.regress import confirm_blocks, suggests_change

THRESHOLD = "5%"
CONFIRM_SESSIONS = 40   # the suite default
ROOT = Path(__file__).resolve().parents[2]

_MAKE = """
import sys
from edgelr.tfcompat import tf, keras2
k = keras2()
k.utils.set_random_seed(0)
def build(mid, path):
    L = k.layers
    m = k.Sequential([L.Input((32, 32, 3), batch_size=1), L.Conv2D(32, 3, padding="same", activation="relu"),
                      L.Conv2D(mid, 3, strides=2, padding="same", activation="relu"),
                      L.Conv2D(64, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(), L.Dense(10)])
    open(path, "wb").write(tf().lite.TFLiteConverter.from_keras_model(m).convert())
build(64, sys.argv[1])
build(64, sys.argv[2])
build(72, sys.argv[3])   # the middle conv widened: 15.0 -> 16.8 M MACs (+11.8 %)
"""


def _burst_worker(until: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = np.ones(64 << 17)          # 64 MiB of float64
    b = np.empty_like(a)
    while time.time() < until:
        phase_end = time.time() + float(rng.uniform(0.2, 1.5))
        mode = rng.integers(0, 3)  # 0 idle, 1 CPU spin, 2 memory copy
        while time.time() < min(phase_end, until):
            if mode == 1:
                x = 0
                for i in range(20000):
                    x += i * i
            elif mode == 2:
                np.copyto(b, a)
            else:
                time.sleep(0.05)


def load_generator(seconds: float, procs: int = 3) -> list[mp.Process]:
    """Start ``procs`` processes alternating idle / CPU / memory-bandwidth bursts for ``seconds`` (then they end)."""
    until = time.time() + seconds
    ps = [mp.Process(target=_burst_worker, args=(until, i), daemon=True) for i in range(procs)]
    for p in ps:
        p.start()
    return ps


def measure(models: list[BenchModel], blocks: int, load: bool, runs: int = DEFAULT_RUNS) -> "tuple[object, float]":
    from device_agents.inventory import BUILTIN_LOCAL, open_transport

    settings = BenchSettings(runs=runs, sessions=blocks, warmup=5, threads=1, cooldown_timeout_s=5.0,
                             canary=False)
    gens = load_generator(blocks * len(models) * 3.0 + 60) if load else []
    t0 = time.monotonic()
    tr = open_transport(BUILTIN_LOCAL)
    try:
        frame = benchmark(BUILTIN_LOCAL, tr, models, settings,
                          progress=lambda m: print(m, file=sys.stderr) if "session" in m and " A:" in m else None)
    finally:
        tr.close()
        for g in gens:
            g.terminate()
    return frame, time.monotonic() - t0


def rates(frame: object, k: int, comparisons: int, rng: np.random.Generator) -> dict[str, float]:
    thr = parse_threshold(THRESHOLD)
    a2, a = paired_sessions(frame, "A2", "A")
    b, a_b = paired_sessions(frame, "B", "A")
    n = len(a)
    fa = hit = 0
    pipe: dict = {"fa": 0, "hit": 0, "fa_stage1": 0, "hit_stage1": 0, "m": 0, "blocks": []}
    suite = SimpleNamespace(sessions=k, confirm_sessions=CONFIRM_SESSIONS)
    for _ in range(comparisons):
        idx = rng.choice(n, size=k, replace=False)
        fa += compare_paired(a2[idx], a[idx], thr).status == "regression"
        hit += compare_paired(b[idx], a_b[idx], thr).status == "regression"
        if n >= 3 * k:   # the whole regress decision: stored baseline (other blocks), then the paired re-run
            pipe["m"] += 1
            order = rng.permutation(n)
            base, cur, rest = order[:k], order[k:2 * k], order[2 * k:]
            for key, x, y_conf, x_conf in (("fa", a2, a, a2), ("hit", b, a_b, b)):
                first = compare_samples(x[cur], a[base], thr, alpha=DEFAULT_ALPHA, min_samples=MIN_SESSIONS)
                if suggests_change(first.as_dict(), thr):
                    # the run's own noise estimate, as regress.noise_floors makes it
                    sd_run = math.sqrt(2.0) * float(np.sqrt((np.log(x[cur]).var(ddof=1) + np.log(a[base]).var(ddof=1)) / 2))
                    blocks = min(confirm_blocks({"sd_log_ratio": sd_run}, thr, suite, DEFAULT_ALPHA), len(rest))
                    pipe["blocks"].append(blocks)
                    conf = rest[:blocks]
                    v = compare_paired(x_conf[conf], y_conf[conf], thr)
                    pipe[f"{key}_stage1"] += first.status == "regression" or first.effect > 0
                    pipe[key] += v.status == "regression"
    d = np.log(a2) - np.log(a)
    whole_b = compare_paired(b, a_b, thr)
    med = a
    cv_sessions = 1.4826 * float(np.median(np.abs(med - np.median(med)))) / float(np.median(med))
    return {"false_alarm": fa / comparisons, "power": hit / comparisons, "blocks": n, "sd_log_ratio": float(d.std(ddof=1)),
            "session_cv": cv_sessions, "b_ratio": 1 + whole_b.effect, "b_low": 1 + whole_b.ci_low,
            "b_high": 1 + whole_b.ci_high, "median_ms": float(np.median(a)),
            "mdc": min_detectable_change(float(d.std(ddof=1)), k),
            "pipe_fa": pipe["fa"] / pipe["m"] if pipe["m"] else math.nan,
            "pipe_power": pipe["hit"] / pipe["m"] if pipe["m"] else math.nan,
            "stage1_fa": pipe["fa_stage1"] / pipe["m"] if pipe["m"] else math.nan,
            "stage1_power": pipe["hit_stage1"] / pipe["m"] if pipe["m"] else math.nan,
            "confirm_blocks": float(np.median(pipe["blocks"])) if pipe["blocks"] else math.nan,
            "confirm_rate": len(pipe["blocks"]) / (2 * pipe["m"]) if pipe["m"] else math.nan}


def simulate(k: int, trials: int, rng: np.random.Generator, cv_session: float, slowdown: float) -> tuple[float, float]:
    thr = parse_threshold(THRESHOLD)
    s_s = math.sqrt(math.log1p(cv_session ** 2))
    s_w = math.sqrt(math.log1p(0.03 ** 2))
    fa = hit = 0
    for _ in range(trials):
        drift = rng.normal(0, s_s, k)          # shared by both models of a block (interleaved)
        def side(f: float) -> np.ndarray:
            own = rng.normal(0, s_s / 2, k)    # the part of the session effect a model gets on its own
            return np.array([np.median(10 * f * np.exp(drift[i] + own[i] + rng.normal(0, s_w, DEFAULT_RUNS)))
                             for i in range(k)])
        a = side(1.0)
        fa += compare_paired(side(1.0), a, thr).status == "regression"
        hit += compare_paired(side(slowdown), a, thr).status == "regression"
    return fa / trials, hit / trials


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("--comparisons", type=int, default=400)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="timed inferences per session")
    ap.add_argument("--no-load", action="store_true", help="skip the run under load")
    ap.add_argument("--out", default=str(ROOT / "reports" / "detection.md"))
    ap.add_argument("--save-sessions", help="append the session medians (model, block, value) to this CSV")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    k = DEFAULT_SESSIONS
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{n}.tflite" for n in ("A", "A2", "B")]
        subprocess.run([sys.executable, "-c", _MAKE, *map(str, paths)], check=True, capture_output=True, timeout=600)
        models = [BenchModel(p.stem, p) for p in paths]
        results = {}
        for load in ([False] if args.no_load else [False, True]):
            frame, wall = measure(models, args.blocks, load, args.runs)
            if args.save_sessions:
                sessions = frame[frame["metric"] == "latency_median"][["model", "repeat", "value", "timestamp"]]
                sessions.assign(condition="load" if load else "quiet").to_csv(
                    args.save_sessions, mode="a", index=False, header=not Path(args.save_sessions).exists())
            r = rates(frame, k, args.comparisons, rng)
            r["wall_per_comparison_s"] = wall / args.blocks * k * 2 / 3   # K blocks of 2 models
            results["with load" if load else "quiet"] = r
    sim = {cv: simulate(k, args.trials, rng, cv, 1.10) for cv in (0.03, 0.10)}
    load1 = os.getloadavg()[0]
    lines = [
        "# Detection of latency changes on real sessions (tests/perf/bench_detection.py)",
        "",
        f"Machine: 2 cores, shared; load average at the end {load1:.2f}. Local device, LiteRT runner, 1 thread, "
        f"{args.runs} runs per session, K = {k} interleaved blocks per comparison, threshold {THRESHOLD}, "
        f"alpha {DEFAULT_ALPHA}, paired Wilcoxon signed-rank + Hodges-Lehmann interval (edgelr.report.stats).",
        f"Pool: {args.blocks} blocks of (A, A2, B) sessions per condition; {args.comparisons} comparisons of {k} "
        "blocks drawn from the pool (resampling estimate; comparisons share blocks).",
        "",
        "| condition | A median ms | between-session CV | sd of block log-ratio A2/A | min. detectable (K) | "
        "false alarms A2 vs A | B/A ratio (all blocks) [95 %] | power B vs A | wall s per comparison |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['median_ms']:.3f} | {100 * r['session_cv']:.1f} % | {r['sd_log_ratio']:.3f} | "
                     f"{100 * r['mdc']:.1f} % | {100 * r['false_alarm']:.1f} % | {r['b_ratio']:.3f} "
                     f"[{r['b_low']:.3f}, {r['b_high']:.3f}] | {100 * r['power']:.1f} % | "
                     f"{r['wall_per_comparison_s']:.1f} |")
    lines += ["", f"The whole regress decision (edgelr.regress): stage 1 compares K sessions of the current model "
              f"with K sessions of A from other blocks (the stored baseline; Mann-Whitney U on session medians); when "
              f"it suggests a change (`suggests_change`: flagged, or the point estimate at least half the threshold "
              f"away), stage 2 is the paired re-run on further blocks, as many as the run's noise estimate needs for "
              f"the threshold (`confirm_blocks`, K to {CONFIRM_SESSIONS}, bounded by the pool), and decides.", "",
              "| condition | re-runs per comparison | median re-run blocks | stage 1 points worse, A2 | false alarms | "
              "stage 1 points worse, B | power B |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['confirm_rate']:.0f} % | {r['confirm_blocks']:.0f} | "
                     f"{100 * r['stage1_fa']:.1f} % | {100 * r['pipe_fa']:.1f} % | "
                     f"{100 * r['stage1_power']:.1f} % | {100 * r['pipe_power']:.1f} % |")
    lines += ["", f"Simulation ({args.trials} trials, K = {k}, within-session CV 3 %, shared drift + own session "
              "effect, 10 % slow-down):", "", "| session CV | false alarms | power (10 %) |", "|---|---|---|"]
    for cv, (fa, pw) in sim.items():
        lines.append(f"| {100 * cv:.0f} % | {100 * fa:.1f} % | {100 * pw:.1f} % |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
