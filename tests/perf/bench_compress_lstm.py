"""Benchmark: `edgelr compress` on an LSTM classifier (JapaneseVowels) at ~2x and 3x fewer parameters.

Data: the UEA JapaneseVowels set shipped inside the sktime wheel (``pip install --no-deps sktime``; only the
``.ts`` files are read, sktime is not imported): 12 channels, lengths 7-29 (zero-padded at the front to 29),
9 speakers, 270 train / 370 test. Model: LSTM(128) -> Dense(9), trained here.
Compression: ``svd-recurrent`` (input kernel and recurrent kernel factorized, low-rank cell, unrolled for
full-integer int8), rank policy ``params:F`` with F chosen by bisection for the whole-model target.

Usage: .venv/bin/python tests/perf/bench_compress_lstm.py [--epochs 60] [--ft-epochs 20] [--targets 2,3]
Writes reports/compress_lstm.md and reports/compress_lstm.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _perfutil import bisect_policy

ROOT = Path(__file__).resolve().parents[2]
LENGTH = 29


def ts_dir() -> Path:
    spec = importlib.util.find_spec("sktime")
    if spec is None or spec.origin is None:
        raise SystemExit("sktime is not installed: run .venv/bin/pip install --no-deps sktime")
    return Path(spec.origin).parent / "datasets" / "data" / "JapaneseVowels"


def read_ts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a multivariate ``.ts`` file: returns x (n, LENGTH, dims) front-zero-padded and int labels (n,)."""
    xs, ys = [], []
    in_data = False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        series = np.array([[float(v) for v in d.split(",")] for d in dims], np.float32).T  # (T, dims)
        pad = np.zeros((LENGTH, series.shape[1]), np.float32)
        pad[LENGTH - len(series):] = series[-LENGTH:]
        xs.append(pad)
        ys.append(int(label) - 1)
    return np.stack(xs), np.asarray(ys, np.int64)


def load() -> Any:
    from edgelr.data import Dataset

    x, y = read_ts(ts_dir() / "JapaneseVowels_TRAIN.ts")
    xt, yt = read_ts(ts_dir() / "JapaneseVowels_TEST.ts")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    val, tr = order[:27], order[27:]
    return Dataset("JapaneseVowels", x[tr], y[tr], x[val], y[val], xt, yt, 9)


