"""The tests' one stand-in for LiteRT's ``benchmark_model``, in two modes.

Tests install it with :func:`write_launcher` (a small ``#!/bin/sh`` file that ``exec``\\ s this program,
keeping the PID the harness samples) where a ``benchmark_model`` binary would be.

**Real** (default; the ADB stand-in phone, tests/adb_standin.py, cannot run the Android binary): it
really loads the model with ai-edge-litert's interpreter (XNNPACK), really times ``--warmup_runs`` +
``--num_runs`` invocations on random inputs, and prints what LiteRT's C++ ``benchmark_model`` prints
(``INFO:`` prefixed parameter lines, two stats lines in microseconds, ``Inference timings in us: ...``,
the memory lines). The timings are the host's, not a phone's: tests check that figures travel end to
end, not their size.

**Replay** (``write_launcher(..., replay=golden_file)``; orchestration tests that need exact figures):
prints a golden ``benchmark_model`` output after ``sleep_s`` seconds, appends its argv and CPU affinity
to ``log`` and writes ``counter = (file, text)`` (e.g. a fixture RAPL counter) before printing. A model
whose path contains ``slow`` takes 30 s.

In both modes, like the real tool, it accepts unknown flags but reports ``Unconsumed cmdline flags:
...``, and a bad model (in replay mode: a path containing ``corrupt``) ends with ``ERROR: Failed to mmap
model ...``, ``Benchmarking failed.`` on stderr and exit code 1.
"""

from __future__ import annotations

import os
import resource
import shlex
import sys
import time
from pathlib import Path

FLAGS: dict[str, str] = {
    "graph": "", "num_threads": "-1", "num_runs": "50", "warmup_runs": "1", "min_secs": "1.0",
    "max_secs": "150.0", "warmup_min_secs": "0.5", "run_delay": "-1.0", "use_xnnpack": "true",
    "use_gpu": "false", "use_nnapi": "false", "enable_op_profiling": "false",
    "report_peak_memory_footprint": "false", "memory_footprint_check_interval_ms": "50",
    "result_file_path": "", "verbose": "false", "allow_fp16": "false",
}


def parse_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--name=value`` flags (benchmark_model style) -> (known flags, unconsumed arguments)."""
    flags = dict(FLAGS)
    unconsumed: list[str] = []
    for arg in argv:
        name, sep, value = arg.lstrip("-").partition("=")
        if arg.startswith("--") and name in FLAGS:
            flags[name] = value if sep else "true"
        else:
            unconsumed.append(arg)
    return flags, unconsumed


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _stats_line(us: list[float]) -> str:
    import numpy as np

    a = np.asarray(us)
    if len(a) > 1 and float(a.min()) == float(a.max()):
        return f"count={len(a)} curr={int(a[-1])} (all same)"
    return (f"count={len(a)} first={int(a[0])} curr={int(a[-1])} min={int(a.min())} max={int(a.max())} "
            f"avg={a.mean():g} std={int(a.std())} p5={int(np.percentile(a, 5))} "
            f"median={int(np.median(a))} p95={int(np.percentile(a, 95))}")


def _loop(invoke, min_runs: int, min_secs: float, max_secs: float, delay: float) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        invoke()
        times.append((time.perf_counter() - t0) * 1e6)
        elapsed = time.perf_counter() - start
        if (len(times) >= min_runs and elapsed >= min_secs) or elapsed >= max_secs:
            return times
        if delay > 0:
            time.sleep(delay)


def _fail_to_load(graph: Path, first: str) -> int:
    print(f"ERROR: {first}", file=sys.stderr)
    print(f"ERROR: Failed to mmap model {graph}", file=sys.stderr)
    print("Benchmarking failed.", file=sys.stderr, flush=True)
    return 1


def replay_golden(argv: list[str], golden: Path) -> int:
    """Replay mode (see the module docstring); settings come from the launcher's environment."""
    flags, unconsumed = parse_flags(argv)
    log = os.environ.get("EDGELR_FAKE_BM_LOG")
    if log:
        mask = sum(1 << cpu for cpu in os.sched_getaffinity(0))
        with open(log, "a") as fh:
            fh.write(" ".join(argv) + "\n" + f"pid {os.getpid()}'s current affinity mask: {mask:x}\n")
    if unconsumed:
        print(f"ERROR: Unconsumed cmdline flags: {' '.join(unconsumed)}", file=sys.stderr, flush=True)
    graph = Path(flags["graph"])
    if "corrupt" in graph.name:
        return _fail_to_load(graph, f"The model is not a valid Flatbuffer buffer: {graph}")
    time.sleep(30.0 if "slow" in graph.name else float(os.environ.get("EDGELR_FAKE_BM_SLEEP", "0")))
    counter = os.environ.get("EDGELR_FAKE_BM_COUNTER")
    if counter:
        Path(counter).write_text(os.environ.get("EDGELR_FAKE_BM_COUNTER_TEXT", "") + "\n")
    sys.stdout.write(golden.read_text())
    return 0


