"""Queries over the history's long frame that reports need: runs, sessions, model identity, speed-ups.

Everything here reads a frame from :func:`edgelr.report.history.load` (never the store itself) and
returns small pandas frames; nothing writes. Latency is summarised by **session** (one fresh benchmark
process, :func:`edgelr.report.stats.session_values`), never by pooling the inferences of a run.

- :func:`session_table`: one latency value per (device, model, run, session).
- :func:`run_table`: one row per (device, model, run): session medians (median, min, max), p95,
  memory, energy, accuracy, size, the model's sha256.
- :func:`model_changes`: where a series' ``model_sha256`` changes between runs (a model swap, which
  must never read as a speed-up).
- :func:`latest_table`: one row per model and device, the host-side figures of ``compress`` runs
  (accuracy, size, parameters, MACs, recorded under device ``host``) joined onto the device rows.
- :func:`speedups`: a model's speed-up over its reference with the paired 95 % interval when both were
  measured in the same run on the same device, else the ratio of medians marked "not measured together".
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from edgelr.compress.names import BASELINE_SUFFIX
from edgelr.report.stats import paired_speedup, session_values

if TYPE_CHECKING:
    import pandas as pd

HOST_KINDS = ("compress",)
"""Run kinds whose rows describe a model on the host (accuracy, size, params, MACs), not a device run."""
HOST_METRICS = {"accuracy": "accuracy_pct", "model_size": "model_size_bytes", "params": "params", "macs": "macs"}
"""Model properties measured on the host: metric -> column of :func:`latest_table`."""
DEVICE_METRICS = {"peak_memory": "peak_memory_mb", "energy_per_inference": "energy_mj"}
REFERENCE_SEPARATORS = "-_."
"""``<ref><sep><suffix>`` names a variant of ``<ref>`` (``net-compressed``, ``clf_lr``): its speed-up reference."""
NOT_TOGETHER = "no interval: not measured together"

RUN_COLUMNS = ["device", "model", "run_id", "run_started", "kind", "model_sha256", "sessions", "n_samples",
               "latency_median_ms", "session_min_ms", "session_max_ms", "latency_p95_ms",
               "peak_memory_mb", "energy_mj", "accuracy_pct", "model_size_bytes", "params", "macs"]
CHANGE_COLUMNS = ["device", "model", "run_id", "run_started", "previous_run_id", "old_sha256", "new_sha256"]
SPEEDUP_COLUMNS = ["device", "model", "reference", "run_id", "reference_run_id", "speedup", "low", "high",
                   "blocks", "how", "text"]


def _host_mask(frame: "pd.DataFrame") -> "pd.Series":
    if "kind" in frame.columns:
        return frame["kind"].isin(HOST_KINDS)
    return frame["tool"].eq("compress") if "tool" in frame.columns else frame["device"].eq("host")


def session_table(frame: "pd.DataFrame") -> "pd.DataFrame":
    """One latency value (ms) per session: columns device, model, run_id, run_started, repeat, value."""
    import pandas as pd

    dev = frame[~_host_mask(frame)]
    parts = []
    for (device, model), part in dev.groupby(["device", "model"], sort=True):
        s = session_values(part)
        if len(s):
            parts.append(s.assign(device=device, model=model))
    cols = ["device", "model", "run_id", "run_started", "repeat", "value"]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    started = frame.drop_duplicates("run_id").set_index("run_id")["run_started"]
    out["run_started"] = out["run_id"].map(started)
    return out[cols].sort_values(["device", "model", "run_started", "repeat"]).reset_index(drop=True)


def _sha_per_run(frame: "pd.DataFrame") -> "pd.DataFrame":
    """(device, model, run_id) -> the model's sha256 in that run (most frequent non-empty value)."""
    have = frame[frame["model_sha256"].astype(str).str.len() > 0]
    if not len(have):
        import pandas as pd

        return pd.DataFrame(columns=["device", "model", "run_id", "model_sha256"])
    return (have.groupby(["device", "model", "run_id"])["model_sha256"]
            .agg(lambda s: s.value_counts().index[0]).reset_index())


