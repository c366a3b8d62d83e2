"""Benchmark: host TFLite latency of the LSTM/GRU variants edgelr ships vs the unfactorized layers.

Variants (batch 1, random weights: latency only):

- ``lstm``: stock LSTM -> fused ``UNIDIRECTIONAL_SEQUENCE_LSTM``.
- ``lstm svd in=r``: low-rank input projection (method ``svd``): ``FULLY_CONNECTED`` + the fused op.
- ``lstm lowrank rec=r``: low-rank recurrent kernel (method ``svd-recurrent``, input kernel whole):
  ``edgelr>LowRankLSTMCell`` in a ``WHILE`` loop.
- ``lstm lowrank in=r rec=r``: both.
- ``gru`` / ``gru lowrank in=r rec=r``: stock GRU (TFLite has no fused GRU op: a ``WHILE`` loop) vs low rank.
- short sequences with ``unroll=True`` (no loop op; what full-integer int8 of the low-rank cell needs).

Each conversion (float32, dynamic-range, full-integer int8 with float I/O) runs in a subprocess, since the
converter can crash (REFERENCE section 1: full-int8 of a WHILE model segfaulted); a crash is reported, not
fatal. Latency: median of ``--runs`` invokes after 5 warm-ups, one thread, variants of one precision
interleaved. Results go to ``reports/lstm_variants.md``.

Usage::

    .venv/bin/python tests/perf/bench_lstm_variants.py [--runs 50] [--steps 100] [--rank 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _perfutil import write_report

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
MODES = ("float32", "dynamic", "int8")


def _convert_child(keras_path: str, modes: str, out_prefix: str, steps: int, dim: int) -> None:
    """Subprocess body: load a saved model and write its TFLite conversions ``<out_prefix>_<mode>.tflite``."""
    import edgelr.rewrite.cells  # noqa: F401  (registers the low-rank cells)
    from bench_resnet50_tflite import convert
    from edgelr.tfcompat import keras2

    model = keras2().models.load_model(keras_path)
    rng = np.random.default_rng(0)
    calib = [rng.normal(size=(1, steps, dim)).astype("float32") for _ in range(8)]

    def representative() -> Any:
        for x in calib:
            yield [x]

    for mode in modes.split(","):
        Path(f"{out_prefix}_{mode}.tflite").write_bytes(convert(model, mode, representative))


def convert_in_subprocess(keras_path: Path, modes: list[str], out_prefix: Path, steps: int, dim: int) -> str:
    """'' on success, else a one-line reason (exit status, last stderr line)."""
    cmd = [sys.executable, __file__, "--child", str(keras_path), ",".join(modes), str(out_prefix), str(steps),
           str(dim)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode == 0:
        return ""
    if proc.returncode < 0:
        return f"converter crashed (signal {-proc.returncode})"
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and "warn" not in ln]
    return f"conversion failed (exit {proc.returncode}): {lines[-1][:160] if lines else ''}"


def build_variants(steps: int, dim: int, units: int, rank: int, unroll: bool) -> dict[str, Any]:
    """Keras models by variant name; with ``unroll`` only the stock LSTM and the fully low-rank LSTM."""
    from edgelr.rewrite import build_factorized, plan_factorization
    from edgelr.tfcompat import keras2

    keras = keras2()
    keras.utils.set_random_seed(0)
    variants: dict[str, Any] = {}
    suffix = " unroll" if unroll else ""
    for kind in ("lstm",) if unroll else ("lstm", "gru"):
        inp = keras.Input((steps, dim), batch_size=1)
        layer = (keras.layers.LSTM if kind == "lstm" else keras.layers.GRU)(units, unroll=unroll, name=kind)
        base = keras.Model(inp, layer(inp), name=kind)
        variants[kind + suffix] = base
        lowrank = plan_factorization(base, method="svd-recurrent", rank_policy="rank:1", min_reduction=None,
                                     progress=False)
        full_in = lowrank.layers[kind].full_ranks[0]
        if kind == "lstm" and not unroll:
            plan = plan_factorization(base, method="svd", rank_policy="rank:1", min_reduction=None, progress=False)
            variants[f"lstm svd in={rank}{suffix}"] = build_factorized(base, plan, {kind: rank})[0]
            variants[f"lstm lowrank rec={rank}{suffix}"] = build_factorized(base, lowrank, {kind: (full_in, rank)})[0]
        variants[f"{kind} lowrank in={rank} rec={rank}{suffix}"] = build_factorized(base, lowrank,
                                                                                    {kind: (rank, rank)})[0]
    return variants


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _convert_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--short-steps", type=int, default=16, help="sequence length of the unroll=True variants")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "lstm_variants.md")
    args = parser.parse_args()

    from bench_resnet50_tflite import make_interpreter, op_names, time_round_robin
    from edgelr.rewrite import model_cost

    tmp = Path(tempfile.mkdtemp(prefix="edgelr-lstm-bench-"))
    sections = []
    for steps, unroll in ((args.steps, False), (args.short_steps, True)):
        variants = build_variants(steps, args.dim, args.units, args.rank, unroll)
        rng = np.random.default_rng(1)
        x = rng.normal(size=(1, steps, args.dim)).astype("float32")
        flat: dict[tuple[str, str], bytes] = {}
        failures: dict[tuple[str, str], str] = {}
        for i, (name, model) in enumerate(variants.items()):
            path = tmp / f"v{steps}_{i}.keras"
            model.save(path)
            prefix = tmp / f"v{steps}_{i}"
            for modes in (["float32", "dynamic"], ["int8"]):  # int8 alone: it is the one that may crash
                t0 = time.perf_counter()
                reason = convert_in_subprocess(path, modes, prefix, steps, args.dim)
                print(f"T={steps} {name:28s} {','.join(modes):16s} {'ok' if not reason else reason} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
                for mode in modes:
                    out = Path(f"{prefix}_{mode}.tflite")
                    if out.exists():
                        flat[(name, mode)] = out.read_bytes()
                    else:
                        failures[(name, mode)] = reason or "no output"
        lat: dict[tuple[str, str], float] = {}
        for mode in MODES:
            names = [n for n in variants if (n, mode) in flat]
            interps = {n: make_interpreter(flat[(n, mode)], 1) for n in names}
            times = time_round_robin(interps, {n: [x] for n in names}, args.runs, warmup=5)
            for n in names:
                lat[(n, mode)] = float(np.median(times[n]))
        rows = []
        for name, model in variants.items():
            params, macs = model_cost(model)
            keras_out = np.asarray(model(x, training=False))
            agree = ""
            if (name, "float32") in flat:
                interp = make_interpreter(flat[(name, "float32")], 1)
                interp.set_tensor(interp.get_input_details()[0]["index"], x)
                interp.invoke()
                out = interp.get_tensor(interp.get_output_details()[0]["index"])
                agree = f"{float(np.max(np.abs(out - keras_out)) / np.max(np.abs(keras_out))):.0e}"
            ops = op_names(flat[(name, "float32")]) if (name, "float32") in flat else []
            key_ops = [o for o in ops if o in ("UNIDIRECTIONAL_SEQUENCE_LSTM", "WHILE", "FULLY_CONNECTED")]
            cells = []
            for mode in MODES:
                if (name, mode) in lat:
                    cells.append(f"{lat[(name, mode)]:.3f}")
                else:
                    cells.append("converter crashed" if "signal" in failures.get((name, mode), "")
                                 else "conversion failed")
            rows.append((name, params, macs, ", ".join(key_ops) or "unrolled", agree, cells))
            print(f"T={steps} {name:28s} params {params:>8,} MACs {macs:>11,} "
                  + " ".join(f"{m}={c}" for m, c in zip(MODES, cells)))
        sections.append((steps, unroll, rows, failures))

    lines = ["# LSTM / GRU low-rank variants: host TFLite latency", "",
             f"Generated by `tests/perf/bench_lstm_variants.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"host `{platform.machine()}` ({os.cpu_count()} cores, shared with other jobs), ai-edge-litert "
             f"interpreter, 1 thread, batch 1, D={args.dim}, H={args.units}, rank {args.rank}, random weights. "
             f"Latency: median of {args.runs} invokes after 5 warm-ups, variants interleaved. `int8` is full-integer "
             "quantization with float input/output (8 random calibration sequences); `dynamic` is dynamic-range. "
             f"Each conversion ran in a subprocess. Load average during the run: {os.getloadavg()[0]:.1f} "
             "(other jobs share the 2 cores: absolute figures are noisy, ratios between interleaved variants "
             "less so).", ""]
    for steps, unroll, rows, failures in sections:
        lines += [f"## T = {steps}{' (unroll=True)' if unroll else ''}", "",
                  "| variant | params | MACs / sequence | main ops (float32) | TFLite vs Keras (float32) | float32 ms | "
                  "dynamic ms | int8 ms | float32 speed-up vs stock |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        stock = {kind: cells[0] for name, _, _, _, _, cells in rows for kind in ("lstm", "gru")
                 if name.split()[0] == kind and len(name.split()) == 1 + int(unroll)}
        for name, params, macs, ops, agree, cells in rows:
            base = stock.get(name.split()[0], "")
            try:
                speed = f"x{float(base) / float(cells[0]):.1f}"
            except ValueError:
                speed = ""
            lines.append(f"| {name} | {params:,} | {macs:,} | {ops} | {agree} | " + " | ".join(cells)
                         + f" | {speed} |")
        if failures:
            lines += ["", "Conversion failures:", ""]
            lines += [f"- {n} / {m}: {reason}" for (n, m), reason in failures.items()]
        lines.append("")
    lines += ["## Reading", "",
              "- The low-rank recurrent cell (method `svd-recurrent`) runs as a `WHILE` loop of builtin ops and, on "
              "this host, is faster than the fused `UNIDIRECTIONAL_SEQUENCE_LSTM` op even beyond its MAC "
              "reduction: XNNPACK does not take the fused op, it takes the loop's `FULLY_CONNECTED` ops.",
              "- Full-integer int8 of any `WHILE` model (the low-rank cells, but also the stock GRU) crashes the "
              "converter; dynamic-range works. For int8 use `unroll=True` "
              "(`factorize_model(..., recurrent_unroll=True)`; short fixed sequences: the unrolled table) or method "
              "`svd` (input projection only), which keeps the fused LSTM op and converts to int8.",
              "- The fused LSTM op in int8 is much slower here than in float32; measure on the device before "
              "choosing int8 for recurrent models.", ""]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
