"""Benchmark: `edgelr compress` on a compute-bound Fashion-MNIST CNN at ~2x, 3x and 4x fewer MACs.

Trains a reference CNN (5 conv layers in 3 blocks, 64-256 channels, + 2 dense layers; ~73 M MACs, ~2 ms per
float32 inference at 1 thread on an AVX2 host, so latency measures compute rather than per-invoke overhead)
on a subset of Fashion-MNIST (Debian dataset-fashion-mnist), then for each MAC-reduction target runs the
compress pipeline (Tucker-2/SVD factorization at a per-layer ``macs:F`` policy, F chosen by bisection so the
whole model hits the target; distillation fine-tune; QAT; int8 full-integer TFLite) and measures: float
accuracy of the original, after factorization, after fine-tuning, int8 .tflite accuracy; params, MACs,
.tflite sizes; host latency (ai-edge-litert, XNNPACK, 1 thread, batch 1) of model.tflite vs baseline.tflite
(the original, same int8 quantization) and of the float32 compressed vs float32 original.

Latency protocol: all .tflite files are timed after training, interleaved (round-robin over the files,
``--rounds`` rounds of ``--runs`` timed invokes each after a warm-up), and the median over all timed
invokes is reported; the 1-minute load average before and after the timing phase is recorded. A per-layer
profile (each factorized layer alone vs its replacement chain, float32 and int8) is timed for the last
target.

Goals (issue 4): 2x -> int8 loses <= 0.3 pt vs the float original; 4x -> <= 1.0 pt; int8 compressed file
>= 8x smaller than the float32 original .tflite; latency speed-up >= 0.8x the MAC reduction.

Usage: .venv/bin/python tests/perf/bench_compress_fmnist.py [--epochs 3] [--train-samples 15000]
       [--ft-epochs 2] [--max-train 8000] [--targets 2,3,4]
Writes reports/compress_fmnist.md and reports/compress_fmnist.json (~22 min on 2 shared cores);
``--render-only`` rewrites the .md from the .json (including a hand-written ``notes`` list kept there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _perfutil import bisect_policy, chain_model

ROOT = Path(__file__).resolve().parents[2]


def reference_cnn(k2: Any) -> Any:
    """The reference CNN: 28x28x1 -> 10 classes, ~1.13 M params, ~73 M MACs per example."""
    inp = k2.Input((28, 28, 1))
    h = k2.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)
    h = k2.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(h)
    h = k2.layers.MaxPooling2D()(h)
    h = k2.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(h)
    h = k2.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv4")(h)
    h = k2.layers.MaxPooling2D()(h)
    h = k2.layers.Conv2D(256, 3, padding="same", activation="relu", name="conv5")(h)
    h = k2.layers.MaxPooling2D()(h)
    h = k2.layers.Flatten()(h)
    h = k2.layers.Dense(256, activation="relu", name="fc1")(h)
    h = k2.layers.Dropout(0.3)(h)
    out = k2.layers.Dense(10, activation="softmax", name="fc2")(h)
    return k2.Model(inp, out, name="fmnist_cnn")


def time_interleaved(models: dict[str, bytes], x: np.ndarray, runs: int, rounds: int,
                     warmup: int = 50) -> dict[str, dict[str, float]]:
    """Median/min/p90 batch-1 latency (ms, 1 thread, XNNPACK) of each model, timed round-robin.

    Parameters
    ----------
    models : dict
        Name -> .tflite bytes.
    x : ndarray, shape (m, 28, 28, 1)
        Inputs cycled through.
    """
    from edgelr.compress.validate import _interpreter, _quantize

    its = {}
    for name, content in models.items():
        it = _interpreter(content, num_threads=1)
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]])
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        samples = [_quantize(np.asarray(x[i % len(x)][None], np.float32), inp) for i in range(32)]
        for i in range(warmup):
            it.set_tensor(inp["index"], samples[i % 32])
            it.invoke()
        its[name] = (it, inp["index"], samples)
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(rounds):
        for name, (it, idx, samples) in its.items():
            for i in range(runs):
                it.set_tensor(idx, samples[i % 32])
                t0 = time.perf_counter()
                it.invoke()
                times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, t in times.items():
        arr = np.asarray(t)
        out[name] = {"median": float(np.median(arr)), "min": float(arr.min()),
                     "p90": float(np.percentile(arr, 90)), "n": int(arr.size)}
    return out


def per_layer_profile(original: Any, factorized: Any, layers: Any, rep: np.ndarray) -> list[dict[str, Any]]:
    """Latency (ms, median of 300) of each factorized layer alone vs its replacement chain, float32 and int8."""
    from edgelr.compress.convert import convert
    from edgelr.compress.validate import measure_latency
    from edgelr.tfcompat import keras2

    k2 = keras2()

    rows = []
    rng = np.random.default_rng(0)
    for _, r in layers.iterrows():
        if r["skipped"]:
            continue
        parts = [lay.name for lay in factorized.layers if lay.name.startswith(r["layer"] + "/")]
        a, b = chain_model(k2, original, [r["layer"]]), chain_model(k2, factorized, parts)
        shape = tuple(a.input_shape[1:])
        xs = rng.random((64, *shape), dtype=np.float32)
        row: dict[str, Any] = {"layer": r["layer"], "ranks": str(r["ranks"]), "nodes": len(parts),
                               "macs_x": r["macs_before"] / max(r["macs_after"], 1)}
        for q in ("float32", "int8"):
            ca = convert(a, "none" if q == "float32" else "int8", representative=xs).content
            cb = convert(b, "none" if q == "float32" else "int8", representative=xs).content
            ta = measure_latency(ca, xs[:32], runs=300, warmup=30)["latency_median"]
            tb = measure_latency(cb, xs[:32], runs=300, warmup=30)["latency_median"]
            row[f"{q}_ms"], row[f"{q}_factorized_ms"], row[f"{q}_speedup"] = ta, tb, ta / tb
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def render_markdown(doc: dict[str, Any]) -> str:
    """The report (markdown) of a benchmark result document (the .json this script writes)."""
    meta, rows, goals, profile = doc["meta"], doc["rows"], doc["goals"], doc["per_layer_profile"]
    lat = meta["latency"]
    base, base32 = lat["int8 baseline"]["median"], lat["float32 original"]["median"]
    load_before, load_after = meta["loadavg_before_timing"], meta["loadavg_after_timing"]
    p0, m0, runs, rounds = meta["params"], meta["macs"], meta["runs"], meta["rounds"]
    md = ["# edgelr compress: Fashion-MNIST CNN at ~2x/3x/4x fewer MACs", "",
          f"Command: `{meta['command']}` ({meta['date_utc']}; x86-64 AVX2 host, {meta['cpu_count']} cores shared with other jobs, "
          f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after the timing phase; target `host`: "
          "int8 full-integer with float I/O).", "",
          f"Ranks rounded up to multiples of {meta.get('rank_multiple', 8)} (target `host` on this machine); "
          f"per-layer policy overrides: {meta.get('layer_policies') or 'none'} (the `macs:F` bisection applies to "
          "every other layer).", "",
          f"Latency: ai-edge-litert, XNNPACK, 1 thread, batch 1; all files timed round-robin, {rounds} rounds x "
          f"{runs} invokes after 50 warm-up invokes; median over all {rounds * runs} invokes.", "",
          f"Reference CNN: {p0:,} params, {m0:,} MACs, trained {meta['epochs']} epochs on {meta['train_samples']:,} "
          f"samples ({meta['train_seconds']:.0f} s); float32 .tflite {meta['float32_bytes']:,} bytes, {base32:.3f} ms; int8 baseline "
          f"{base:.3f} ms.", "",
          "| target | policy | MACs x | params x | acc float orig | factorized | fine-tuned | int8 orig | "
          "int8 compressed | drop (pt) | int8 path | .tflite bytes | baseline int8 bytes | x vs float32 | "
          "int8 ms | baseline int8 ms | speed-up int8 | float32 ms | speed-up float32 |",
          "|" + "---|" * 19]
    for row in rows:
        md.append(f"| {row['target_x']:g}x | {row['policy']} | {row['macs_x']:.2f} | {row['params_x']:.2f} | "
                  f"{row['acc_original_float']:.2f} | {row['acc_factorized']:.2f} | {row['acc_finetuned']:.2f} | "
                  f"{row['acc_original_int8']:.2f} | {row['acc_int8']:.2f} | {row['drop_int8_vs_float']:.2f} | "
                  f"{row['int8_path']} | {row['tflite_bytes']:,} | {row['baseline_int8_bytes']:,} | "
                  f"{row['size_x_vs_float32']:.2f} | {row['latency_ms']:.3f} | {row['baseline_latency_ms']:.3f} | "
                  f"{row['speedup']:.2f} | {row['float32_latency_ms']:.3f} | {row['float32_speedup']:.2f} |")
    md += ["", "Goals: " + "; ".join(
        f"{g['target_x']:g}x: " + ", ".join(f"{k[:-3]} {'met' if v else 'MISSED'}" for k, v in g.items()
                                            if k.endswith("_ok")) for g in goals), "",
           "Ranks: " + "; ".join(f"{row['target_x']:g}x {row['ranks']}" for row in rows), ""]
    if profile:
        md += [f"Per-layer profile at the {rows[-1]['target_x']:g}x ranks (each layer alone vs its replacement "
               "chain, median of 300 invokes):", "",
               "| layer | ranks | nodes | MACs x | float32 ms | factorized | speed-up | int8 ms | factorized | "
               "speed-up |", "|" + "---|" * 10]
        for p in profile:
            md.append(f"| {p['layer']} | {p['ranks']} | {p['nodes']} | {p['macs_x']:.2f} | {p['float32_ms']:.4f} | "
                      f"{p['float32_factorized_ms']:.4f} | {p['float32_speedup']:.2f} | {p['int8_ms']:.4f} | "
                      f"{p['int8_factorized_ms']:.4f} | {p['int8_speedup']:.2f} |")
        md += ["", "Per-layer int8 times include a QUANTIZE of the layer's input and a DEQUANTIZE of its output "
               "(float I/O), which the whole model does only once; they overstate int8 layer times.", ""]
    notes = doc.get("notes")
    if notes:
        md += ["## Notes", "", *notes, ""]
    return "\n".join(md)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the reference CNN")
    ap.add_argument("--train-samples", type=int, default=15000, help="training subset (first N of the split)")
    ap.add_argument("--ft-epochs", type=int, default=2, help="distillation fine-tuning epochs")
    ap.add_argument("--max-train", type=int, default=8000, help="training samples per fine-tuning epoch")
    ap.add_argument("--targets", default="2,3,4", help="MAC reduction targets")
    ap.add_argument("--runs", type=int, default=300, help="timed invokes per model per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--layer-policy", action="append", default=[], metavar="PATTERN=POLICY",
                    help="per-layer rank policy override, as `edgelr compress --layer-policy` (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "reports"))
    ap.add_argument("--render-only", action="store_true",
                    help="only rewrite compress_fmnist.md from the existing compress_fmnist.json (incl. its notes)")
    args = ap.parse_args()
    if args.render_only:
        doc = json.loads((Path(args.out) / "compress_fmnist.json").read_text())
        (Path(args.out) / "compress_fmnist.md").write_text(render_markdown(doc))
        return 0

    from edgelr.cli.compress import parse_layer_policies
    from edgelr.compress.convert import convert
    from edgelr.compress.pipeline import compress
    from edgelr.data import load_data
    from edgelr.rewrite.cost import model_cost
    from edgelr.targets import get_target
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.utils.set_random_seed(0)
    layer_policies = parse_layer_policies(args.layer_policy)
    load_start = os.getloadavg()
    data = load_data("fashion-mnist").subset(train=args.train_samples)
    model = reference_cnn(k2)
    model.compile(k2.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=128, verbose=2,
              validation_data=(data.x_val, data.y_val))
    train_s = time.perf_counter() - t0
    f32 = convert(model, "none")
    contents: dict[str, bytes] = {"float32 original": f32.content}
    rows: list[dict[str, Any]] = []
    cache: dict[float, float] = {}
    last: tuple[Any, Any] | None = None
    for target_x in [float(v) for v in args.targets.split(",")]:
        policy, planned = bisect_policy(model, target_x, "macs", cache=cache, target="host", min_reduction=0.1,
                                        layer_policies=layer_policies)
        print(f"target {target_x}x: policy {policy} (planned {planned:.2f}x)", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            t1 = time.perf_counter()
            res = compress(model, data, "host", out, rank_policy=policy, epochs=args.ft_epochs,
                           max_train=args.max_train, batch_size=128, learning_rate=1e-3,
                           layer_policies=layer_policies)
            secs = time.perf_counter() - t1
            contents[f"{target_x:g}x int8"] = (out / "model.tflite").read_bytes()
            contents["int8 baseline"] = (out / "baseline.tflite").read_bytes()
        contents[f"{target_x:g}x float32"] = convert(res.model, "none").content
        last = (res.model, res.layers)
        s, r = res.summary, res.report
        layers = res.layers
        rows.append({
            "target_x": target_x, "policy": policy, "macs_x": s["reduction"]["macs_x"],
            "params_x": s["reduction"]["params_x"],
            "ranks": {str(lr["layer"]): str(lr["ranks"]) for _, lr in layers.iterrows()
                      if "ranks" in layers.columns and not lr.get("skipped", False)},
            "acc_original_float": r["original"]["test"], "acc_factorized": r["factorized"]["test_before_finetune"],
            "acc_finetuned": r["factorized"]["test_after_finetune"], "acc_original_int8": s["original"]["tflite_score"],
            "acc_int8": s["compressed"]["tflite_score"], "drop_int8_vs_float": s["drop_points"],
            "int8_path": r["tflite"]["int8_path"].get("used"),
            "params": s["compressed"]["params"], "params_original": s["original"]["params"],
            "macs": s["compressed"]["macs"], "macs_original": s["original"]["macs"],
            "tflite_bytes": s["compressed"]["tflite_bytes"], "baseline_int8_bytes": s["original"]["tflite_bytes"],
            "float32_original_bytes": f32.size_bytes,
            "size_x_vs_float32": f32.size_bytes / s["compressed"]["tflite_bytes"], "seconds": secs,
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    # latency: everything timed together, interleaved, after the training/conversion work is done
    load_before = os.getloadavg()
    lat = time_interleaved(contents, data.x_test[:32], args.runs, args.rounds)
    load_after = os.getloadavg()
    base, base32 = lat["int8 baseline"]["median"], lat["float32 original"]["median"]
    for row in rows:
        t = f"{row['target_x']:g}x"
        row.update({"latency_ms": lat[f"{t} int8"]["median"], "baseline_latency_ms": base,
                    "speedup": base / lat[f"{t} int8"]["median"],
                    "float32_latency_ms": lat[f"{t} float32"]["median"], "float32_original_latency_ms": base32,
                    "float32_speedup": base32 / lat[f"{t} float32"]["median"]})
    profile: list[dict[str, Any]] = []
    if last is not None:
        rng = np.random.default_rng(0)
        profile = per_layer_profile(model, last[0], last[1], data.x_train[rng.choice(len(data.x_train), 64)])
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
    p0, m0 = model_cost(model)
    meta = {"layer_policies": layer_policies or {}, "rank_multiple": get_target("host").rank_multiple,
            "epochs": args.epochs, "train_samples": args.train_samples, "ft_epochs": args.ft_epochs,
            "max_train": args.max_train, "train_seconds": train_s, "params": p0, "macs": m0,
            "float32_bytes": f32.size_bytes, "latency": lat, "runs": args.runs, "rounds": args.rounds,
            "loadavg_start": load_start, "loadavg_before_timing": load_before, "loadavg_after_timing": load_after,
            "host": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    meta["command"] = (f".venv/bin/python tests/perf/bench_compress_fmnist.py --epochs {args.epochs} --train-samples "
                       f"{args.train_samples} --ft-epochs {args.ft_epochs} --max-train {args.max_train} --targets "
                       f"{args.targets} --runs {args.runs} --rounds {args.rounds}"
                       + "".join(f" --layer-policy {item}" for item in args.layer_policy))
    doc = {"meta": meta, "rows": rows, "goals": goals, "per_layer_profile": profile}
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "compress_fmnist.json").write_text(json.dumps(doc, indent=2))
    md = render_markdown(doc)
    (outdir / "compress_fmnist.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