def build_lstm(k2: Any) -> Any:
    """The benchmark's LSTM(128) -> Dense(9) classifier for JapaneseVowels, compiled (untrained)."""
    inp = k2.Input((LENGTH, 12))
    h = k2.layers.LSTM(128, name="lstm")(inp)
    model = k2.Model(inp, k2.layers.Dense(9, activation="softmax", name="head")(h), name="vowels_lstm")
    model.compile(k2.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--ft-epochs", type=int, default=20)
    ap.add_argument("--targets", default="2,3")
    ap.add_argument("--policies", default=None,
                    help="explicit rank policies instead of --targets, e.g. rank:48,rank:24 (r_in clips at D=12, "
                         "so the input kernel stays whole and only the recurrent kernel is low-rank)")
    ap.add_argument("--name", default="compress_lstm", help="report file stem under reports/")
    ap.add_argument("--out", default=str(ROOT / "reports"))
    args = ap.parse_args()

    from edgelr.compress.convert import convert
    from edgelr.compress.pipeline import compress
    from edgelr.compress.validate import measure_latency
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.utils.set_random_seed(0)
    data = load()
    model = build_lstm(k2)
    t0 = time.perf_counter()
    model.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=32, verbose=0,
              validation_data=(data.x_val, data.y_val))
    train_s = time.perf_counter() - t0
    f32 = convert(model, "none")
    rows: list[dict[str, Any]] = []
    if args.policies:
        plan = [(0.0, p) for p in args.policies.split(",")]
    else:
        plan = [(float(v), "") for v in args.targets.split(",")]
    for target_x, policy in plan:
        if policy:
            planned = float("nan")
        else:
            policy, planned = bisect_policy(model, target_x, "params", steps=10, method="svd-recurrent",
                                            target="host")
        print(f"target {target_x}x params: policy {policy} (planned {planned:.2f}x)", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            t1 = time.perf_counter()
            res = compress(model, data, "host", out, method="svd-recurrent", rank_policy=policy,
                           epochs=args.ft_epochs, batch_size=32, learning_rate=1e-3)
            secs = time.perf_counter() - t1
            lat_c = measure_latency((out / "model.tflite").read_bytes(), data.x_test[:32], runs=100)
            lat_b = measure_latency((out / "baseline.tflite").read_bytes(), data.x_test[:32], runs=100)
        s, r = res.summary, res.report
        lstm_row = next(row for row in r["layers"] if row["layer"] == "lstm")
        rows.append({
            "target_x": target_x, "policy": policy, "ranks": lstm_row["ranks"], "params_x": s["reduction"]["params_x"],
            "macs_x": s["reduction"]["macs_x"], "acc_original_float": r["original"]["test"],
            "acc_factorized": r["factorized"]["test_before_finetune"],
            "acc_finetuned": r["factorized"]["test_after_finetune"],
            "acc_original_int8": s["original"]["tflite_score"], "acc_int8": s["compressed"]["tflite_score"],
            "drop_float": r["original"]["test"] - r["factorized"]["test_after_finetune"],
            "drop_int8_vs_float": s["drop_points"], "int8_path": r["tflite"]["int8_path"].get("used"),
            "qat_float_layers": r["qat"]["float"], "params": s["compressed"]["params"],
            "params_original": s["original"]["params"], "tflite_bytes": s["compressed"]["tflite_bytes"],
            "baseline_int8_bytes": s["original"]["tflite_bytes"], "float32_original_bytes": f32.size_bytes,
            "ops": r["tflite"]["validation"]["ops"]["ops"], "latency_ms": lat_c["latency_median"],
            "baseline_latency_ms": lat_b["latency_median"], "seconds": secs,
        })
        print(json.dumps(rows[-1]), flush=True)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    meta = {"epochs": args.epochs, "ft_epochs": args.ft_epochs, "train_seconds": train_s,
            "sktime": "installed with pip install --no-deps sktime (data files only)"}
    (outdir / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = ["# edgelr compress: LSTM on JapaneseVowels at ~2x/3x fewer parameters", "",
          f"Command: `.venv/bin/python tests/perf/bench_compress_lstm.py --epochs {args.epochs} --ft-epochs "
          f"{args.ft_epochs}" + (f" --policies {args.policies} --name {args.name}" if args.policies else "")
          + "` (host, target `host`: int8 full-integer, float I/O; method `svd-recurrent`: "
          "input and recurrent kernels factorized, low-rank cell unrolled over 29 steps for int8). "
          "Latency: ai-edge-litert, 1 thread, batch 1, median of 100.", "",
          f"Original: LSTM(128) -> Dense(9), {rows[0]['params_original']:,} params, float32 .tflite "
          f"{f32.size_bytes:,} bytes, trained {args.epochs} epochs ({train_s:.0f} s).", "",
          "| target / policy | ranks (in, rec) | params x | acc float orig | factorized | fine-tuned | int8 orig | int8 compressed | "
          "drop int8 vs float (pt) | .tflite bytes | baseline int8 bytes | latency ms | baseline ms |", "|" + "---|" * 13]
    for row in rows:
        label = f"{row['target_x']:g}x {row['policy']}" if row["target_x"] else row["policy"]
        md.append(f"| {label} | {row['ranks']} | {row['params_x']:.2f} | {row['acc_original_float']:.2f} | "
                  f"{row['acc_factorized']:.2f} | {row['acc_finetuned']:.2f} | {row['acc_original_int8']:.2f} | "
                  f"{row['acc_int8']:.2f} | {row['drop_int8_vs_float']:.2f} | {row['tflite_bytes']:,} | "
                  f"{row['baseline_int8_bytes']:,} | {row['latency_ms']:.3f} | {row['baseline_latency_ms']:.3f} |")
    md.append("")
    (outdir / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
