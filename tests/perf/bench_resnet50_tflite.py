"""Benchmark: Keras ResNet-50 (weights=None) factorized at ``params:0.25`` vs the original, on this host.

Prints and writes ``reports/resnet50_factorized.md``: parameter and MAC reduction (edgelr's cost model),
.tflite sizes, and host latency with ai-edge-litert (XNNPACK) at 1 and 2 threads, float32 and full-integer
int8 (a small random representative dataset: meaningless for accuracy, fine for latency). Goal: speed-up
>= 0.8 x the MAC reduction.

Usage::

    .venv/bin/python tests/perf/bench_resnet50_tflite.py [--runs 15] [--policy params:0.25] [--out reports/...]

Latency is the median of ``--runs`` timed invokes after 3 warm-up invokes; original and factorized models
are timed alternately (round-robin) so that load from other processes on the host hits both alike.
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
    parser.add_argument("--allocate", default="layer", choices=["layer", "latency"],
                        help="rank allocation (see edgelr.rewrite.plan_factorization): per layer, or "
                             "model-wide for the least estimated latency within the policy's totals")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "resnet50_factorized.md")
    args = parser.parse_args()

    from edgelr.rewrite import factorize_model, model_cost
    from edgelr.tfcompat import keras2

    keras = keras2()
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    print(f"built ResNet-50 in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    target = target_with_multiple(args.target, args.rank_multiple)
    new, report = factorize_model(model, rank_policy=args.policy, target=target, progress=True,
                                  min_efficiency=args.min_efficiency, allocate=args.allocate)
    t_factorize = time.perf_counter() - t0
    p0, m0 = model_cost(model)
    p1, m1 = model_cost(new)
    done = report.loc[~report["skipped"]]
    print(f"factorized {len(done)}/{len(report)} layers in {t_factorize:.1f} s; params {p0:,} -> {p1:,} "
          f"(x{p0 / p1:.2f}), MACs {m0:,} -> {m1:,} (x{m0 / m1:.2f})")

    rng = np.random.default_rng(0)
    calib = [rng.uniform(-1, 1, (1, 224, 224, 3)).astype("float32") for _ in range(args.calibration)]

    def representative() -> Any:
        for x in calib:
            yield [x]

    x = calib[0]
    models = {"original": model, "factorized": new}
    flatbuffers: dict[tuple[str, str], bytes] = {}
    for mode in ("float32", "int8"):
        for name, m in models.items():
            t0 = time.perf_counter()
            flatbuffers[(name, mode)] = convert(m, mode, representative)
            print(f"converted {name} {mode} in {time.perf_counter() - t0:.1f} s "
                  f"({len(flatbuffers[(name, mode)]) / 1e6:.1f} MB)", file=sys.stderr)

    # float32 agreement of the TFLite factorized model with its Keras model (sanity)
    interp = make_interpreter(flatbuffers[("factorized", "float32")], 2)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    tfl = interp.get_tensor(interp.get_output_details()[0]["index"])
    keras_out = np.asarray(new(x, training=False))
    agreement = float(np.max(np.abs(tfl - keras_out)) / np.max(np.abs(keras_out)))

    rows = []
    for mode in ("float32", "int8"):
        for threads in (1, 2):
            interps = {name: make_interpreter(flatbuffers[(name, mode)], threads) for name in models}
            times = time_round_robin(interps, {name: [x] for name in models}, args.runs)
            med = {name: float(np.median(t)) for name, t in times.items()}
            rows.append((mode, threads, med["original"], med["factorized"], med["original"] / med["factorized"],
                         min(times["original"]), min(times["factorized"])))
            print(f"{mode:8s} threads={threads}: original {med['original']:.1f} ms, factorized "
                  f"{med['factorized']:.1f} ms, speed-up x{med['original'] / med['factorized']:.2f}")

    mac_red = m0 / m1
    multiple = target.rank_multiple if target is not None else 1
    methods = done["method"].value_counts().to_dict()
    lines = [
        "# ResNet-50 factorized at `%s`: size, MACs and host TFLite latency" % args.policy,
        "",
        f"Command: `.venv/bin/python tests/perf/bench_resnet50_tflite.py --policy {args.policy}"
        + (f" --target {args.target}" if args.target else "")
        + (f" --rank-multiple {args.rank_multiple}" if args.rank_multiple else "")
        + (f" --min-efficiency {args.min_efficiency:g}" if args.min_efficiency else "")
        + (f" --allocate {args.allocate}" if args.allocate != "layer" else "") + f" --runs {args.runs}`",
        "",
        f"Generated by `tests/perf/bench_resnet50_tflite.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"host `{platform.machine()}` ({os.cpu_count()} cores, shared with other jobs), ai-edge-litert "
        "interpreter (XNNPACK), batch 1, 224x224x3. Keras ResNet-50 with `weights=None` (random init): ranks come "
        "from the `params` budget, which does not depend on the weights; int8 calibration uses "
        f"{args.calibration} random images (fine for latency, meaningless for accuracy). Ranks rounded up to a "
        f"multiple of {multiple}" + (f" (target `{args.target}`)" if args.target else "") + ". Load average at "
        f"the end of the run: {os.getloadavg()[0]:.1f} on 2 cores (other jobs): absolute times are noisy, the "
        "interleaved ratios less so.",
        "",
        "| | original | factorized | ratio |",
        "|---|---:|---:|---:|",
        f"| parameters | {p0:,} | {p1:,} | x{p0 / p1:.2f} |",
        f"| MACs per image | {m0 / 1e9:.3f} G | {m1 / 1e9:.3f} G | x{mac_red:.2f} |",
        f"| .tflite float32 | {len(flatbuffers[('original', 'float32')]) / 1e6:.1f} MB | "
        f"{len(flatbuffers[('factorized', 'float32')]) / 1e6:.1f} MB | |",
        f"| .tflite int8 | {len(flatbuffers[('original', 'int8')]) / 1e6:.1f} MB | "
        f"{len(flatbuffers[('factorized', 'int8')]) / 1e6:.1f} MB | |",
        "",
        f"Layers factorized: {len(done)} of {len(report)} candidates ({', '.join(f'{k}: {v}' for k, v in methods.items())}); "
        f"factorization took {t_factorize:.1f} s. Factorized float32 TFLite vs Keras: max relative difference "
        f"{agreement:.1e}.",
        "",
        f"Latency: median (min) of {args.runs} invokes after 3 warm-ups, original and factorized interleaved.",
        "",
        "| precision | threads | original ms | factorized ms | speed-up | speed-up / MAC reduction |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, threads, a, b, s, amin, bmin in rows:
        lines.append(f"| {mode} | {threads} | {a:.1f} ({amin:.1f}) | {b:.1f} ({bmin:.1f}) | x{s:.2f} | {s / mac_red:.2f} |")
    met = sum(s >= 0.8 * mac_red for _, _, _, _, s, _, _ in rows)
    lines += ["", f"Goal speed-up >= 0.8 x MAC reduction (x{0.8 * mac_red:.2f}): met in {met} of {len(rows)} "
              "configurations.", "", "Layers left as is:", ""]
    skipped = report.loc[report["skipped"]]
    for r in skipped.itertuples():
        lines.append(f"- `{r.layer}`: {r.reason}")
    if skipped.empty:
        lines.append("none")
    lines += ["", "Per-layer ranks (first 12 factorized layers; est. = edgelr's latency estimate, MACs + "
              "output_cost x elements written):", "",
              "| layer | method | ranks | params | MACs | MACs x | est. speed-up | rel. error |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in done.head(12).itertuples():
        lines.append(f"| {r.layer} | {r.method} | {'x'.join(map(str, r.ranks))} | {r.params_before:,} -> "
                     f"{r.params_after:,} | {r.macs_before:,} -> {r.macs_after:,} | "
                     f"{r.macs_before / r.macs_after:.2f} | {r.est_speedup:.2f} | {r.rel_error:.2f} |")
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