def run_table(frame: "pd.DataFrame") -> "pd.DataFrame":
    """One row per (device, model, run), oldest run first (:data:`RUN_COLUMNS`).

    ``latency_median_ms`` is the median of the run's session values, ``session_min_ms`` /
    ``session_max_ms`` their range; ``latency_p95_ms`` the 95th percentile of the per-inference samples
    (else the median of the sessions' ``latency_p95`` rows). Host rows (``compress`` runs) appear with
    their accuracy/size and no latency.
    """
    import pandas as pd

    keys = ["device", "model", "run_id"]
    base = frame.drop_duplicates(keys)[keys + ["run_started", "kind"]]
    sess = session_table(frame)
    if len(sess):
        g = sess.groupby(keys)["value"]
        lat = pd.DataFrame({"sessions": g.size(), "latency_median_ms": g.median(),
                            "session_min_ms": g.min(), "session_max_ms": g.max()}).reset_index()
    else:
        lat = pd.DataFrame(columns=keys + ["sessions", "latency_median_ms", "session_min_ms", "session_max_ms"])
    samples = frame[(frame["metric"] == "latency") & (frame["sample"] >= 0) & frame["value"].notna()]
    if len(samples):
        g = samples.groupby(keys)["value"]
        smp = pd.DataFrame({"n_samples": g.size(), "p95_s": g.quantile(0.95)}).reset_index()
    else:
        smp = pd.DataFrame(columns=keys + ["n_samples", "p95_s"])
    out = base.merge(lat, on=keys, how="left").merge(smp, on=keys, how="left")
    p95 = frame[(frame["metric"] == "latency_p95") & frame["value"].notna()]
    p95 = p95.groupby(keys)["value"].median().rename("p95_a").reset_index() if len(p95) else \
        pd.DataFrame(columns=keys + ["p95_a"])
    out = out.merge(p95, on=keys, how="left")
    out["latency_p95_ms"] = out["p95_s"].astype(float).fillna(out["p95_a"].astype(float))
    for metric, col in {**DEVICE_METRICS, **HOST_METRICS}.items():
        part = frame[(frame["metric"] == metric) & frame["value"].notna()]
        m = part.groupby(keys)["value"].median().rename(col).reset_index() if len(part) else \
            pd.DataFrame(columns=keys + [col])
        out = out.merge(m, on=keys, how="left")
    out = out.merge(_sha_per_run(frame), on=keys, how="left")
    out["model_sha256"] = out["model_sha256"].fillna("")
    out["sessions"] = out["sessions"].fillna(0).astype(int)
    out["n_samples"] = out["n_samples"].fillna(0).astype(int)
    for c in RUN_COLUMNS:
        if c not in out.columns:
            out[c] = math.nan
        elif c not in ("device", "model", "run_id", "run_started", "kind", "model_sha256", "sessions", "n_samples"):
            out[c] = out[c].astype(float)
    return out[RUN_COLUMNS].sort_values(["device", "model", "run_started"]).reset_index(drop=True)


def model_changes(frame: "pd.DataFrame") -> "pd.DataFrame":
    """Every change of ``model_sha256`` within a (device, model) series, oldest first (:data:`CHANGE_COLUMNS`).

    Runs that recorded no sha256 (``compress`` rows, old stores) neither start nor hide a change: the
    comparison is with the last run that recorded one.
    """
    import pandas as pd

    sha = _sha_per_run(frame)
    if not len(sha):
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    started = frame.drop_duplicates("run_id").set_index("run_id")["run_started"]
    sha["run_started"] = sha["run_id"].map(started)
    rows: list[dict[str, Any]] = []
    for (device, model), part in sha.sort_values("run_started").groupby(["device", "model"], sort=True):
        prev_sha, prev_run = None, None
        for rec in part.to_dict("records"):
            if prev_sha is not None and rec["model_sha256"] != prev_sha:
                rows.append({"device": device, "model": model, "run_id": rec["run_id"],
                             "run_started": rec["run_started"], "previous_run_id": prev_run,
                             "old_sha256": prev_sha, "new_sha256": rec["model_sha256"]})
            prev_sha, prev_run = rec["model_sha256"], rec["run_id"]
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def reference_of(model: str, candidates: "set[str] | list[str]") -> str | None:
    """The model ``model`` is a variant of: the longest other name ``R`` with ``model == R + sep + ...``.

    ``net`` -> ``net (baseline)`` (compress's names, :mod:`edgelr.compress.names`); ``net-compressed`` ->
    ``net``; ``clf_lr`` -> ``clf``; None when no candidate prefixes it.
    """
    if f"{model}{BASELINE_SUFFIX}" in candidates:   # compress's outputs: net vs "net (baseline)"
        return f"{model}{BASELINE_SUFFIX}"
    best = None
    for r in candidates:
        if r != model and len(model) > len(r) + 1 and model.startswith(r) and model[len(r)] in REFERENCE_SEPARATORS:
            if best is None or len(r) > len(best):
                best = r
    return best


