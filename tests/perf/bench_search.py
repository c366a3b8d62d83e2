"""Benchmark: the rank search (``compress --max-accuracy-drop``) against the plain run (the target's policy).

Cases (each: the same trained model compressed twice, without a budget and with one, seed 0):

- ``fmnist``: a small Fashion-MNIST CNN (3 conv + 2 dense, Debian dataset-fashion-mnist; trained on
  ``--train-samples`` images), target rpi4, budget 1.0 point. The issue saw 6.08x with the budget while the
  plain run gave 9.74x within it.
- ``vowels``: JapaneseVowels (UEA, the ``.ts`` files in the sktime wheel, ``make perf-deps``) cut to 67
  training samples, of which 7 are the validation split (the issue's small time-series case), an LSTM(64)
  classifier, target host (method svd-recurrent), budget 2.0 points.

For each run: MACs / params reduction, int8 ``.tflite`` accuracy drop against the float original (test
split), whether the budget was met, the search's signal, inputs, candidates and trials in order.

Usage: .venv/bin/python tests/perf/bench_search.py [fmnist] [vowels] [--render-only]
Writes reports/search.json (merged per case) and reports/search.md (with the demo figures and the
hand-written ``notes`` kept in the .json).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
JSON = ROOT / "reports" / "search.json"
MD = ROOT / "reports" / "search.md"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(FMNIST / name) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def fmnist_case(train_samples: int, budget: float) -> dict[str, Any]:
    from edgelr.compress.attempt import deterministic
    from edgelr.data import Dataset
    from edgelr.tfcompat import keras2

    x = _idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    y = _idx("train-labels-idx1-ubyte.gz", 8).astype(np.int64)
    xt = _idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    yt = _idx("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    tr, val = order[:train_samples], order[train_samples:train_samples + 2000]
    data = Dataset("fashion-mnist (subset)", x[tr], y[tr], x[val], y[val], xt[:5000], yt[:5000], 10)
    k2 = keras2()
    with deterministic(0):
        inp = k2.Input((28, 28, 1))
        h = k2.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)
        h = k2.layers.MaxPooling2D()(h)
        h = k2.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(h)
        h = k2.layers.MaxPooling2D()(h)
        h = k2.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(h)
        h = k2.layers.GlobalAveragePooling2D()(h)
        h = k2.layers.Dense(128, activation="relu", name="fc1")(h)
        model = k2.Model(inp, k2.layers.Dense(10, activation="softmax", name="fc2")(h), name="fmnist_small")
        model.compile(k2.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=6, batch_size=64, verbose=0,
                  validation_data=(data.x_val, data.y_val))
    return _compare("fmnist", model, data, "rpi4", budget, dict(epochs=2, max_train=8000))


def vowels_case(budget: float) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_compress_lstm import LENGTH, read_ts, ts_dir

    from edgelr.compress.attempt import deterministic
    from edgelr.data import Dataset
    from edgelr.tfcompat import keras2

    x, y = read_ts(ts_dir() / "JapaneseVowels_TRAIN.ts")
    xt, yt = read_ts(ts_dir() / "JapaneseVowels_TEST.ts")
    order = np.random.default_rng(0).permutation(len(x))
    val, tr = order[:7], order[7:67]
    data = Dataset("JapaneseVowels (67 train: 60 + 7 validation)", x[tr], y[tr], x[val], y[val], xt, yt, 9)
    k2 = keras2()
    with deterministic(0):
        inp = k2.Input((LENGTH, 12))
        h = k2.layers.LSTM(64, name="lstm")(inp)
        model = k2.Model(inp, k2.layers.Dense(9, activation="softmax", name="head")(h), name="vowels_lstm")
        model.compile(k2.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=80, batch_size=16, verbose=0)
    return _compare("vowels", model, data, "host", budget,
                    dict(method="svd-recurrent", epochs=10, batch_size=16, learning_rate=1e-3))


def _compare(name: str, model: Any, data: Any, target: str, budget: float, opts: dict[str, Any]) -> dict[str, Any]:
    from edgelr.compress.pipeline import compress

    runs: dict[str, Any] = {"load_before": os.getloadavg()[0], "data": data.sizes(), "target": target,
                            "budget": budget, "options": opts}
    for label, extra in (("policy", {}), ("search", {"max_accuracy_drop": budget})):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = compress(model, data, target, Path(tmp) / "out", seed=0, **opts, **extra)
            secs = time.perf_counter() - t0
        s, search = res.summary, res.report.get("search")
        row = {"macs_x": s["reduction"]["macs_x"], "params_x": s["reduction"]["params_x"],
               "original_test": s["original"]["score"], "tflite_score": s["compressed"]["tflite_score"],
               "drop_points": s["drop_points"], "budget_met": s["budget_met"], "seconds": secs,
               "load": os.getloadavg()[0]}
        if search:
            row.update(signal=search["signal"], subset=search["subset"], subset_from_train=search["subset_from_train"],
                       candidates=len(search["candidates"]), chosen=search["chosen"],
                       trials=[{k: t[k] for k in ("label", "macs", "tflite_drop")} for t in search["trials"]],
                       policy_candidate=next(({k: c[k] for k in ("label", "macs_x", "val_drop", "tried", "tflite_drop")}
                                              for c in search["candidates"] if c.get("kind") == "policy"), None),
                       val_drops=sorted({round(c["val_drop"], 2) for c in search["candidates"]}))
        runs[label] = row
        print(f"{name} {label}: {json.dumps(row, default=str)}", file=sys.stderr, flush=True)
    return runs


def render(results: dict[str, Any]) -> None:
    md = ["# The rank search: the most compressed model within the budget", "",
          "Produced by `tests/perf/bench_search.py` (Fashion-MNIST, JapaneseVowels) and `edgelr demo` runs "
          "(figures copied into reports/search.json `demo`). Seed 0 everywhere; 2 shared cores, load given per run.", ""]
    demo = results.get("demo")
    if demo:
        md += ["## `edgelr demo` twice with the same seed", "", "| run | float accuracy | int8 tflite accuracy | "
               "MACs x | params x | budget met | load (1 min) | trials |", "|---|---|---|---|---|---|---|---|"]
        for r in demo["runs"]:
            md.append(f"| {r['run']} | {r['accuracy']:.2f} % | {r['tflite']:.2f} % | {r['macs_x']:.2f} | "
                      f"{r['params_x']:.2f} | {r['budget_met']} | {r['load']} | {r.get('trials', '')} |")
        md += ["", f"Command: `{demo['command']}`", ""]
    for case, title in (("fmnist", "Fashion-MNIST small CNN, rpi4, budget 1.0 point"),
                        ("vowels", "JapaneseVowels LSTM with 67 training samples (7 validation), budget 2.0 points")):
        r = results.get(case)
        if not r:
            continue
        md += [f"## {title}", "", f"Data {r['data']}, options {r['options']}.", "",
               "| run | MACs x | params x | int8 tflite | drop (points) | budget met | seconds | load |",
               "|---|---|---|---|---|---|---|---|"]
        for label in ("policy", "search"):
            x = r[label]
            md.append(f"| {label} | {x['macs_x']:.2f} | {x['params_x']:.2f} | {x['tflite_score']:.2f} | "
                      f"{x['drop_points']:.2f} | {x['budget_met']} | {x['seconds']:.0f} | {x['load']:.1f} |")
        s = r["search"]
        md += ["", f"Search: signal {s['signal']} on {s['subset']} inputs ({s['subset_from_train']} of them training "
               f"inputs), {s['candidates']} candidates, distinct signal values {len(s['val_drops'])}; policy candidate "
               f"{s['policy_candidate']}; trials in order: "
               + "; ".join(f"{t['label']} ({t['macs']} MACs, drop {t['tflite_drop']:.2f})" for t in s["trials"])
               + f"; chosen {s['chosen']}.", ""]
    if results.get("notes"):
        md += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    MD.write_text("\n".join(md))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", default=["fmnist", "vowels"])
    ap.add_argument("--train-samples", type=int, default=15000)
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    results = json.loads(JSON.read_text()) if JSON.exists() else {}
    if not args.render_only:
        for case in args.cases:
            row = fmnist_case(args.train_samples, 1.0) if case == "fmnist" else vowels_case(2.0)
            results = json.loads(JSON.read_text()) if JSON.exists() else {}  # another case may have run meanwhile
            results[case] = row
            JSON.write_text(json.dumps(results, indent=2, default=str))
    render(results)
    print(MD.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
