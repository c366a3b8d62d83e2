"""The long results frame every benchmark, regression run and report reads.

One row per (run, device, model, metric[, sample]). Units are fixed per metric (see :data:`METRICS`).
Per-run latency samples are rows of metric ``latency`` with ``sample`` = 0..N-1; aggregates have
``sample`` = -1. A metric that could not be measured has ``value`` NaN and says why in ``note``.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

COLUMNS: list[str] = [
    "run_id",          # str: one id per `edgelr bench` / `regress` invocation (uuid hex, time-sortable prefix)
    "timestamp",       # str: ISO-8601 UTC time the measurement finished
    "device",          # str: inventory name
    "target",          # str: target profile name
    "transport",       # str: local | ssh | adb
    "model",           # str: model name (file stem unless named)
    "model_sha256",    # str
    "repeat",          # int: 0..K-1 for --repeat K
    "metric",          # str: see METRICS
    "sample",          # int: per-run index for sampled metrics, -1 for aggregates
    "value",           # float (NaN when not measured)
    "unit",            # str
    "tool",            # str: benchmark_model | litert_runner | android_bench | compress
    "tool_version",    # str
    "threads",         # int
    "note",            # str: why a value is missing, raw-value hints, warnings
]

# metric -> unit
METRICS: dict[str, str] = {
    "init": "ms",
    "first_inference": "ms",
    "warmup_avg": "ms",
    "latency": "ms",            # per-run samples
    "latency_avg": "ms",
    "latency_min": "ms",
    "latency_max": "ms",
    "latency_std": "ms",
    "latency_median": "ms",
    "latency_p90": "ms",
    "latency_p95": "ms",
    "peak_memory": "MB",        # VmHWM of the benchmark process, sampled while it runs
    "tool_peak_memory": "MB",   # the tool's own figure (ru_maxrss based)
    "tool_memory_init": "MB",
    "tool_memory_overall": "MB",
    "temp_before": "C",
    "temp_after": "C",
    "throttled": "bool",
    "energy_per_inference": "mJ",
    "avg_power": "W",
    "accuracy": "%",
    "model_size": "bytes",
    "params": "count",
    "macs": "count",
}
