"""Per-layer latency profile of ResNet-50 factorized vs original (host, ai-edge-litert, XNNPACK).

Each factorizable layer of Keras' ResNet-50 (weights=None) is cut out as a one-layer model and compared
with its factorized replacement chain (same input shape), float32 and int8 (int8 I/O, so no
QUANTIZE/DEQUANTIZE is timed), at 1 and 2 threads. Layers with identical (input shape, config, ranks)
are timed once. Prints one JSON line per unique layer to stdout and a summary table to stderr.

Also fits ``time ~ a * (MACs + c * output elements)`` per configuration (least squares on relative
errors, the stem conv and the Dense excluded) - the ``output_cost`` of edgelr's latency estimate - and
writes a Markdown report with ``--out``.

Usage: .venv/bin/python tests/perf/profile_resnet50_layers.py [--policy params:0.25] [--target host]
       [--rank-multiple 16] [--runs 40] [--json out.json] [--out reports/resnet50_layer_profile.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
from _perfutil import chain_model, target_with_multiple


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
    ap.add_argument("--rank-multiple", type=int, default=None)
    ap.add_argument("--out", default=None, help="write a Markdown report here")
    args = ap.parse_args()

    from edgelr.compress.convert import convert
    from edgelr.rewrite import factorize_model
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.utils.set_random_seed(0)
    model = k2.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    target = target_with_multiple(args.target, args.rank_multiple)
    new, report = factorize_model(model, rank_policy=args.policy, target=target, method=args.method,
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
        a, b = chain_model(k2, model, [r.layer], batch_size=1), chain_model(k2, new, parts, batch_size=1)
        shape = tuple(lay.input_shape[1:])
        rep = np.random.default_rng(0).uniform(-1, 1, (8, *shape)).astype(np.float32)
        row: dict[str, Any] = {"layer": r.layer, "est_speedup": float(r.est_speedup),
                               "in": "x".join(map(str, shape)),
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
    if args.out:
        write_report(args, rows, report, model, new)
    return 0


def fit_output_cost(rows: list[dict[str, Any]], elements: dict[str, tuple[int, int]], col: str) -> tuple[float, float]:
    """Least-squares ``t = a * MACs + b * elements`` on relative errors over original and factorized
    rows (stem conv and Dense excluded); returns ``(b / a, mean |relative error| of the speed-ups)``."""
    xs, ys, keep = [], [], []
    for r in rows:
        if r["layer"] in ("conv1_conv", "predictions"):
            continue
        eb, ea = elements[r["layer"]]
        xs += [[r["macs_before"], eb], [r["macs_after"], ea]]
        ys += [r[col + "_orig_ms"], r[col + "_fact_ms"]]
        keep.append(r)
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    pred = x @ coef
    err = [abs((pred[2 * i] / pred[2 * i + 1]) / r[col + "_x"] - 1) for i, r in enumerate(keep)]
    return float(coef[1] / coef[0]), float(np.mean(err))


def write_report(args: Any, rows: list[dict[str, Any]], report: Any, model: Any, new: Any) -> None:
    from edgelr.rewrite.registry import get_rewriter

    elements = {}
    for r in rows:
        lay = model.get_layer(r["layer"])
        rw = get_rewriter(lay, r["method"])
        ranks = tuple(int(v) for v in r["ranks"].split("x"))
        elements[r["layer"]] = (rw.outputs(lay, None), rw.outputs(lay, ranks))
    cols = [f"{q}_{th}" for q in ("float32", "int8") for th in (1, 2)]
    cmd = (f".venv/bin/python tests/perf/profile_resnet50_layers.py --policy {args.policy}"
           + (f" --target {args.target}" if args.target else "")
           + (f" --rank-multiple {args.rank_multiple}" if args.rank_multiple else "") + f" --runs {args.runs}"
           + f" --out {args.out}")
    md = ["# ResNet-50: each factorized layer alone vs its replacement chain (host, ai-edge-litert, XNNPACK)", "",
          f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} shared cores). Batch 1, median of {args.runs} interleaved "
          "invokes; int8 with int8 I/O (no QUANTIZE/DEQUANTIZE timed). Layers with the same input shape, kernel, "
          "method and ranks are timed once (n = how many there are). Cells: speed-up of the chain over the "
          "layer; `est.` is edgelr's latency estimate (MACs + 16 x elements written, the int8 default).", "",
          "| layer | input | method | ranks | n | MACs x | est. | " + " | ".join(cols) + " |",
          "|---|---|---|---|---:|---:|---:|" + "---:|" * len(cols)]
    for r in rows:
        md.append(f"| {r['layer']} | {r['in']} | {r['method']} | {r['ranks']} | {r['count']} | {r['macs_x']:.2f} | "
                  f"{r['est_speedup']:.2f} | " + " | ".join(f"{r[c + '_x']:.2f}" for c in cols) + " |")
    mb = sum(r["macs_before"] * r["count"] for r in rows)
    ma = sum(r["macs_after"] * r["count"] for r in rows)
    md += ["", f"Sum over all factorized layers (each layer alone, times n): MACs x{mb / ma:.2f}.", "",
           "| configuration | original ms | factorized ms | speed-up | / MAC reduction | fitted output cost "
           "(MACs per element) | mean error of fitted speed-ups |", "|---|---:|---:|---:|---:|---:|---:|"]
    for c in cols:
        o = sum(r[c + "_orig_ms"] * r["count"] for r in rows)
        f = sum(r[c + "_fact_ms"] * r["count"] for r in rows)
        cost, err = fit_output_cost(rows, elements, c)
        md.append(f"| {c.replace('_', ', ')} thr | {o:.1f} | {f:.1f} | x{o / f:.2f} | {o / f / (mb / ma):.2f} | "
                  f"{cost:.1f} | {err:.0%} |")
    with open(args.out, "w") as fh:
        fh.write("\n".join(md) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
