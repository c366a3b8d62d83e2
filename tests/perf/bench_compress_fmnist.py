"""Benchmark: `edgelr compress` on a Fashion-MNIST CNN at ~2x, 3x and 4x fewer MACs.

Trains a reference CNN (3 conv blocks + 2 dense layers) on Fashion-MNIST (Debian dataset-fashion-mnist),
then for each MAC-reduction target runs the compress pipeline (Tucker-2/SVD factorization at a per-layer
``macs:F`` policy, F chosen by bisection so the whole model hits the target; distillation fine-tune; QAT;
int8 full-integer TFLite) and measures: float accuracy of the original, after factorization, after
fine-tuning, int8 .tflite accuracy; params, MACs, .tflite sizes; host latency (ai-edge-litert, 1 thread,
XNNPACK, batch 1) of model.tflite vs baseline.tflite (the original, same int8 quantization).

Goals (issue 4): 2x -> int8 loses <= 0.3 pt vs the float original; 4x -> <= 1.0 pt; int8 compressed file
>= 8x smaller than the float32 original .tflite; latency speed-up >= 0.8x the MAC reduction.

Usage: .venv/bin/python tests/perf/bench_compress_fmnist.py [--epochs 4] [--ft-epochs 2] [--targets 2,3,4]
Writes reports/compress_fmnist.md and reports/compress_fmnist.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def reference_cnn(k2: Any) -> Any:
    inp = k2.Input((28, 28, 1))
    h = k2.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)
    h = k2.layers.MaxPooling2D()(h)
    h = k2.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(h)
    h = k2.layers.MaxPooling2D()(h)
    h = k2.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(h)
    h = k2.layers.MaxPooling2D()(h)
    h = k2.layers.Flatten()(h)
    h = k2.layers.Dense(256, activation="relu", name="fc1")(h)
    h = k2.layers.Dropout(0.3)(h)
    out = k2.layers.Dense(10, activation="softmax", name="fc2")(h)
    return k2.Model(inp, out, name="fmnist_cnn")


def policy_for(model: Any, target_x: float) -> tuple[str, float]:
    """A ``macs:F`` policy (bisection on F) whose whole-model MAC reduction is closest to ``target_x``."""
    from edgelr.rewrite import factorize_model
    from edgelr.rewrite.cost import model_cost

    macs0 = model_cost(model)[1]
    lo, hi = 0.02, 1.0
    best = ("macs:1", 1.0)
    best_err = float("inf")
    for _ in range(8):
        f = (lo + hi) / 2
        fact, _ = factorize_model(model, rank_policy=f"macs:{f:.4f}", target="host", min_reduction=0.1,
                                  progress=False)
        x = macs0 / model_cost(fact)[1]
        if abs(x - target_x) < best_err:
            best, best_err = (f"macs:{f:.4f}", x), abs(x - target_x)
        if x < target_x:
            hi = f
        else:
            lo = f
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4, help="training epochs of the reference CNN")
    ap.add_argument("--ft-epochs", type=int, default=2, help="distillation fine-tuning epochs")
    ap.add_argument("--max-train", type=int, default=30000, help="training samples per fine-tuning epoch")
    ap.add_argument("--targets", default="2,3,4", help="MAC reduction targets")
    ap.add_argument("--out", default=str(ROOT / "reports"))
    args = ap.parse_args()

    from edgelr.compress.convert import convert
    from edgelr.compress.pipeline import compress
    from edgelr.compress.validate import measure_latency
    from edgelr.data import load_data
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.utils.set_random_seed(0)
    data = load_data("fashion-mnist")
    model = reference_cnn(k2)
    model.compile(k2.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=128, verbose=2,
              validation_data=(data.x_val, data.y_val))
    train_s = time.perf_counter() - t0
    f32 = convert(model, "none")
    lat_f32 = measure_latency(f32.content, data.x_test[:32], num_threads=1, runs=200)
    rows: list[dict[str, Any]] = []
    for target_x in [float(v) for v in args.targets.split(",")]:
        policy, planned = policy_for(model, target_x)
        print(f"target {target_x}x: policy {policy} (planned {planned:.2f}x)", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            t1 = time.perf_counter()
            res = compress(model, data, "host", out, rank_policy=policy, epochs=args.ft_epochs,
                           max_train=args.max_train, batch_size=128, learning_rate=1e-3)
            secs = time.perf_counter() - t1
            lat_c = measure_latency((out / "model.tflite").read_bytes(), data.x_test[:32], num_threads=1, runs=200)
            lat_b = measure_latency((out / "baseline.tflite").read_bytes(), data.x_test[:32], num_threads=1,
                                    runs=200)
        s, r = res.summary, res.report
        rows.append({
            "target_x": target_x, "policy": policy, "macs_x": s["reduction"]["macs_x"],
            "params_x": s["reduction"]["params_x"],
            "acc_original_float": r["original"]["test"], "acc_factorized": r["factorized"]["test_before_finetune"],
            "acc_finetuned": r["factorized"]["test_after_finetune"], "acc_original_int8": s["original"]["tflite_score"],
            "acc_int8": s["compressed"]["tflite_score"], "drop_int8_vs_float": s["drop_points"],
            "int8_path": r["tflite"]["int8_path"].get("used"),
            "params": s["compressed"]["params"], "params_original": s["original"]["params"],
            "macs": s["compressed"]["macs"], "macs_original": s["original"]["macs"],
            "tflite_bytes": s["compressed"]["tflite_bytes"], "baseline_int8_bytes": s["original"]["tflite_bytes"],
            "float32_original_bytes": f32.size_bytes, "size_x_vs_float32": f32.size_bytes / s["compressed"]["tflite_bytes"],
            "latency_ms": lat_c["latency_median"], "baseline_latency_ms": lat_b["latency_median"],
            "speedup": lat_b["latency_median"] / lat_c["latency_median"], "seconds": secs,
        })
        print(json.dumps(rows[-1]), flush=True)
    goals = []
    for row in rows:
        g = {"target_x": row["target_x"],
             "size_ok": row["size_x_vs_float32"] >= 8.0,
             "speed_ok": row["speedup"] >= 0.8 * row["macs_x"]}
        if row["target_x"] <= 2.0:
            g["accuracy_ok"] = row["drop_int8_vs_float"] <= 0.3
        elif row["target_x"] >= 4.0:
            g["accuracy_ok"] = row["drop_int8_vs_float"] <= 1.0
        goals.append(g)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    meta = {"epochs": args.epochs, "ft_epochs": args.ft_epochs, "max_train": args.max_train, "train_seconds": train_s,
            "float32_latency_ms": lat_f32["latency_median"], "float32_bytes": f32.size_bytes}
    (outdir / "compress_fmnist.json").write_text(json.dumps({"meta": meta, "rows": rows, "goals": goals}, indent=2))
    md = ["# edgelr compress: Fashion-MNIST CNN at ~2x/3x/4x fewer MACs", "",
          f"Command: `.venv/bin/python tests/perf/bench_compress_fmnist.py --epochs {args.epochs} "
          f"--ft-epochs {args.ft_epochs} --max-train {args.max_train}` (host x86-64, 2 busy cores, target `host`: "
          "int8 full-integer with float I/O). Latency: ai-edge-litert, XNNPACK, 1 thread, batch 1, median of 200.",
          "", f"Reference CNN: {rows[0]['params_original']:,} params, {rows[0]['macs_original']:,} MACs, "
          f"trained {args.epochs} epochs ({train_s:.0f} s); float32 .tflite {f32.size_bytes:,} bytes, "
          f"{lat_f32['latency_median']:.3f} ms.", "",
          "| target | MACs x | params x | acc float orig | factorized | fine-tuned | int8 orig | int8 compressed | "
          "drop (pt) | int8 path | .tflite bytes | baseline int8 bytes | x vs float32 | latency ms | baseline ms | speed-up |",
          "|" + "---|" * 16]
    for row in rows:
        md.append(f"| {row['target_x']:g}x | {row['macs_x']:.2f} | {row['params_x']:.2f} | {row['acc_original_float']:.2f} | "
                  f"{row['acc_factorized']:.2f} | {row['acc_finetuned']:.2f} | {row['acc_original_int8']:.2f} | "
                  f"{row['acc_int8']:.2f} | {row['drop_int8_vs_float']:.2f} | {row['int8_path']} | "
                  f"{row['tflite_bytes']:,} | {row['baseline_int8_bytes']:,} | {row['size_x_vs_float32']:.1f} | "
                  f"{row['latency_ms']:.3f} | {row['baseline_latency_ms']:.3f} | {row['speedup']:.2f} |")
    md += ["", "Goals: " + "; ".join(
        f"{g['target_x']:g}x: " + ", ".join(f"{k[:-3]} {'met' if v else 'MISSED'}" for k, v in g.items()
                                            if k.endswith("_ok")) for g in goals), ""]
    (outdir / "compress_fmnist.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
