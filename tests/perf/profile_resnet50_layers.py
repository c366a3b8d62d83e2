"""Per-layer latency profile of ResNet-50 factorized vs original (host, ai-edge-litert, XNNPACK).

Each factorizable layer of Keras' ResNet-50 (weights=None) is cut out as a one-layer model and compared
with its factorized replacement chain (same input shape), float32 and int8 (int8 I/O, so no
QUANTIZE/DEQUANTIZE is timed), at 1 and 2 threads. Layers with identical (input shape, config, ranks)
are timed once. Prints one JSON line per unique layer to stdout and a summary table to stderr.

Usage: .venv/bin/python tests/perf/profile_resnet50_layers.py [--policy params:0.25] [--target rpi4]
       [--runs 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np


def sub_model(k2: Any, model: Any, names: list[str]) -> Any:
    shape = tuple(model.get_layer(names[0]).input_shape[1:])
    inp = k2.Input(shape, batch_size=1)
    h = inp
    for n in names:
        src = model.get_layer(n)
        new = src.__class__.from_config(src.get_config())
        h = new(h)
        new.set_weights(src.get_weights())
    return k2.Model(inp, h)


def time_pair(contents: dict[str, bytes], threads: int, runs: int) -> dict[str, float]:
    from ai_edge_litert.interpreter import Interpreter

    its = {}
    for name, c in contents.items():
        it = Interpreter(model_content=c, num_threads=threads)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        x = np.random.default_rng(0).uniform(-1, 1, d["shape"]).astype(np.float32)
        if d["dtype"] != np.float32:
            x = np.clip(np.round(x / 0.01), -128, 127).astype(d["dtype"])
        it.set_tensor(d["index"], x)
        for _ in range(3):
            it.invoke()
        its[name] = it
    times: dict[str, list[float]] = {n: [] for n in its}
    for _ in range(runs):
        for n, it in its.items():
            t0 = time.perf_counter()
            it.invoke()
            times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(t)) * 1e3 for n, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="params:0.25")
    ap.add_argument("--target", default=None)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--json", default=None)
    ap.add_argument("--method", default=None)
    args = ap.parse_args()

    from edgelr.compress.convert import convert
    from edgelr.rewrite import factorize_model
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.utils.set_random_seed(0)
    model = k2.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    new, report = factorize_model(model, rank_policy=args.policy, target=args.target, method=args.method,
                                  progress=False)
    seen: dict[tuple, dict[str, Any]] = {}
    rows = []
    for r in report.itertuples():
        if r.skipped:
            continue
        lay = model.get_layer(r.layer)
        key = (tuple(lay.input_shape[1:]), tuple(lay.kernel.shape.as_list()), tuple(lay.strides) if hasattr(lay, "strides") else (),
               r.method, tuple(r.ranks))
        if key in seen:
            seen[key]["count"] += 1
            continue
        parts = [lay2.name for lay2 in new.layers if lay2.name.startswith(r.layer + "/")]
        a, b = sub_model(k2, model, [r.layer]), sub_model(k2, new, parts)
        shape = tuple(lay.input_shape[1:])
        rep = np.random.default_rng(0).uniform(-1, 1, (8, *shape)).astype(np.float32)
        row: dict[str, Any] = {"layer": r.layer, "in": "x".join(map(str, shape)),
                               "kernel": "x".join(map(str, lay.kernel.shape.as_list())), "method": r.method,
                               "ranks": "x".join(map(str, r.ranks)), "nodes": len(parts), "count": 1,
                               "macs_before": int(r.macs_before), "macs_after": int(r.macs_after),
                               "macs_x": r.macs_before / r.macs_after}
        for q in ("float32", "int8"):
            kw = {"io_dtype": "int8", "representative": rep} if q == "int8" else {}
            ca = convert(a, "int8" if q == "int8" else "none", **kw).content
            cb = convert(b, "int8" if q == "int8" else "none", **kw).content
            for th in (1, 2):
                t = time_pair({"a": ca, "b": cb}, th, args.runs)
                row[f"{q}_{th}_orig_ms"], row[f"{q}_{th}_fact_ms"] = t["a"], t["b"]
                row[f"{q}_{th}_x"] = t["a"] / t["b"]
        seen[key] = row
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = [f"{q}_{th}" for q in ("float32", "int8") for th in (1, 2)]
    print(f"{'layer':24s} {'in':>12s} {'method':7s} {'ranks':>7s} n  MACx  " + " ".join(f"{c:>16s}" for c in cols),
          file=sys.stderr)
    for row in rows:
        print(f"{row['layer']:24s} {row['in']:>12s} {row['method']:7s} {row['ranks']:>7s} {row['count']} "
              f"{row['macs_x']:5.2f} " + " ".join(
                  f"{row[c + '_orig_ms'] * row['count']:6.2f}/{row[c + '_x']:4.2f}x  " for c in cols), file=sys.stderr)
    for c in cols:
        o = sum(row[c + "_orig_ms"] * row["count"] for row in rows)
        f = sum(row[c + "_fact_ms"] * row["count"] for row in rows)
        print(f"sum {c}: original {o:.1f} ms, factorized {f:.1f} ms, x{o / f:.2f}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
