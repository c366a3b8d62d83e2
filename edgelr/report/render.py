"""Reports of the results history: tables (pandas), figures (matplotlib, Agg), Markdown and HTML.

Everything is derived from one long frame (:func:`edgelr.report.history.load`) plus the stored
regression verdicts: :func:`report_data` builds the tables (numbers, for ``--json``), :func:`display_tables`
turns them into what a reader sees (plain number formats, units in the headers, speed-ups with their
95 % interval), :func:`figures` draws the PNGs, and :func:`render_markdown` / :func:`render_html` write
them. The HTML is self-contained (PNGs embedded as base64 ``data:`` URIs; tables scroll sideways inside
their own box instead of being clipped); the Markdown links PNGs written beside it (``<stem>_figures/``)
and splits a table that would be wider than :data:`MD_WIDTH` characters into several with the key
columns repeated. matplotlib is imported only inside :func:`figures`. Reports only read the history.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgelr.errors import EdgelrError
from edgelr.report import series as S
from edgelr.report.stats import segment_l1

if TYPE_CHECKING:
    import pandas as pd

LAST_RUNS = 40
"""The latency-per-run figure shows this many most recent runs per (device, model)."""
MD_WIDTH = 110
"""Widest Markdown table row (characters, longest line of a wrapped cell); wider tables are split."""
MD_CELL_WRAP = 28
"""Text cells longer than this are wrapped with ``<br>`` in Markdown."""
SHA_CHARS = 12


@dataclass
class Figure:
    """One rendered figure."""

    key: str          # file-name friendly id
    title: str
    png: bytes


# --------------------------------------------------------------------------------------------- data
def report_data(frame: "pd.DataFrame", comparisons: "pd.DataFrame", runs: "pd.DataFrame") -> dict[str, "pd.DataFrame"]:
    """The report's tables, as numbers.

    Returns
    -------
    dict of DataFrame
        ``latest``: one row per model and device (:func:`edgelr.report.series.latest_table`: latest
        run, latency median of the session medians and their range, p95, sessions, speed-up over the
        reference model with its interval, memory MB, energy mJ, and the host-side accuracy %, size
        bytes, params, MACs of ``compress`` runs joined on). ``trend``: one row per device, model and
        run (:func:`edgelr.report.series.run_table`). ``sessions``: one latency value per session.
        ``speedups``, ``model_changes`` (sha256 changes within a series), ``regressions`` (stored
        verdicts with status regression, plus ``model_changed``), ``runs`` (the runs table).
    """
    runs_tbl = S.run_table(frame)
    speed = S.speedups(frame, runs_tbl)
    changes = S.model_changes(frame)
    latest = S.latest_table(runs_tbl, speed)
    trend = runs_tbl[~runs_tbl["kind"].isin(S.HOST_KINDS)].reset_index(drop=True)
    regressions = comparisons[comparisons["status"] == "regression"].copy() if len(comparisons) else comparisons.copy()
    regressions["model_changed"] = [_model_changed(r, runs_tbl, changes) for r in regressions.to_dict("records")]
    return {"latest": latest, "trend": trend, "sessions": S.session_table(frame), "speedups": speed,
            "model_changes": changes, "regressions": regressions.reset_index(drop=True), "runs": runs,
            "ops": latest_top_ops(frame)}


def latest_top_ops(frame: "pd.DataFrame", n: int = 5) -> "pd.DataFrame":
    """Each model's slowest ops on each device from its latest run with ``op_latency`` rows
    (:func:`edgelr.bench.frame.top_ops`); columns model, device, rank, op, type, ms, share, why, run_id."""
    import pandas as pd

    from edgelr.bench.frame import top_ops

    cols = ["model", "device", "rank", "op", "type", "ms", "share", "why", "run_id"]
    ops = frame[frame["metric"] == "op_latency"] if len(frame) else frame
    rows: list[dict[str, Any]] = []
    for (_model, _dev), g in ops.groupby(["model", "device"], sort=True):
        last = max(g["run_id"])  # run ids sort by time
        rows += [{**r, "run_id": last} for r in top_ops(g[g["run_id"] == last], n)]
    return pd.DataFrame(rows, columns=cols)


def _model_changed(comp: dict[str, Any], runs_tbl: "pd.DataFrame", changes: "pd.DataFrame") -> str:
    """"old -> new" when the compared runs (baseline and current, or the located step) used different models."""
    sel = runs_tbl[(runs_tbl["model"] == comp.get("model")) & (runs_tbl["device"] == comp.get("device"))]
    sha = dict(zip(sel["run_id"], sel["model_sha256"]))
    base_run = str(comp.get("baseline") or "").split(":", 1)[-1]
    old, new = sha.get(base_run, ""), sha.get(comp.get("run_id"), "")
    if old and new and old != new:
        return f"{old[:SHA_CHARS]} → {new[:SHA_CHARS]}"
    step = comp.get("change_run")
    if step and len(changes):
        hit = changes[(changes["model"] == comp.get("model")) & (changes["device"] == comp.get("device"))
                      & (changes["run_id"] == step)]
        if len(hit):
            h = hit.iloc[-1]
            return f"{h['old_sha256'][:SHA_CHARS]} → {h['new_sha256'][:SHA_CHARS]} (at the step)"
    return ""


# ----------------------------------------------------------------------------------------- formats
def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def fmt_ms(v: Any) -> str:
    """A latency or energy figure with sensible decimals: 1,234 / 123 / 12.3 / 1.23 / 0.123 / 0.0012."""
    if not _finite(v):
        return ""
    v = float(v)
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.01 or a == 0:
        return f"{v:.3f}"
    return f"{v:.2g}" if a < 1e-4 else f"{v:.4f}"


def fmt_count(v: Any) -> str:
    """An integer figure with thousands separators: 1,797,376."""
    return f"{int(round(float(v))):,}" if _finite(v) else ""


def fmt_fixed(v: Any, decimals: int) -> str:
    return f"{float(v):,.{decimals}f}" if _finite(v) else ""


def fmt_time(iso: Any, seconds: bool = False) -> str:
    """ISO UTC time -> ``YYYY-MM-DD HH:MM`` (``:SS`` with ``seconds``)."""
    s = "" if iso is None else str(iso)
    return s[:19 if seconds else 16].replace("T", " ")


def fmt_sha(sha: Any) -> str:
    return str(sha or "")[:SHA_CHARS]


def fmt_effect(effect: Any, low: Any, high: Any, threshold: Any) -> tuple[str, str]:
    """(effect [95 % interval], threshold) in one unit: % for relative thresholds, points for ``pt``."""
    thr = str(threshold or "").strip()
    rel = not thr.endswith("pt")
    if rel:
        num = thr.rstrip("%").strip()
        thr_txt = f"{float(num):g} %" if _is_number(num) else thr

        def one(x: Any) -> str:
            return f"{100 * float(x):+.1f} %" if _finite(x) else ""
    else:
        num = thr[:-2].strip()
        thr_txt = f"{float(num):g} pt" if _is_number(num) else thr

        def one(x: Any) -> str:
            return f"{float(x):+.2f} pt" if _finite(x) else ""
    text = one(effect)
    if text and _finite(low) and _finite(high):
        text += f" [{one(low)}, {one(high)}]"
    elif text:
        text += " [no interval]"
    return text, thr_txt


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


_UNITS = {"latency": "ms", "latency_median": "ms", "latency_avg": "ms", "peak_memory": "MB",
          "energy_per_inference": "mJ", "accuracy": "%", "model_size": "bytes"}


def _fmt_metric(metric: str, v: Any) -> str:
    if not _finite(v):
        return ""
    if metric in ("model_size", "params", "macs"):
        return fmt_count(v)
    if metric == "accuracy":
        return f"{float(v):.2f} %"
    if metric == "peak_memory":
        return f"{float(v):,.1f} MB"
    return f"{fmt_ms(v)} {_UNITS.get(metric, '')}".strip()


# ------------------------------------------------------------------------------------- display tables
DISPLAY = [
    ("changes", "Model changes (sha256 of a model name on a device changed)", 2),
    ("latest", "Latest results: one row per model and device", 2),
    ("regressions", "Regressions found", 3),
    ("speedups", "Speed-ups over the reference model", 2),
    ("trend", "Per-run trend", 3),
    ("ops", "Slowest ops per model (latest `bench --profile-ops` run)", 2),
]
"""(key, heading, number of key columns repeated when a wide Markdown table is split)."""
OPTIONAL = {"changes", "ops"}
"""Tables left out when they have no rows."""


def display_tables(data: dict[str, "pd.DataFrame"]) -> dict[str, "pd.DataFrame"]:
    """The tables as a reader sees them: strings, plain number formats, units in the column names."""
    import pandas as pd

    out: dict[str, pd.DataFrame] = {}
    rows = []
    for r in data["latest"].to_dict("records"):
        rng = (f"{fmt_ms(r['session_min_ms'])}–{fmt_ms(r['session_max_ms'])}"
               if r["sessions"] > 1 and _finite(r["session_min_ms"]) else "")
        sp = r["speedup_text"]
        if sp:
            sp = f"{sp} vs {r['speedup_vs']}"
        rows.append({"model": r["model"], "device": r["device"],
                     "latency median (ms)": fmt_ms(r["latency_median_ms"]),
                     "speed-up [95 % CI]": sp,
                     "accuracy (%)": fmt_fixed(r["accuracy_pct"], 2),
                     "size (bytes)": fmt_count(r["model_size_bytes"]),
                     "sessions": fmt_count(r["sessions"]) if r["sessions"] else "",
                     "session medians (ms)": rng, "p95 (ms)": fmt_ms(r["latency_p95_ms"]),
                     "peak memory (MB)": fmt_fixed(r["peak_memory_mb"], 1), "energy (mJ)": fmt_ms(r["energy_mj"]),
                     "params": fmt_count(r["params"]), "MACs": fmt_count(r["macs"]),
                     "run (UTC)": fmt_time(r["run_started"]), "sha256": fmt_sha(r["model_sha256"])})
    out["latest"] = _drop_empty(pd.DataFrame(rows), keep=2)

    ch = data["model_changes"]
    out["changes"] = pd.DataFrame([{"model": r["model"], "device": r["device"], "run (UTC)": fmt_time(r["run_started"], seconds=True),
                                    "run id": r["run_id"],
                                    "sha256 change": f"{fmt_sha(r['old_sha256'])} → {fmt_sha(r['new_sha256'])}"}
                                   for r in ch.to_dict("records")])

    regs = data["regressions"]
    started = dict(zip(data["runs"]["run_id"], data["runs"]["started_at"])) if len(data["runs"]) else {}
    rows = []
    for r in regs.to_dict("records"):
        eff, thr = fmt_effect(r.get("effect"), r.get("ci_low"), r.get("ci_high"), r.get("threshold"))
        step = r.get("change_run") or ""
        rows.append({"model": r["model"], "device": r["device"], "metric": r["metric"],
                     "change [95 % CI]": eff, "threshold": thr,
                     "p": f"{float(r['p_value']):.2g}" if _finite(r.get("p_value")) else "",
                     "now vs baseline": (f"{_fmt_metric(r['metric'], r.get('current'))} vs "
                                         f"{_fmt_metric(r['metric'], r.get('baseline_value'))}"),
                     "model changed (sha256)": r.get("model_changed", ""),
                     "run (UTC)": fmt_time(started.get(r["run_id"], r["run_id"])),
                     "step began (UTC)": fmt_time(started.get(step, step)) if step else "",
                     "method": r.get("method") or "", "note": r.get("note") or ""})
    out["regressions"] = _drop_empty(pd.DataFrame(rows), keep=3)

    rows = [{"model": r["model"], "device": r["device"], "vs": r["reference"], "speed-up [95 % CI]": r["text"],
             "blocks": fmt_count(r["blocks"]) if r["blocks"] else "", "how": r["how"],
             "run (UTC)": fmt_time(started.get(r["run_id"], r["run_id"]))} for r in data["speedups"].to_dict("records")]
    out["speedups"] = pd.DataFrame(rows)

    changed = {(r["device"], r["model"], r["run_id"]) for r in ch.to_dict("records")}
    rows = []
    for r in data["trend"].to_dict("records"):
        sha = fmt_sha(r["model_sha256"])
        if (r["device"], r["model"], r["run_id"]) in changed:
            sha += " (changed)"
        rows.append({"device": r["device"], "model": r["model"], "run (UTC)": fmt_time(r["run_started"]),
                     "sessions": fmt_count(r["sessions"]) if r["sessions"] else "",
                     "latency median (ms)": fmt_ms(r["latency_median_ms"]),
                     "session medians (ms)": (f"{fmt_ms(r['session_min_ms'])}–{fmt_ms(r['session_max_ms'])}"
                                              if r["sessions"] > 1 else ""),
                     "p95 (ms)": fmt_ms(r["latency_p95_ms"]), "peak memory (MB)": fmt_fixed(r["peak_memory_mb"], 1),
                     "energy (mJ)": fmt_ms(r["energy_mj"]), "sha256": sha})
    out["trend"] = _drop_empty(pd.DataFrame(rows), keep=3)

    out["ops"] = pd.DataFrame([{"model": r["model"], "device": r["device"], "rank": str(r["rank"]) if r["op"] else "",
                                "op type": r["type"], "op": r["op"] or f"none: {r['why']}",
                                "avg time (ms)": fmt_ms(r["ms"]), "share of op time": r["share"],
                                "run (UTC)": fmt_time(started.get(r["run_id"], r["run_id"]))}
                               for r in data["ops"].to_dict("records")])
    return out


def _drop_empty(df: "pd.DataFrame", keep: int) -> "pd.DataFrame":
    """Drop columns (after the first ``keep``) that are empty in every row."""
    if not len(df):
        return df
    cols = [c for i, c in enumerate(df.columns) if i < keep or (df[c].astype(str) != "").any()]
    return df[cols]


# ------------------------------------------------------------------------------------------- figures
def figures(frame: "pd.DataFrame", data: dict[str, "pd.DataFrame"], dpi: int = 90) -> list[Figure]:
    """Render the report's PNG figures (matplotlib, Agg backend).

    Per (device, model) with latency: the latency per run, each run's session medians as dots with
    their median and min–max whiskers, regressions, step changes and model changes (sha256) marked.
    Memory and energy per run per device when measured, and accuracy vs latency and size when models
    have an accuracy. Every axis is fitted to its data.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    out: list[Figure] = []
    trend = data["trend"]
    regs = data["regressions"]
    sess = data["sessions"]
    changes = data["model_changes"]

    def save(fig: Any, key: str, title: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        out.append(Figure(key, title, buf.getvalue()))

    def mark_changes(ax: Any, run_ids: list[str], ch: "pd.DataFrame", color: str = "purple",
                     prefix: str = "") -> None:
        pos = {r: i for i, r in enumerate(run_ids)}
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        for k, c in enumerate(ch.to_dict("records")):
            x = pos.get(c["run_id"])
            if x is None:
                continue
            ax.axvline(x - 0.5, color=color, lw=1.6, label="model changed (sha256)" if k == 0 and not prefix else None)
            ax.text(x - 0.45, 0.97, f"{prefix}model changed\n{fmt_sha(c['old_sha256'])} →\n{fmt_sha(c['new_sha256'])}",
                    transform=trans, fontsize=6.5, color=color, va="top", ha="left")

    for (device, model), t in trend.groupby(["device", "model"], sort=True):
        t = t[t["latency_median_ms"].notna()].tail(LAST_RUNS).reset_index(drop=True)
        if not len(t):
            continue
        run_ids = t["run_id"].tolist()
        s = sess[(sess["device"] == device) & (sess["model"] == model)]
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        rng = np.random.default_rng(0)
        allv: list[float] = []
        for i, rid in enumerate(run_ids):
            v = s.loc[s["run_id"] == rid, "value"].to_numpy(float)
            if v.size:
                ax.plot(i + rng.uniform(-0.12, 0.12, v.size), v, ".", color="0.55", ms=4,
                        label="session median" if i == 0 else None)
                allv.extend(v.tolist())
        med = t["latency_median_ms"].to_numpy(float)
        lo = t["session_min_ms"].to_numpy(float)
        hi = t["session_max_ms"].to_numpy(float)
        lo, hi = np.where(np.isfinite(lo), lo, med), np.where(np.isfinite(hi), hi, med)
        x = np.arange(len(t))
        ax.errorbar(x, med, yerr=[med - lo, hi - med], fmt="o-", color="tab:blue", ms=5, lw=1.2, capsize=4,
                    label="median of sessions, min–max")
        allv.extend(med.tolist())
        bad = set(regs[(regs["model"] == model) & (regs["device"] == device)
                       & regs["metric"].isin(["latency", "latency_median", "latency_avg"])]["run_id"]) if len(regs) else set()
        idx = [i for i, r in enumerate(run_ids) if r in bad]
        if idx:
            ax.plot(idx, hi[idx], "v", color="red", ms=10, label="regression")
        mine = changes[(changes["device"] == device) & (changes["model"] == model)
                       & changes["run_id"].isin(run_ids)] if len(changes) else changes
        swapped = {run_ids.index(r) for r in mine["run_id"]} if len(mine) else set()
        steps = [st for st in (segment_l1(med) if len(med) >= 4 else []) if st not in swapped]
        for k, st in enumerate(steps):    # a step at a model change is the other model: marked as that
            ax.axvline(st - 0.5, color="orange", ls="--", lw=1.2, label="step change" if k == 0 else None)
        mark_changes(ax, run_ids, mine)
        _fit_y(ax, allv, headroom=0.45 if len(mine) else 0.08)
        ax.set_xlim(-0.6, len(t) - 0.4)
        _run_ticks(ax, t["run_started"].tolist(), t["sessions"].tolist())
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{model} on {device}: latency per run (each dot one session)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        save(fig, f"latency_{device}_{model}", f"{model} on {device}: latency per run")

    for col, label, key in [("peak_memory_mb", "peak memory (MB)", "memory"),
                            ("energy_mj", "energy per inference (mJ)", "energy")]:
        if col not in trend or not trend[col].notna().any():
            continue
        for device, t in trend[trend[col].notna()].groupby("device", sort=True):
            fig, ax = plt.subplots(figsize=(7.5, 3.0))
            order = t.drop_duplicates("run_id").sort_values("run_started")
            pos = {r: i for i, r in enumerate(order["run_id"])}
            vals: list[float] = []
            for model, tm in t.groupby("model", sort=True):
                line, = ax.plot([pos[r] for r in tm["run_id"]], tm[col].to_numpy(float), "o-", ms=4, label=str(model))
                vals.extend(tm[col].tolist())
                ch = changes[(changes["device"] == device) & (changes["model"] == model)] if len(changes) else changes
                for c in ch.to_dict("records"):
                    if c["run_id"] in pos:
                        ax.axvline(pos[c["run_id"]] - 0.5, color=line.get_color(), lw=1.4, ls=":",
                                   label=f"{model}: model changed {fmt_sha(c['old_sha256'])} → {fmt_sha(c['new_sha256'])}")
            _fit_y(ax, vals)
            ax.set_xlim(-0.6, len(order) - 0.4)
            _run_ticks(ax, order["run_started"].tolist())
            ax.set_ylabel(label)
            ax.set_title(f"{device}: {label} per run", fontsize=10)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            save(fig, f"{key}_{device}", f"{device}: {label} per run")

    latest = data["latest"]
    acc = latest[latest["accuracy_pct"].notna()] if len(latest) else latest
    if len(acc):
        with_lat = acc[acc["latency_median_ms"].notna()]
        by_model = acc.drop_duplicates("model")
        with_size = by_model[by_model["model_size_bytes"].notna()]
        panels = [p for p in [(with_lat, "latency_median_ms", 1.0, "latency median (ms)", "accuracy vs latency", True),
                              (with_size, "model_size_bytes", 1e6, "model size (MB)", "accuracy vs model size", False)]
                  if len(p[0])]
        if panels:
            fig, axes = plt.subplots(1, len(panels), figsize=(4.9 * len(panels), 3.8), squeeze=False)
            models = sorted(set(acc["model"]))
            devices = sorted(set(with_lat["device"]))
            colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
            marks = {d: "osD^vP*X"[i % 8] for i, d in enumerate(devices)}
            for ax, (df, col, scale, xlabel, title, per_device) in zip(axes[0], panels):
                xs = df[col].to_numpy(float) / scale
                ys = df["accuracy_pct"].to_numpy(float)
                for xv, yv, m, d in zip(xs, ys, df["model"], df["device"]):
                    ax.scatter([xv], [yv], s=60, alpha=0.8, color=colors[m], marker=marks[d] if per_device else "o")
                _fit_y(ax, ys.tolist())
                _fit_x(ax, xs.tolist())
                ax.set_xlabel(xlabel)
                ax.set_ylabel("accuracy (%)")
                ax.set_title(title, fontsize=9)
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], color=colors[m], marker="o", ls="", label=m) for m in models]
            if len(devices) > 1:
                handles += [Line2D([], [], color="0.4", marker=marks[d], ls="", label=f"on {d}") for d in devices]
            axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            save(fig, "tradeoff", "accuracy vs latency and size (latest per model)")
    return out


