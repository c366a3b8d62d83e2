"""Benchmark: latency tables measured on the device (``edgelr profile``) vs the MAC-driven plan.

For each model (the Fashion-MNIST reference CNN of bench_compress_fmnist.py, trained briefly here; ResNet-50
from keras.applications with weights=None, not trained) and each thread count, on the ``local`` device
(target ``host``, int8 full-integer, XNNPACK):

1. **Profile**: :func:`edgelr.profile.profile_model` builds the per-layer table (micro-models of each layer
   and of its chains over the rank grid, K sessions each) and measures the whole model; wall time recorded
   (the converted micro-models are reused across thread counts; the first thread count pays the conversions).
2. **Plans at the same budget**: the rank policy (``--policy``) sets the budget. ``MAC-driven``: every layer
   at the policy's ranks (``allocate="layer"``). ``estimate-driven``: the model-wide allocation on the MAC +
   output-cost estimate (``allocate="latency"``, no device). ``table-driven``: the same allocation on the
   measured table (``latency_table``). Both allocations keep the policy's total parameters and total weight
   loss (``-log`` kept spectral energy), the accuracy proxy; the Fashion-MNIST models are also scored
   (int8 ``.tflite`` top-1 on the test split, before any fine-tuning, the same way for every plan).
3. **Measured**: the original and the three plans as int8 ``.tflite``, interleaved in randomized blocks
   (``edgelr.bench.run.benchmark``, K sessions of N inferences), speed-ups over the original from the
   per-block ratios (Wilcoxon / Hodges-Lehmann 95 % interval, ``edgelr.report.stats.paired_speedup``).
4. **Prediction check**: the table's predicted latency of each factorized model (measured whole model +
   the table's ``context_scale`` x (entries at the plan's ranks - entries as is),
   :func:`edgelr.rewrite.allocate.model_latency`; the scale comes from the probe model measured with the
   table) vs its measured median of session medians; also without the scale (1.0) and two variants.

Usage: .venv/bin/python tests/perf/bench_latency_tables.py [--models fmnist,resnet50] [--threads 1,2]
       [--sessions 10] [--profile-sessions 5] [--cache /tmp/edgelr-latency.sqlite]
Writes reports/latency_tables.md and reports/latency_tables.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _perfutil import write_report  # noqa: E402
from bench_compress_fmnist import reference_cnn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
POLICY = {"fmnist": "macs:0.33", "resnet50": "params:0.25"}


def log(msg: str) -> None:
    print(f"[latency_tables] {msg}", file=sys.stderr, flush=True)


def build(name: str, k2: Any, train_samples: int, epochs: int) -> tuple[Any, Any]:
    """(model, data or None)."""
    if name == "fmnist":
        from edgelr.data import load_data

        data = load_data("fashion-mnist").subset(train=train_samples)
        model = reference_cnn(k2)
        model.compile(k2.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=128, verbose=0)
        return model, data
    return k2.applications.ResNet50(weights=None, input_shape=(224, 224, 3)), None


def int8_accuracy(content: bytes, x: np.ndarray, y: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=2)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    hits = 0
    for i in range(len(x)):
        xi = x[i:i + 1].astype(np.float32)
        if d["dtype"] != np.float32:
            s, z = d["quantization"]
            xi = np.clip(np.round(xi / s + z), -128, 127).astype(d["dtype"])
        it.set_tensor(d["index"], xi)
        it.invoke()
        hits += int(np.argmax(it.get_tensor(o["index"])[0]) == int(y[i]))
    return 100.0 * hits / len(x)


def run_model(name: str, args: Any, k2: Any, out: dict[str, Any]) -> None:
    from device_agents.inventory import get_device, open_transport
    from edgelr.bench.run import BenchModel, BenchSettings, benchmark
    from edgelr.compress.convert import convert
    from edgelr.profile import profile_model
    from edgelr.report.stats import paired_speedup
    from edgelr.rewrite import factorize_model, plan_factorization
    from edgelr.rewrite.allocate import model_latency
    from edgelr.rewrite.cost import model_cost

    model, data = build(name, k2, args.train_samples, args.epochs)
    policy = POLICY[name]
    rng = np.random.default_rng(0)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    calib = (data.x_train[:200].astype(np.float32) if data is not None
             else rng.standard_normal((8, *shape)).astype(np.float32))
    p0, m0 = model_cost(model)
    tmp = Path(args.workdir) / name
    tmp.mkdir(parents=True, exist_ok=True)
    log(f"{name}: converting the original (int8)")
    orig = tmp / "original.tflite"
    orig.write_bytes(convert(model, "int8", representative=calib).content)
    xs, ys = (data.x_test[:args.test_samples], data.y_test[:args.test_samples]) if data is not None else (None, None)
    acc0 = int8_accuracy(orig.read_bytes(), xs, ys) if xs is not None else None
    est_model, est_rep = factorize_model(model, rank_policy=policy, target="host", allocate="latency", progress=False)
    mac_model, mac_rep = factorize_model(model, rank_policy=policy, target="host", allocate="layer", progress=False)
    variants_fixed = {"MAC-driven": mac_model, "estimate-driven": est_model}
    fixed_files: dict[str, Path] = {}
    for label, m in variants_fixed.items():
        f = tmp / f"{label}.tflite"
        log(f"{name}: converting {label}")
        f.write_bytes(convert(m, "int8", representative=calib).content)
        fixed_files[label] = f
    for threads in [int(t) for t in args.threads.split(",")]:
        key = f"{name} {threads}t"
        load_before = os.getloadavg()
        t0 = time.monotonic()
        prof = profile_model(model, "local", target="host", threads=threads, sessions=args.profile_sessions,
                             cache=args.cache, progress=log)
        profile_s = time.monotonic() - t0
        table = prof.table
        plan_t = plan_factorization(model, rank_policy=policy, target="host", allocate="latency", min_reduction=0.1,
                                    progress=False, latency_table=table)
        tab_model, tab_rep = factorize_model(model, rank_policy=policy, target="host", allocate="latency", progress=False,
                                       latency_table=table)
        f = tmp / f"table-driven-{threads}t.tflite"
        log(f"{name}: converting table-driven ({threads} threads)")
        f.write_bytes(convert(tab_model, "int8", representative=calib).content)
        files = {"original": orig, **fixed_files, "table-driven": f}
        models = {"MAC-driven": mac_model, "estimate-driven": est_model, "table-driven": tab_model}
        ranks_of = {label: {str(row.layer): tuple(int(x) for x in row.ranks) for row in rep.itertuples()
                            if not bool(row.skipped)}
                    for label, rep in (("MAC-driven", mac_rep), ("estimate-driven", est_rep), ("table-driven", tab_rep))}
        spec = get_device("local")
        transport = open_transport(spec)
        try:
            frame = benchmark(spec, transport, [BenchModel(k, v) for k, v in files.items()],
                              BenchSettings(threads=threads, sessions=args.sessions, runs=args.runs, canary=False,
                                            seed=threads), progress=log)
        finally:
            transport.close()
        load_after = os.getloadavg()
        med = frame[frame["metric"] == "latency_median"].groupby("model")["value"].median()
        rows = []
        for label in ("MAC-driven", "estimate-driven", "table-driven"):
            p1, m1 = model_cost(models[label])
            _, sp = paired_speedup(frame, label, "original")
            pred = model_latency(plan_t, ranks_of[label])
            scale, table.context_scale = table.context_scale, 1.0
            pred_uncal = model_latency(plan_t, ranks_of[label])
            table.context_scale = scale
            acc = int8_accuracy(files[label].read_bytes(), xs, ys) if xs is not None else None
            rows.append({"plan": label, "params_x": p0 / p1, "macs_x": m0 / m1, "speedup": sp["speedup"],
                         "low": sp["low"], "high": sp["high"], "blocks": sp["blocks"],
                         "speedup_per_mac_x": sp["speedup"] / (m0 / m1), "measured_ms": float(med[label]),
                         "predicted_ms": pred, "pred_error": (pred - float(med[label])) / float(med[label]),
                         "predicted_uncal_ms": pred_uncal, "err_uncal": pred_uncal / float(med[label]) - 1,
                         "int8_acc": acc})
        _, vs_mac = paired_speedup(frame, "table-driven", "MAC-driven")   # same blocks: its own interval
        out[key] = {"model": name, "threads": threads, "policy": policy, "profile_s": profile_s,
                    "table_vs_mac": {k: vs_mac[k] for k in ("speedup", "low", "high")},
                    "micro_models": len(prof.rows), "original_ms": float(med["original"]),
                    "table_model_ms": table.model_ms, "original_int8_acc": acc0, "rows": rows,
                    "probe_ms": prof.probe_ms, "context_scale": table.context_scale,
                    "calibration": table.calibration,
                    "load_before": load_before, "load_after": load_after, "runtime": prof.runtime,
                    "layers": prof.layers}
        log(f"{key}: " + "; ".join(f"{r['plan']} x{r['speedup']:.2f} for MACs x{r['macs_x']:.2f}, "
                                     f"pred err {r['pred_error']:+.1%}" for r in rows))
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))


def _vs_mac(r: dict[str, Any], tab: dict[str, Any], mac: dict[str, Any]) -> str:
    """Table-driven over MAC-driven: paired in the same blocks with its 95 % interval when measured so, else the
    ratio of the two speed-ups over the original (older runs)."""
    v = r.get("table_vs_mac")
    if v:
        return f"x{v['speedup']:.2f} [{v['low']:.2f}, {v['high']:.2f}]"
    return f"x{tab['speedup'] / mac['speedup']:.2f} (ratio of speed-ups, no interval)"


def render(doc: dict[str, Any], args: Any) -> list[str]:
    lines = ["# Latency tables measured on the device vs MAC-driven plans", "",
             "Generated by `.venv/bin/python tests/perf/bench_latency_tables.py " + " ".join(sys.argv[1:]) + "`"
             " on this project's shared 2-core x86-64 machine (device `local`, target `host`, int8 full-integer,"
             " XNNPACK, ai-edge-litert). Speed-ups: original int8 latency / plan latency, median of the"
             f" per-block ratios of {args.sessions} interleaved sessions x {args.runs} inferences, 95 % interval"
             " (Wilcoxon / Hodges-Lehmann). Prediction: table's predicted latency vs measured median of session"
             " medians. Accuracy: int8 `.tflite` top-1 on the first"
             f" {args.test_samples} test images, before fine-tuning (same for every plan); ResNet-50 is not"
             " trained (weights=None): no accuracy, speed-up is what matters there.", ""]
    errors: dict[str, list[float]] = {}
    notes = doc.get("_notes") or []
    doc = {k: v for k, v in doc.items() if not k.startswith("_")}
    for key, r in doc.items():
        lines += [f"## {key} (policy {r['policy']})", "",
                  f"Original int8: {r['original_ms']:.3f} ms measured here ({r['table_model_ms']:.3f} ms in the "
                  f"table's sessions); int8 accuracy "
                  f"{'not trained' if r['original_int8_acc'] is None else format(r['original_int8_acc'], '.2f') + ' %'}."
                  f" Profile: {r['micro_models']} micro-models, {r['profile_s']:.0f} s wall"
                  f" ({r['runtime']}). Load average before/after the measurement: "
                  f"{' '.join(f'{v:.2f}' for v in r['load_before'])} / {' '.join(f'{v:.2f}' for v in r['load_after'])}.",
                  *([f"Probe model (every layer at 0.25 of its ranks) {r['probe_ms']:.3f} ms in the table's sessions: "
                     f"context scale x{r['context_scale']:.2f} ({r['calibration']})."] if "probe_ms" in r else []),
                  "", "| plan | params x | MACs x | measured speed-up [95 % CI] | speed-up / MAC reduction | "
                      "measured ms | predicted ms (A) | error A | error A0 | error B | error C | int8 acc |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        sum_whole = sum(layer["whole_ms"] or 0.0 for layer in r["layers"])
        for row in r["rows"]:
            # the table's saving (whole - chosen entries), scaled (A) and as is (A0)
            saved = r["table_model_ms"] - row["predicted_ms"]
            raw = r["table_model_ms"] - row.get("predicted_uncal_ms", row["predicted_ms"])
            pred_b = r["original_ms"] - saved
            pred_c = r["original_ms"] * (sum_whole - raw) / sum_whole
            row["err_b"], row["err_c"] = pred_b / row["measured_ms"] - 1, pred_c / row["measured_ms"] - 1
            err_a0 = row.get("err_uncal", row["pred_error"])
            for name, err in (("A", row["pred_error"]), ("A0", err_a0), ("B", row["err_b"]), ("C", row["err_c"])):
                errors.setdefault(name, []).append(abs(err))
            acc = "not trained" if row["int8_acc"] is None else f"{row['int8_acc']:.1f} %"
            lines.append(f"| {row['plan']} | {row['params_x']:.2f} | {row['macs_x']:.2f} | x{row['speedup']:.2f} "
                         f"[{row['low']:.2f}, {row['high']:.2f}] | {row['speedup_per_mac_x']:.2f} | "
                         f"{row['measured_ms']:.3f} | {row['predicted_ms']:.3f} | {row['pred_error']:+.1%} | "
                         f"{err_a0:+.1%} | {row['err_b']:+.1%} | {row['err_c']:+.1%} | {acc} |")
        lines += ["", f"Sum of the profiled layers as is (table): {sum_whole:.3f} ms of the {r['table_model_ms']:.3f} ms "
                      "whole model in the table's sessions."]
        mac = next(x for x in r["rows"] if x["plan"] == "MAC-driven")
        tab = next(x for x in r["rows"] if x["plan"] == "table-driven")
        lines += ["", f"Table-driven vs MAC-driven measured speed-up: {_vs_mac(r, tab, mac)}.", ""]
    if errors:
        lines += ["Predictions of a factorized model's latency (all from the same table entries):",
                  "",
                  "* **A** (what edgelr uses, `edgelr.profile.predict_model_ms`): the whole model as measured in "
                  "the table's sessions + the context scale x (the plan's entries - the entries as is); the scale "
                  "is fitted from the original and the probe model measured with the table;",
                  "* **A0**: the same without the scale (1.0): the layers' change as measured alone;",
                  "* **B**: A's saving subtracted from the original as measured in the comparison's own "
                  "interleaved sessions (removes the machine's load drift between profiling and measuring);",
                  "* **C**: the original as measured in the comparison times (sum of chosen entries / sum of "
                  "entries as is): assumes each layer's time inside the model scales with its time alone.",
                  "",
                  "| predictor | median absolute error | n |", "|---|---|---|"]
        lines += [f"| {k} | {np.median(v):.1%} | {len(v)} |" for k, v in errors.items()]
        lines.append("")
    lines += ["## Goals (issue 15)", "", "| run | table-driven speed-up / MAC reduction (goal >= 0.8) | "
              "table-driven / MAC-driven speed-up (goal >= 1.3) | accuracy MAC / table (same budget) |",
              "|---|---|---|---|"]
    for key, r in doc.items():
        mac = next(x for x in r["rows"] if x["plan"] == "MAC-driven")
        tab = next(x for x in r["rows"] if x["plan"] == "table-driven")
        acc = ("not trained" if tab["int8_acc"] is None else f"{mac['int8_acc']:.1f} % / {tab['int8_acc']:.1f} %")
        lines.append(f"| {key} | {tab['speedup_per_mac_x']:.2f} | {_vs_mac(r, tab, mac)} | {acc} |")
    lines += ["", *notes]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="fmnist,resnet50")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--profile-sessions", type=int, default=5)
    ap.add_argument("--train-samples", type=int, default=15000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--test-samples", type=int, default=2000)
    ap.add_argument("--cache", default="/tmp/edgelr-latency-tables/latency.sqlite")
    ap.add_argument("--workdir", default="/tmp/edgelr-latency-tables")
    ap.add_argument("--json", default=str(ROOT / "reports" / "latency_tables.json"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "latency_tables.md"))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    doc: dict[str, Any] = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    if not args.render_only:
        from edgelr.tfcompat import keras2

        k2 = keras2()
        k2.utils.set_random_seed(0)
        for name in args.models.split(","):
            run_model(name, args, k2, doc)
    # the generated command line is the measuring one, not a later --render-only
    if args.render_only:
        sys.argv[1:] = doc.get("_command", sys.argv[1:])
    else:
        doc["_command"] = sys.argv[1:]
        Path(args.json).write_text(json.dumps(doc, indent=1, default=float))
    write_report(args.out, render(doc, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