def speedup_of(frame: "pd.DataFrame", runs: "pd.DataFrame", device: str, model: str, reference: str
               ) -> dict[str, Any] | None:
    """Speed-up of ``model`` over ``reference`` on ``device`` (reference latency / model latency).

    The latest run holding sessions of both gives the paired estimate and its 95 % interval
    (:func:`edgelr.report.stats.compare_paired` over the per-block log-ratios); when they were never
    measured in the same run, the ratio of their latest session medians with ``how`` = ``"unpaired"``
    and the text ``"... [no interval: not measured together]"``. None if either has no latency.
    """

    mine = runs[(runs["device"] == device) & (runs["model"] == model) & (runs["sessions"] > 0)]
    ref = runs[(runs["device"] == device) & (runs["model"] == reference) & (runs["sessions"] > 0)]
    if not len(mine) or not len(ref):
        return None
    together = [r for r in mine["run_id"] if r in set(ref["run_id"])]
    base = {"device": device, "model": model, "reference": reference}
    if together:
        rid = together[-1]
        v, sp = paired_speedup(frame[frame["run_id"] == rid], model, reference, device=device)
        if sp["blocks"]:
            how = ("paired, t interval (< 6 blocks)" if "t interval" in v.note
                   else "paired, signed-rank interval" if math.isfinite(sp["low"]) else "paired, 1 block: no interval")
            return {**base, "run_id": rid, "reference_run_id": rid, "speedup": sp["speedup"], "low": sp["low"],
                    "high": sp["high"], "blocks": sp["blocks"], "how": how, "text": sp["text"]}
    a, b = mine.iloc[-1], ref.iloc[-1]
    s = float(b["latency_median_ms"]) / float(a["latency_median_ms"]) if a["latency_median_ms"] > 0 else math.nan
    return {**base, "run_id": a["run_id"], "reference_run_id": b["run_id"], "speedup": s, "low": math.nan,
            "high": math.nan, "blocks": 0, "how": "separate runs: no interval",
            "text": f"{s:.2f}x [{NOT_TOGETHER}]" if math.isfinite(s) else ""}


def speedups(frame: "pd.DataFrame", runs: "pd.DataFrame | None" = None) -> "pd.DataFrame":
    """Speed-up of every model over its reference (:func:`reference_of`) per device (:data:`SPEEDUP_COLUMNS`)."""
    import pandas as pd

    runs = run_table(frame) if runs is None else runs
    rows = []
    for device, part in runs[runs["sessions"] > 0].groupby("device", sort=True):
        names = sorted(set(part["model"]))
        for model in names:
            ref = reference_of(model, names)
            if ref is not None:
                r = speedup_of(frame, runs, device, model, ref)
                if r is not None:
                    rows.append(r)
    return pd.DataFrame(rows, columns=SPEEDUP_COLUMNS)


def latest_table(runs: "pd.DataFrame", speed: "pd.DataFrame") -> "pd.DataFrame":
    """One row per model and device: its latest measured run, host-side figures joined on.

    Device rows take their latency, memory and energy from the latest run of that (device, model) that
    measured latency (else its latest run); accuracy, size, parameters and MACs from that run when it
    has them, else from the latest ``compress`` (host) run of the same model name. A model known only
    from ``compress`` runs keeps one row with its host device. Columns: those of :func:`run_table`
    plus ``speedup``, ``speedup_low``, ``speedup_high``, ``speedup_vs``, ``speedup_text``,
    ``host_run_id`` (where the host figures came from).
    """
    import pandas as pd

    host = runs[runs["kind"].isin(HOST_KINDS)]
    dev = runs[~runs["kind"].isin(HOST_KINDS)]
    rows = []
    for (device, model), part in dev.groupby(["device", "model"], sort=True):
        measured = part[part["sessions"] > 0]
        rows.append((measured if len(measured) else part).iloc[-1].to_dict())
    on_device = {r["model"] for r in rows}
    for (device, model), part in host.groupby(["device", "model"], sort=True):
        if model not in on_device:
            rows.append(part.iloc[-1].to_dict())
    out = pd.DataFrame(rows, columns=RUN_COLUMNS)
    out["host_run_id"] = ""
    for i, rec in out.iterrows():
        h = host[host["model"] == rec["model"]]
        if not len(h) or rec["kind"] in HOST_KINDS:
            continue
        used = False
        for col in HOST_METRICS.values():
            if not np.isfinite(float(rec[col])):
                have = h[h[col].notna()]
                if len(have):
                    out.at[i, col] = float(have[col].iloc[-1])
                    used = True
                    hid = str(have["run_id"].iloc[-1])
        if used:
            out.at[i, "host_run_id"] = hid
    sp = speed.set_index(["device", "model"]) if len(speed) else None
    for c in ("speedup", "speedup_low", "speedup_high"):
        out[c] = math.nan
    out["speedup_vs"] = ""
    out["speedup_text"] = ""
    if sp is not None:
        for i, rec in out.iterrows():
            key = (rec["device"], rec["model"])
            if key in sp.index:
                s = sp.loc[key]
                out.at[i, "speedup"], out.at[i, "speedup_low"], out.at[i, "speedup_high"] = s["speedup"], s["low"], s["high"]
                out.at[i, "speedup_vs"], out.at[i, "speedup_text"] = s["reference"], s["text"]
    return out.sort_values(["model", "device"]).reset_index(drop=True)