def _pad(vals: list[float], headroom: float) -> tuple[float, float] | None:
    v = np.asarray([x for x in vals if _finite(x)], float)
    if not v.size:
        return None
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo
    if span <= 0:
        span = abs(hi) * 0.1 or 1.0
    return lo - 0.08 * span, hi + max(0.08, headroom) * span


def _fit_y(ax: Any, vals: list[float], headroom: float = 0.08) -> None:
    """y-limits from the data with a margin (never a forced 0; room above for labels)."""
    lim = _pad(vals, headroom)
    if lim:
        ax.set_ylim(*lim)


def _fit_x(ax: Any, vals: list[float]) -> None:
    lim = _pad(vals, 0.08)
    if lim:
        ax.set_xlim(*lim)


def _run_ticks(ax: Any, started: list[Any], sessions: list[Any] | None = None, most: int = 16) -> None:
    """At most ``most`` x labels: run start ``MM-DD HH:MM`` (and ``K=`` sessions)."""
    n = len(started)
    step = max(1, math.ceil(n / most))
    ticks = list(range(0, n, step))
    labels = [str(started[i])[5:16].replace("T", " ") + (f"\nK={int(sessions[i])}" if sessions is not None else "")
              for i in ticks]
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=45 if sessions is None else 0, ha="right" if sessions is None else "center",
                       fontsize=7)
    ax.set_xlabel("run (UTC)" + (", K = sessions" if sessions is not None else ""), fontsize=8)


