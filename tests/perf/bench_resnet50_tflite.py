"""Benchmark: Keras ResNet-50 (weights=None) factorized at ``params:0.25`` vs the original, on this host.

Prints and writes ``reports/resnet50_factorized.md``: parameter and MAC reduction (edgelr's cost model),
.tflite sizes, and host latency with ai-edge-litert (XNNPACK) at 1 and 2 threads, float32 and full-integer
int8 (a small random representative dataset: meaningless for accuracy, fine for latency). Goal: speed-up
>= 0.8 x the MAC reduction.

Usage::

    .venv/bin/python tests/perf/bench_resnet50_tflite.py [--runs 15] [--policy params:0.25] [--allocate layer,latency]
        [--target host --rank-multiple 16] [--out reports/...]

Latency is the median of ``--runs`` timed invokes after 3 warm-up invokes; the original and every factorized
model (``--allocate layer,latency`` builds one per rank allocation) are timed alternately (round-robin) so
that load from other processes on the host hits all alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from _perfutil import target_with_multiple, write_report

REPO = Path(__file__).resolve().parents[2]


def convert(model: Any, mode: str, representative: Callable[[], Any] | None = None) -> bytes:
    """TFLite flatbuffer of ``model``: ``float32``, ``dynamic`` (dynamic-range) or ``int8`` (full integer,
    float input/output, needs ``representative``)."""
    from edgelr.tfcompat import tf

    converter = tf().lite.TFLiteConverter.from_keras_model(model)
    if mode in ("dynamic", "int8"):
        converter.optimizations = [tf().lite.Optimize.DEFAULT]
    if mode == "int8":
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf().lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def make_interpreter(content: bytes, threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content, num_threads=threads)
    interp.allocate_tensors()
    return interp


def op_names(content: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return sorted({d["op_name"] for d in Interpreter(model_content=content)._get_ops_details()})


def time_round_robin(interps: dict[str, Any], inputs: dict[str, list[np.ndarray]], runs: int,
                     warmup: int = 3) -> dict[str, list[float]]:
    """Invoke each interpreter in turn ``runs`` times (after ``warmup``); per-invoke wall times in ms."""
    for name, interp in interps.items():
        details = interp.get_input_details()
        for d, x in zip(details, inputs[name]):
            interp.set_tensor(d["index"], x.astype(d["dtype"]))
        for _ in range(warmup):
            interp.invoke()
    times: dict[str, list[float]] = {name: [] for name in interps}
    for _ in range(runs):
        for name, interp in interps.items():
            t0 = time.perf_counter()
            interp.invoke()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def _ratio_table(rows: list[dict[str, Any]], variants: list[str], mac_red: dict[str, float]) -> list[str]:
    head = "| precision | threads | original ms | " + " | ".join(
        f"`{v}` ms | `{v}` speed-up | `{v}` / MAC reduction" for v in variants) + " |"
    lines = [head, "|---|---:|---:|" + "---:|---:|---:|" * len(variants)]
    for r in rows:
        cells = [f"{r['mode']} | {r['threads']} | {r['original']:.1f} ({r['original_min']:.1f})"]
        for v in variants:
            s = r["original"] / r[v]
            cells.append(f"{r[v]:.1f} ({r[v + '_min']:.1f}) | x{s:.2f} | **{s / mac_red[v]:.2f}**")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--policy", default="params:0.25")
    parser.add_argument("--calibration", type=int, default=8, help="random images for int8 calibration")
    parser.add_argument("--target", default=None, help="round ranks up to this target's rank_multiple (e.g. rpi4, "
                        "host = this machine's SIMD tile)")
    parser.add_argument("--rank-multiple", type=int, default=None,
                        help="override the target's rank multiple (16 = XNNPACK's float tile on x86-64, so the "
                             "float32 and int8 rows time the same ranks fairly)")
    parser.add_argument("--min-efficiency", type=float, default=None,
                        help="leave output-bound layers as is (see edgelr.rewrite.plan_factorization)")
    parser.add_argument("--allocate", default="layer",
                        help="comma-separated rank allocations to factorize with and time against the original in "
                             "the same interleaved run: layer (each layer meets the policy), latency (model-wide, "
                             "least estimated latency within the policy's totals); e.g. layer,latency")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "resnet50_factorized.md")
    args = parser.parse_args()
    variants = [v.strip() for v in args.allocate.split(",") if v.strip()]
    if not variants or any(v not in ("layer", "latency") for v in variants) or len(set(variants)) < len(variants):
        parser.error(f"--allocate: got {args.allocate!r}; expected layer, latency or layer,latency")

    from edgelr.rewrite import factorize_model, model_cost
    from edgelr.tfcompat import keras2

    keras = keras2()
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    print(f"built ResNet-50 in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    target = target_with_multiple(args.target, args.rank_multiple)
    p0, m0 = model_cost(model)
    models: dict[str, Any] = {"original": model}
    reports: dict[str, Any] = {}
    t_factorize: dict[str, float] = {}
    costs: dict[str, tuple[int, int]] = {}
    for v in variants:
        t0 = time.perf_counter()
        models[v], reports[v] = factorize_model(model, rank_policy=args.policy, target=target, progress=True,
                                                min_efficiency=args.min_efficiency, allocate=v)
        t_factorize[v] = time.perf_counter() - t0
        costs[v] = model_cost(models[v])
        done = reports[v].loc[~reports[v]["skipped"]]
        print(f"[{v}] factorized {len(done)}/{len(reports[v])} layers in {t_factorize[v]:.1f} s; params {p0:,} -> "
              f"{costs[v][0]:,} (x{p0 / costs[v][0]:.2f}), MACs {m0:,} -> {costs[v][1]:,} (x{m0 / costs[v][1]:.2f})")

    rng = np.random.default_rng(0)
    calib = [rng.uniform(-1, 1, (1, 224, 224, 3)).astype("float32") for _ in range(args.calibration)]

    def representative() -> Any:
        for x in calib:
            yield [x]

    x = calib[0]
    flatbuffers: dict[tuple[str, str], bytes] = {}
    for mode in ("float32", "int8"):
        for name, m in models.items():
            t0 = time.perf_counter()
            flatbuffers[(name, mode)] = convert(m, mode, representative)
            print(f"converted {name} {mode} in {time.perf_counter() - t0:.1f} s "
                  f"({len(flatbuffers[(name, mode)]) / 1e6:.1f} MB)", file=sys.stderr)

    agreement = {}  # float32 TFLite of each factorized model vs its Keras model (sanity)
    for v in variants:
        interp = make_interpreter(flatbuffers[(v, "float32")], 2)
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        tfl = interp.get_tensor(interp.get_output_details()[0]["index"])
        keras_out = np.asarray(models[v](x, training=False))
        agreement[v] = float(np.max(np.abs(tfl - keras_out)) / np.max(np.abs(keras_out)))

    rows: list[dict[str, Any]] = []
    for mode in ("float32", "int8"):
        for threads in (1, 2):
            interps = {name: make_interpreter(flatbuffers[(name, mode)], threads) for name in models}
            times = time_round_robin(interps, {name: [x] for name in models}, args.runs)
            row: dict[str, Any] = {"mode": mode, "threads": threads}
            for name, t in times.items():
                row[name], row[name + "_min"] = float(np.median(t)), float(min(t))
            rows.append(row)
            print(f"{mode:8s} threads={threads}: original {row['original']:.1f} ms" + "".join(
                f", {v} {row[v]:.1f} ms (x{row['original'] / row[v]:.2f}, "
                f"{row['original'] / row[v] / (m0 / costs[v][1]):.2f} of MACs x{m0 / costs[v][1]:.2f})"
                for v in variants))

    mac_red = {v: m0 / costs[v][1] for v in variants}
    multiple = target.rank_multiple if target is not None else 1
    lines = [
        "# ResNet-50 factorized at `%s`: size, MACs and host TFLite latency" % args.policy,
        "",
        f"Command: `.venv/bin/python tests/perf/bench_resnet50_tflite.py --policy {args.policy}"
        + (f" --target {args.target}" if args.target else "")
        + (f" --rank-multiple {args.rank_multiple}" if args.rank_multiple else "")
        + (f" --min-efficiency {args.min_efficiency:g}" if args.min_efficiency else "")
        + (f" --allocate {','.join(variants)}" if variants != ["layer"] else "") + f" --runs {args.runs}`",
        "",
        f"Generated by `tests/perf/bench_resnet50_tflite.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"host `{platform.machine()}` ({os.cpu_count()} cores, shared with other jobs), ai-edge-litert "
        "interpreter (XNNPACK), batch 1, 224x224x3. Keras ResNet-50 with `weights=None` (random init): the "
        "spectra are flat, so the error proxies the `latency` allocation trades are those of random layers; int8 "
        f"calibration uses {args.calibration} random images (fine for latency, meaningless for accuracy). Ranks "
        f"rounded up to a multiple of {multiple}" + (f" (target `{args.target}`)" if args.target else "")
        + ". Allocations: `layer` = every layer meets the policy on its own; `latency` = the policy's totals "
        "(params, weight loss) re-spent model-wide for the least estimated latency (edgelr.rewrite.allocate). "
        f"Load average at the end of the run: {os.getloadavg()[0]:.1f} on 2 cores (other jobs): absolute times "
        "are noisy, the interleaved ratios less so.",
        "",
        "| | original | " + " | ".join(f"`{v}`" for v in variants) + " |",
        "|---|---:|" + "---:|" * len(variants),
        f"| parameters | {p0:,} | " + " | ".join(f"{costs[v][0]:,} (x{p0 / costs[v][0]:.2f})" for v in variants) + " |",
        f"| MACs per image | {m0 / 1e9:.3f} G | " + " | ".join(
            f"{costs[v][1] / 1e9:.3f} G (x{mac_red[v]:.2f})" for v in variants) + " |",
    ]
    for mode in ("float32", "int8"):
        lines.append(f"| .tflite {mode} | {len(flatbuffers[('original', mode)]) / 1e6:.1f} MB | " + " | ".join(
            f"{len(flatbuffers[(v, mode)]) / 1e6:.1f} MB" for v in variants) + " |")
    lines.append("| layers factorized | | " + " | ".join(
        f"{int((~reports[v]['skipped']).sum())} of {len(reports[v])}" for v in variants) + " |")
    lines.append("| factorization time | | " + " | ".join(f"{t_factorize[v]:.1f} s" for v in variants) + " |")
    lines.append("| float32 TFLite vs Keras (max rel. diff) | | " + " | ".join(
        f"{agreement[v]:.1e}" for v in variants) + " |")
    lines += ["", f"Latency: median (min) of {args.runs} invokes after 3 warm-ups, all models interleaved.", ""]
    lines += _ratio_table(rows, variants, mac_red)
    for v in variants:
        met = sum(r["original"] / r[v] >= 0.8 * mac_red[v] for r in rows)
        lines.append("")
        lines.append(f"`{v}`: goal speed-up >= 0.8 x MAC reduction (x{0.8 * mac_red[v]:.2f}) met in {met} of "
                     f"{len(rows)} configurations.")
    for v in variants:
        report = reports[v]
        done = report.loc[~report["skipped"]]
        lines += ["", f"## `{v}` allocation", "", "Layers left as is:", ""]
        skipped = report.loc[report["skipped"]]
        for r in skipped.itertuples():
            lines.append(f"- `{r.layer}`: {r.reason}")
        if skipped.empty:
            lines.append("none")
        lines += ["", "Per-layer ranks (est. = edgelr's latency estimate, MACs + output_cost x elements written):",
                  "", "| layer | method | ranks | params | MACs | MACs x | est. speed-up | rel. error |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in done.itertuples():
            lines.append(f"| {r.layer} | {r.method} | {'x'.join(map(str, r.ranks))} | {r.params_before:,} -> "
                         f"{r.params_after:,} | {r.macs_before:,} -> {r.macs_after:,} | "
                         f"{r.macs_before / r.macs_after:.2f} | {r.est_speedup:.2f} | {r.rel_error:.2f} |")
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
