"""The long results frame every benchmark, regression run and report reads.

One row per (run, device, model, metric[, sample]). Units are fixed per metric (see :data:`METRICS`).
Per-run latency samples are rows of metric ``latency`` with ``sample`` = 0..N-1; aggregates have
``sample`` = -1. A metric that could not be measured has ``value`` NaN and says why in ``note``.
"""

from __future__ import annotations

import math
from typing import Any

SCHEMA_VERSION = 1

COLUMNS: list[str] = [
    "run_id",          # str: one id per `edgelr bench` / `regress` invocation (uuid hex, time-sortable prefix)
    "timestamp",       # str: ISO-8601 UTC time the measurement finished
    "device",          # str: inventory name
    "target",          # str: target profile name
    "transport",       # str: local | ssh | adb
    "model",           # str: model name (file stem unless named)
    "model_sha256",    # str
    "repeat",          # int: session (block) index 0..K-1 for --sessions K
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

# Added with the benchmark core (issue 5): the throttling canary's time, and helpers.
METRICS["canary"] = "ms"        # minimum time of the fixed sh canary workload before the run
METRICS["rail_energy_per_inference"] = "mJ"  # per power rail (Pixel ODPM), note "rail=NAME"
# `bench --profile-ops` (issue 15): a node's average time over the timed runs, ``sample`` = its run order,
# note "type=<node type> node=<name>" (edgelr.bench.run.op_note); one NaN row says why when the tool gives none.
METRICS["op_latency"] = "ms"


def op_note(node_type: str, name: str) -> str:
    """The note of an ``op_latency`` row: ``type=<node type> node=<node name>`` (the name last: it may hold
    anything); :func:`parse_op_note` reads it back."""
    return f"type={node_type} node={name}"


def parse_op_note(note: str) -> tuple[str, str]:
    """``(node_type, node_name)`` of an ``op_latency`` row's note ("" when it is not one)."""
    if not note.startswith("type="):
        return "", ""
    node_type, _, name = note[5:].partition(" node=")
    return node_type, name


def new_run_id() -> str:
    """A time-sortable run id: UTC time to the microsecond + 8 random hex digits,
    ``YYYYmmddTHHMMSSffffffZ-<8 hex>`` (e.g. ``20261123T050102123456Z-1a2b3c4d``). One format for every
    run that reaches the history (bench, regress, compress)."""
    import uuid
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:8]


def to_frame(rows: list[dict[str, object]]) -> "pandas.DataFrame":  # noqa: F821 - pandas imported lazily
    """Rows (dicts with the keys of :data:`COLUMNS`) -> a DataFrame with exactly those columns and dtypes."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("repeat", "sample", "threads"):
        frame[col] = frame[col].astype("int64")
    frame["value"] = frame["value"].astype("float64")
    for col in set(COLUMNS) - {"repeat", "sample", "threads", "value"}:
        frame[col] = frame[col].astype(object).where(frame[col].notna(), "").astype(str)
    return frame


def write_frame(frame: "pandas.DataFrame", path: "str | os.PathLike[str]") -> None:  # noqa: F821
    """Write ``frame`` atomically as ``.parquet`` or ``.csv`` (chosen by the suffix)."""
    import os
    from pathlib import Path

    from edgelr.errors import UsageError

    dest = Path(path)
    suffix = dest.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise UsageError(f"results file {dest} has suffix {suffix!r}; use .parquet or .csv")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def summarize(frame: "pandas.DataFrame") -> "list[dict[str, Any]]":  # noqa: F821
    """One row per model and device: the latency of its sessions and the other metrics.

    ``median_ms`` is the median of the session medians (``repeat`` = session); ``session_cv`` the
    between-session spread (robust CV: 1.4826 MAD / median of the session medians, in %), the figure
    that decides what a comparison can resolve; ``avg_ms``/``p90_ms`` pool the per-inference samples.
    """
    out: list[dict[str, Any]] = []
    for (model, dev), g in frame.groupby(["model", "device"], sort=False):
        def agg(metric: str, how: str = "mean") -> float:
            vals = g.loc[(g["metric"] == metric) & (g["sample"] == -1), "value"].dropna()
            if vals.empty:
                return math.nan
            return float(getattr(vals, how)())

        samples = g.loc[(g["metric"] == "latency") & (g["sample"] >= 0), "value"].dropna()
        per_session = []
        for _, sg in g.groupby(["run_id", "repeat"], sort=True):
            v = sg.loc[(sg["metric"] == "latency_median") & (sg["sample"] == -1), "value"].dropna()
            if not len(v):
                v = sg.loc[(sg["metric"] == "latency") & (sg["sample"] >= 0), "value"].dropna()
            if not len(v):
                v = sg.loc[(sg["metric"] == "latency_avg") & (sg["sample"] == -1), "value"].dropna()
            if len(v):
                per_session.append(float(v.median()))
        per_session.sort()
        median = _median(per_session) if per_session else math.nan
        cv = math.nan
        if len(per_session) >= 3 and median > 0:
            mad = _median([abs(x - median) for x in per_session])
            cv = 100.0 * 1.4826 * mad / median
        p90 = float(samples.quantile(0.9)) if len(samples) else agg("latency_p90")
        throttled = agg("throttled", "max")
        out.append({
            "model": model, "device": dev, "sessions": len(per_session), "repeats": len(per_session),
            "avg_ms": agg("latency_avg"), "median_ms": median,
            "session_cv": f"{cv:.1f}%" if math.isfinite(cv) else "", "p90_ms": p90,
            "peak_mb": agg("peak_memory", "max"), "energy_mj": agg("energy_per_inference"),
            "temp_c": agg("temp_after", "max"),
            "throttled": "" if math.isnan(throttled) else ("yes" if throttled else "no"),
            "samples": int(len(samples)),
        })
    return out


def _median(xs: "list[float]") -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def top_ops(frame: "pandas.DataFrame", n: int = 5) -> "list[dict[str, Any]]":  # noqa: F821
    """The ``n`` slowest ops of each model and device from ``op_latency`` rows (``bench --profile-ops``):
    median over sessions of each node's average time, its share of the model's summed op time, and
    ``why`` when the device's tool gave no per-op table (one row with ``op`` empty)."""
    out: list[dict[str, Any]] = []
    ops = frame[frame["metric"] == "op_latency"]
    for (model, dev), g in ops.groupby(["model", "device"], sort=False):
        timed = g[g["sample"] >= 0].dropna(subset=["value"])
        if timed.empty:
            notes = [x for x in g["note"] if x]
            out.append({"model": model, "device": dev, "rank": 0, "op": "", "type": "", "ms": math.nan,
                        "share": "", "why": notes[0] if notes else "no per-op timings"})
            continue
        per_node = timed.groupby(["sample", "note"], sort=False)["value"].median().reset_index()
        total = float(per_node["value"].sum())
        per_node = per_node.sort_values("value", ascending=False, kind="stable").head(n)
        for rank, row in enumerate(per_node.itertuples(index=False), 1):
            node_type, name = parse_op_note(str(row.note))
            share = 100.0 * float(row.value) / total if total > 0 else math.nan
            out.append({"model": model, "device": dev, "rank": rank, "op": name, "type": node_type,
                        "ms": float(row.value), "share": f"{share:.1f}%" if math.isfinite(share) else "", "why": ""})
    return out