# ------------------------------------------------------------------------------------------ Markdown
def _md_cell(v: Any) -> str:
    s = "" if v is None else str(v)
    s = s.replace("|", "\\|").replace("\n", " ")
    if len(s) <= MD_CELL_WRAP:
        return s
    lines, cur = [], ""
    for word in s.split(" "):
        if cur and len(cur) + 1 + len(word) > MD_CELL_WRAP:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    lines.append(cur)
    return "<br>".join(lines)


def md_width(cells: list[str]) -> int:
    """Characters a Markdown table row takes on screen: the longest line of each cell plus separators."""
    return sum(max(len(x) for x in c.split("<br>")) for c in cells) + 3 * len(cells) + 1


def _md_table(df: "pd.DataFrame", keys: int = 2, max_rows: int = 500, width: int = MD_WIDTH) -> str:
    """A Markdown table; split into several (the first ``keys`` columns repeated) when wider than ``width``."""
    if not len(df):
        return "_(none)_\n"
    cols = list(df.columns)
    recs = df.head(max_rows).to_dict("records")
    cells = {c: [_md_cell(c)] + [_md_cell(r[c]) for r in recs] for c in cols}
    colw = {c: max(len(line) for v in cells[c] for line in v.split("<br>")) + 3 for c in cols}
    key_cols, rest = cols[:keys], cols[keys:]
    groups: list[list[str]] = []
    cur: list[str] = []
    base = sum(colw[c] for c in key_cols) + 1
    for c in rest:
        if cur and base + sum(colw[x] for x in cur) + colw[c] > width:
            groups.append(cur)
            cur = []
        cur.append(c)
    groups.append(cur)
    parts = []
    for k, g in enumerate(groups):
        use = key_cols + g
        lines = ["| " + " | ".join(cells[c][0] for c in use) + " |", "|" + "---|" * len(use)]
        for i in range(1, len(recs) + 1):
            lines.append("| " + " | ".join(cells[c][i] for c in use) + " |")
        if len(groups) > 1:
            parts.append(f"_(part {k + 1} of {len(groups)})_\n")
        parts.append("\n".join(lines) + "\n")
    if len(df) > max_rows:
        parts.append(f"_({len(df) - max_rows} more rows in `edgelr report --json`)_\n")
    return "\n".join(parts)


