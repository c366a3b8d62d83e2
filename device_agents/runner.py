#!/usr/bin/env python3
"""On-device LiteRT benchmark runner: edgelr pushes this one file to a device and runs it there.

Needs only the Python standard library, numpy and ai-edge-litert (``pip install ai-edge-litert``); no
TensorFlow, no edgelr. It loads a ``.tflite`` model with ``ai_edge_litert.interpreter.Interpreter``,
feeds random inputs of each input's dtype and shape, runs warm-up and timed inferences and prints

* the lines LiteRT's C++ ``benchmark_model`` prints (warm-up and timed stats lines in microseconds,
  ``Inference timings in us: ...``, ``Memory footprint delta ...``), so one parser reads both tools, and
* one line ``EDGELR_RESULT_JSON {...}`` with every per-run latency (``samples_us``), which the
  regression statistics need and ``benchmark_model`` does not print.

Flags use ``benchmark_model``'s names (``--flag=value`` or ``--flag value``)::

    python3 runner.py --graph=model.tflite --num_threads=4 --num_runs=50 --warmup_runs=1 --use_xnnpack=true
    python3 runner.py --version

Exit codes: 0 ok; 1 the benchmark failed (bad model...: ``ERROR: ...`` then ``Benchmarking failed.`` on
stderr); 2 bad flags; 3 ai-edge-litert is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, NoReturn

RUNNER_VERSION = "litert_runner 1"
EXIT_FAILED, EXIT_USAGE, EXIT_NO_RUNTIME = 1, 2, 3
#: What ``--enable_op_profiling`` gets: ai-edge-litert's Python ``Interpreter`` exposes no profiler (its
#: C++ ``benchmark_model`` does: set ``benchmark_binary`` in the inventory to get per-op timings).
OP_PROFILING_UNAVAILABLE = ("op profiling is not available in litert_runner: ai-edge-litert's Python interpreter "
                            "exposes no per-op profiler; use LiteRT's benchmark_model (benchmark_binary in the "
                            "inventory) for per-op timings")


def _fail(msg: str, code: int = EXIT_FAILED) -> NoReturn:
    print(f"ERROR: {msg}", file=sys.stderr)
    if code == EXIT_FAILED:
        print("Benchmarking failed.", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(code)


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive(minimum: int) -> Any:
    def conv(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return conv


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line, benchmark_model's flag names
        _fail(f"{message}; valid flags: --graph --num_threads --num_runs --warmup_runs --use_xnnpack "
              f"--seed --enable_op_profiling --version", EXIT_USAGE)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="runner.py", allow_abbrev=False, add_help=True,
                description="Benchmark a .tflite model with ai-edge-litert (benchmark_model-compatible output).")
    p.add_argument("--graph", help="path of the .tflite model")
    p.add_argument("--num_threads", type=_positive(-1), default=-1, help="CPU threads (-1: runtime default)")
    p.add_argument("--num_runs", type=_positive(1), default=50, help="timed inferences")
    p.add_argument("--warmup_runs", type=_positive(0), default=1, help="untimed warm-up inferences")
    p.add_argument("--use_xnnpack", type=_bool, default=True, help="apply the XNNPACK delegate (true/false)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--enable_op_profiling", type=_bool, default=False,
                   help="per-op timings: not available here (ai-edge-litert's Python interpreter has no op "
                        "profiler); the result says so")
    p.add_argument("--version", action="store_true", help="print the runner and runtime versions and exit")
    args = p.parse_args(argv)
    if not args.version and not args.graph:
        p.error("--graph=MODEL.tflite is required")
    return args


def _load_runtime() -> tuple[Any, str]:
    try:
        from ai_edge_litert import interpreter as litert  # noqa: PLC0415 - optional on the device
    except ImportError as exc:
        _fail(f"ai-edge-litert is not installed for {sys.executable} ({exc}); install it with: "
              f"{sys.executable} -m pip install ai-edge-litert", EXIT_NO_RUNTIME)
    try:
        import ai_edge_litert  # noqa: PLC0415

        version = str(getattr(ai_edge_litert, "__version__", ""))
    except Exception:  # noqa: BLE001 - a version string is best effort
        version = ""
    if not version:
        try:
            from importlib.metadata import version as dist_version  # noqa: PLC0415

            version = dist_version("ai-edge-litert")
        except Exception:  # noqa: BLE001
            version = "unknown"
    return litert, version


def _version_line(runtime_version: str) -> str:
    import numpy  # noqa: PLC0415

    return (f"{RUNNER_VERSION} (ai-edge-litert {runtime_version}, numpy {numpy.__version__}, "
            f"python {platform.python_version()}, {platform.machine()})")


def _random_input(detail: dict[str, Any], rng: Any) -> Any:
    import numpy as np  # noqa: PLC0415

    shape = [int(d) if int(d) > 0 else 1 for d in detail["shape"]]
    dtype = np.dtype(detail["dtype"])
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127), size=shape, endpoint=True).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.random(size=shape, dtype=np.float32).astype(dtype)
    raise ValueError(f"input {detail.get('name')!r} has dtype {dtype}, which the runner cannot fill")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"").strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _vm_hwm_mb() -> float:
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _stats_line(us: list[float]) -> str:
    """benchmark_model's ``count= first= curr= min= max= avg= std= p5= median= p95=`` line (us)."""
    if len(set(us)) == 1:
        return f"count={len(us)} curr={us[0]:.0f} (all same)"
    s = sorted(us)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))]

    std = statistics.pstdev(us)
    return (f"count={len(us)} first={us[0]:.0f} curr={us[-1]:.0f} min={s[0]:.0f} max={s[-1]:.0f} "
            f"avg={statistics.fmean(us):.6g} std={std:.0f} p5={pct(5):.0f} median={pct(50):.0f} p95={pct(95):.0f}")


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by ``args``; print benchmark_model-style lines; return the record."""
    import numpy as np  # noqa: PLC0415

    litert, runtime_version = _load_runtime()
    rss0 = _maxrss_mb()
    print("INFO: STARTING!")
    print(f"INFO: Graph: [{args.graph}]")
    print(f"INFO: Num threads: [{args.num_threads}]")
    print(f"INFO: Use xnnpack: [{int(args.use_xnnpack)}]")
    if args.enable_op_profiling:
        print(f"WARNING: {OP_PROFILING_UNAVAILABLE}")
    if not os.path.isfile(args.graph):
        _fail(f"model file {args.graph} does not exist")
    resolver = (litert.OpResolverType.AUTO if args.use_xnnpack
                else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    t0 = time.perf_counter()
    try:
        interp = litert.Interpreter(model_path=args.graph,
                                    num_threads=None if args.num_threads < 0 else args.num_threads,
                                    experimental_op_resolver_type=resolver)
        for detail in interp.get_input_details():
            sig = detail.get("shape_signature")
            if sig is not None and any(int(d) < 0 for d in sig):
                interp.resize_tensor_input(detail["index"], [int(d) if int(d) > 0 else 1 for d in sig])
        interp.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - the runtime raises ValueError/RuntimeError of many kinds
        _fail(f"cannot load model {args.graph}: {_first_line(exc)}")
    init_us = (time.perf_counter() - t0) * 1e6
    rss_init = _maxrss_mb()
    print(f"INFO: Initialized session in {init_us / 1000:.3f}ms.")
    rng = np.random.default_rng(args.seed)
    try:
        for detail in interp.get_input_details():
            interp.set_tensor(detail["index"], _random_input(detail, rng))
    except Exception as exc:  # noqa: BLE001
        _fail(f"cannot set the inputs of {args.graph}: {exc}")

    def timed(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            interp.invoke()
            out.append((time.perf_counter() - t) * 1e6)
        return out

    try:
        warmup = timed(args.warmup_runs)
        if warmup:
            print(f"INFO: Running benchmark for at least {args.warmup_runs} iterations.")
            print("INFO: " + _stats_line(warmup))
            print("")
        samples = timed(args.num_runs)
    except Exception as exc:  # noqa: BLE001
        _fail(f"inference failed on {args.graph}: {exc}")
    print(f"INFO: Running benchmark for at least {args.num_runs} iterations.")
    print("INFO: " + _stats_line(samples))
    print("")
    first_us = (warmup or samples)[0]
    warmup_avg = statistics.fmean(warmup) if warmup else float("nan")
    avg = statistics.fmean(samples)
    print(f"INFO: Inference timings in us: Init: {init_us:.0f}, First inference: {first_us:.0f}, "
          f"Warmup (avg): {warmup_avg:.6g}, Inference (avg): {avg:.6g}")
    rss_end = _maxrss_mb()
    print(f"INFO: Memory footprint delta from the start of the tool (MB): init={rss_init - rss0:.6g} "
          f"overall={rss_end - rss0:.6g}")
    record = {
        "version": _version_line(runtime_version),
        "runtime": "ai-edge-litert",
        "runtime_version": runtime_version,
        "graph": args.graph,
        "num_threads": args.num_threads,
        "use_xnnpack": args.use_xnnpack,
        "init_us": round(init_us, 3),
        "first_us": round(first_us, 3),
        "warmup_us": [round(x, 3) for x in warmup],
        "samples_us": [round(x, 3) for x in samples],
        "vm_hwm_mb": _vm_hwm_mb(),
        "maxrss_mb": rss_end,
        "op_profiling": OP_PROFILING_UNAVAILABLE if args.enable_op_profiling else "",
        "inputs": [{"name": d["name"], "shape": [int(x) for x in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
                   for d in interp.get_input_details()],
    }
    print("EDGELR_RESULT_JSON " + json.dumps(record, separators=(",", ":")))
    return record


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        _, runtime_version = _load_runtime()
        print(_version_line(runtime_version))
        return 0
    benchmark(args)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