def main(argv: list[str]) -> int:
    golden = os.environ.get("EDGELR_FAKE_BM_REPLAY")
    if golden:
        return replay_golden(argv, Path(golden))
    t_start = time.perf_counter()
    rss0 = _rss_mb()
    flags, unconsumed = parse_flags(argv)
    info = lambda msg: print(f"INFO: {msg}", flush=True)  # noqa: E731
    info("STARTING!")
    info("Log parameter values verbosely: [0]")
    info(f"Min num runs: [{flags['num_runs']}]")
    info(f"Num threads: [{flags['num_threads']}]")
    info(f"Graph: [{flags['graph']}]")
    if unconsumed:
        print(f"ERROR: Unconsumed cmdline flags: {' '.join(unconsumed)}", file=sys.stderr, flush=True)
    graph = Path(flags["graph"])
    try:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        threads = int(flags["num_threads"])
        t0 = time.perf_counter()
        interp = Interpreter(model_path=str(graph), num_threads=threads if threads > 0 else None)
        interp.allocate_tensors()
        init_us = (time.perf_counter() - t0) * 1e6
    except Exception as exc:  # noqa: BLE001  the real tool reports any load failure the same way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail_to_load(graph, first)
    info(f"#threads used for CPU inference: [{max(int(flags['num_threads']), 1)}]")
    info(f"Loaded model {graph}")
    info("Created TensorFlow Lite XNNPACK delegate for CPU.")
    info(f"The input model file size (MB): {graph.stat().st_size / 1e6:g}")
    info(f"Initialized session in {init_us / 1000:g}ms.")
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        shape = [max(int(s), 1) for s in d["shape"]]
        if np.issubdtype(d["dtype"], np.integer):
            info_ = np.iinfo(d["dtype"])
            x = rng.integers(info_.min, info_.max, size=shape, endpoint=True).astype(d["dtype"])
        else:
            x = rng.standard_normal(shape).astype(d["dtype"])
        interp.set_tensor(d["index"], x)
    rss_init = _rss_mb()
    delay = float(flags["run_delay"])
    info(f"Running benchmark for at least {flags['warmup_runs']} iterations and at least "
         f"{flags['warmup_min_secs']} seconds but terminate if exceeding {flags['max_secs']} seconds.")
    warm = _loop(interp.invoke, int(flags["warmup_runs"]), float(flags["warmup_min_secs"]),
                 float(flags["max_secs"]), delay)
    info(_stats_line(warm))
    print(flush=True)
    info(f"Running benchmark for at least {flags['num_runs']} iterations and at least "
         f"{flags['min_secs']} seconds but terminate if exceeding {flags['max_secs']} seconds.")
    runs = _loop(interp.invoke, int(flags["num_runs"]), float(flags["min_secs"]), float(flags["max_secs"]),
                 delay)
    info(_stats_line(runs))
    print(flush=True)
    info(f"Inference timings in us: Init: {int(init_us)}, First inference: {int(warm[0])}, "
         f"Warmup (avg): {sum(warm) / len(warm):g}, Inference (avg): {sum(runs) / len(runs):g}")
    info("Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE "
         "to the actual memory footprint of the model at runtime. Take the information at your discretion.")
    info(f"Memory footprint delta from the start of the tool (MB): init={rss_init - rss0:g} "
         f"overall={_rss_mb() - rss0:g}")
    if flags["report_peak_memory_footprint"] == "true":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        info(f"Overall peak memory footprint (MB) via periodic monitoring: {peak:g}")
    del t_start
    return 0


def write_launcher(path: Path, python: str | None = None, *, replay: Path | None = None,
                   log: Path | None = None, sleep_s: float = 0.0,
                   counter: tuple[Path, str] | None = None) -> Path:
    """Write an executable ``#!/bin/sh`` "benchmark_model" that execs this program (same PID).

    With ``replay`` (a golden output file) it runs in replay mode: ``log``, ``sleep_s`` and ``counter``
    as in the module docstring.
    """
    env: dict[str, str] = {}
    if replay is not None:
        env.update(EDGELR_FAKE_BM_REPLAY=str(replay), EDGELR_FAKE_BM_SLEEP=f"{sleep_s:g}")
        if log is not None:
            env["EDGELR_FAKE_BM_LOG"] = str(log)
        if counter is not None:
            env.update(EDGELR_FAKE_BM_COUNTER=str(counter[0]), EDGELR_FAKE_BM_COUNTER_TEXT=counter[1])
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    path.write_text(f"#!/bin/sh\n{exports}exec {shlex.quote(python or sys.executable)} "
                    f"{shlex.quote(str(Path(__file__).resolve()))} \"$@\"\n")
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1:]))