def _intro(data: dict[str, "pd.DataFrame"]) -> list[str]:
    n_changes = len(data["model_changes"])
    n = len(data["runs"])
    lines = [f"{n} run{'' if n == 1 else 's'} in the history. Latency is summarised per session (one fresh process); "
             f"a run's latency is the median of its session medians. Speed-ups are reference latency / model "
             f"latency with a 95 % interval when both models were measured in the same run on the same device."]
    if n_changes:
        lines.append(f"**{n_changes} model change(s)**: the sha256 of a model name changed between runs; "
                     f"a latency step at such a run is a different model, not a speed-up or a regression.")
    return lines


def render_markdown(data: dict[str, "pd.DataFrame"], figs: list[Figure], out: str | os.PathLike[str],
                    title: str = "edgelr results report") -> Path:
    """Write Markdown with the tables and PNGs in ``<stem>_figures/`` beside it; return the path."""
    out = Path(out)
    fig_dir = out.parent / f"{out.stem}_figures"
    shown = display_tables(data)
    parts = [f"# {title}\n", *(line + "\n" for line in _intro(data))]
    for key, head, keys in DISPLAY:
        if key in OPTIONAL and not len(shown[key]):
            continue
        parts.append(f"## {head}\n")
        parts.append(_md_table(shown[key], keys=keys))
    parts.append("## Figures\n")
    for f in figs:
        name = f"{_safe(f.key)}.png"
        _atomic_write(fig_dir / name, f.png)
        parts.append(f"### {f.title}\n\n![{f.title}]({fig_dir.name}/{name})\n")
    _atomic_write(out, "\n".join(parts).encode())
    return out


# ---------------------------------------------------------------------------------------------- HTML
def _html_table(df: "pd.DataFrame", keys: int = 2) -> str:
    esc = html.escape
    if not len(df):
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{esc(str(c))}</th>" for c in df.columns)
    body = []
    for rec in df.to_dict("records"):
        cells = []
        for k, c in enumerate(df.columns):
            v = "" if rec[c] is None else str(rec[c])
            cls = "key" if k < keys else "num" if v and (v[0].isdigit() or v[0] in "+-−") and len(v) < 40 else "txt"
            cells.append(f'<td class="{cls}">{esc(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-scroll"><table class="tbl"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table></div>")


def render_html(data: dict[str, "pd.DataFrame"], figs: list[Figure], out: str | os.PathLike[str],
                title: str = "edgelr results report") -> Path:
    """Write one self-contained HTML file (figures as base64 data URIs); return the path."""
    out = Path(out)
    esc = html.escape
    shown = display_tables(data)
    body = [f"<h1>{esc(title)}</h1>"]
    for line in _intro(data):
        body.append("<p>" + esc(line).replace("**", "") + "</p>")
    for key, head, keys in DISPLAY:
        if key in OPTIONAL and not len(shown[key]):
            continue
        body.append(f'<h2 id="{key}">{esc(head)}</h2>')
        body.append(_html_table(shown[key], keys))
    body.append("<h2>Figures</h2>")
    for f in figs:
        b64 = base64.b64encode(f.png).decode()
        body.append(f'<figure id="fig-{esc(_safe(f.key))}"><img class="figure" alt="{esc(f.title)}" '
                    f'src="data:image/png;base64,{b64}"><figcaption>{esc(f.title)}</figcaption></figure>')
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 100%; }}
.table-scroll {{ overflow-x: auto; max-width: 100%; margin-bottom: 1em; }}
table.tbl {{ border-collapse: collapse; font-size: 12px; }}
table.tbl th, table.tbl td {{ border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; }}
table.tbl th {{ background: #f3f3f3; white-space: nowrap; }}
table.tbl td.num {{ text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }}
table.tbl td.key {{ text-align: left; white-space: nowrap; }}
table.tbl td.txt {{ text-align: left; min-width: 8em; max-width: 32em; overflow-wrap: break-word; }}
figure {{ margin: 1em 0; }} img.figure {{ max-width: 100%; height: auto; }}
</style></head><body>
{os.linesep.join(body)}
</body></html>
"""
    _atomic_write(out, doc.encode())
    return out


# --------------------------------------------------------------------------------------------- files
def _safe(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise EdgelrError(f"cannot write the report file {path}: {exc.strerror or exc}; pass a writable "
                          f"path to --html/--md") from None


def to_json(data: dict[str, "pd.DataFrame"]) -> dict[str, list[dict[str, Any]]]:
    """The report's tables as JSON-ready lists of records (NaN -> None)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for k, df in data.items():
        recs = df.astype(object).where(df.notna(), None).to_dict("records") if len(df) else []
        out[k] = recs
    return out


def write_report(history: str | os.PathLike[str], html_out: str | os.PathLike[str] | None = None,
                 md_out: str | os.PathLike[str] | None = None, since: str | None = None) -> dict[str, "pd.DataFrame"]:
    """Load ``history`` and write the HTML and/or Markdown report; return the tables (``edgelr demo`` calls this).

    Only reads the history (:func:`edgelr.report.history.load`, ``runs``, ``load_comparisons``).
    """
    from edgelr.report import history as H

    iso = H.parse_since(since)
    frame = H.load(history, since=iso)
    runs = H.runs(history)
    comps = H.load_comparisons(history)
    if iso:
        runs = runs[runs["started_at"] >= iso].reset_index(drop=True)
        comps = comps[comps["run_id"].isin(set(runs["run_id"]))]
    data = report_data(frame, comps, runs)
    if html_out or md_out:
        figs = figures(frame, data)
        if html_out:
            render_html(data, figs, html_out)
        if md_out:
            render_markdown(data, figs, md_out)
    return data
