"""Reports of the results history: tables (pandas), figures (matplotlib, Agg), Markdown and HTML.

Everything is derived from one long frame (:func:`edgelr.report.history.load`) plus the stored
regression verdicts: :func:`report_data` builds the tables, :func:`figures` the PNGs, and
:func:`render_markdown` / :func:`render_html` write them. The HTML is self-contained (PNGs embedded as
base64 ``data:`` URIs); the Markdown links PNGs written beside it (``<stem>_figures/``).
matplotlib is imported only inside :func:`figures`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgelr.report.stats import segment_l1

if TYPE_CHECKING:
    import pandas as pd

LAST_RUNS = 8
"""Distributions are drawn for this many most recent runs per (device, model)."""


@dataclass
class Figure:
    """One rendered figure."""

    key: str          # file-name friendly id
    title: str
    png: bytes


def _latency_rows(frame: "pd.DataFrame") -> "pd.DataFrame":
    lat = frame[(frame["metric"] == "latency") & (frame["sample"] >= 0)]
    return lat[lat["value"].notna()]


def report_data(frame: "pd.DataFrame", comparisons: "pd.DataFrame", runs: "pd.DataFrame") -> dict[str, "pd.DataFrame"]:
    """The report's tables.

    Returns
    -------
    dict of DataFrame
        ``latest`` (one row per device and model: last run, latency median/p95 ms, n samples,
        peak_memory MB, energy mJ, accuracy %, model_size bytes), ``trend`` (one row per device, model
        and run: latency median/q25/q75 ms, peak_memory, energy), ``regressions`` (stored verdicts with
        status regression), ``compressed`` (models with an accuracy: accuracy, size, latency),
        ``runs`` (the runs table).
    """
    import pandas as pd

    lat = _latency_rows(frame)
    keys = ["device", "model", "run_id", "run_started"]
    if len(lat):
        g = lat.groupby(keys)["value"]
        trend = pd.DataFrame({"latency_median_ms": g.median(), "latency_q25_ms": g.quantile(0.25),
                              "latency_q75_ms": g.quantile(0.75), "latency_p95_ms": g.quantile(0.95),
                              "n_samples": g.size()}).reset_index()
    else:
        trend = pd.DataFrame(columns=keys + ["latency_median_ms", "latency_q25_ms", "latency_q75_ms",
                                             "latency_p95_ms", "n_samples"])
    # runs without samples: use the aggregates
    agg = frame[frame["metric"].isin(["latency_median", "latency_avg"]) & frame["value"].notna()]
    if len(agg):
        a = agg.groupby(keys)["value"].median().rename("latency_median_ms").reset_index()
        have = set(map(tuple, trend[keys].values.tolist())) if len(trend) else set()
        a = a[[tuple(r) not in have for r in a[keys].values.tolist()]]
        if len(a):
            trend = pd.concat([trend, a], ignore_index=True)
    for metric, col in [("peak_memory", "peak_memory_mb"), ("energy_per_inference", "energy_mj"),
                        ("accuracy", "accuracy_pct"), ("model_size", "model_size_bytes")]:
        part = frame[(frame["metric"] == metric) & frame["value"].notna()]
        if len(part):
            m = part.groupby(keys)["value"].median().rename(col).reset_index()
            trend = trend.merge(m, on=keys, how="outer")
        else:
            trend[col] = np.nan
    trend = trend.sort_values(["device", "model", "run_started"]).reset_index(drop=True)
    latest = trend.groupby(["device", "model"], sort=True).tail(1).reset_index(drop=True)
    latest = latest[[c for c in ["device", "model", "run_id", "run_started", "latency_median_ms", "latency_p95_ms",
                                 "n_samples", "peak_memory_mb", "energy_mj", "accuracy_pct", "model_size_bytes"]
                     if c in latest.columns]]
    regressions = comparisons[comparisons["status"] == "regression"].copy() if len(comparisons) else comparisons
    # compressed models: every model with an accuracy figure, with its size and best-known latency
    acc = frame[(frame["metric"] == "accuracy") & frame["value"].notna()]
    comp_rows = []
    for model, part in acc.groupby("model", sort=True):
        last_run = part["run_started"].max()
        size = frame[(frame["model"] == model) & (frame["metric"] == "model_size") & frame["value"].notna()]
        mlat = lat[lat["model"] == model]
        comp_rows.append({"model": model, "accuracy_pct": float(part[part["run_started"] == last_run]["value"].median()),
                          "model_size_bytes": float(size["value"].iloc[-1]) if len(size) else math.nan,
                          "latency_median_ms": float(mlat.groupby("run_started")["value"].median().iloc[-1])
                          if len(mlat) else math.nan,
                          "params": _last(frame, model, "params"), "macs": _last(frame, model, "macs")})
    compressed = pd.DataFrame(comp_rows, columns=["model", "accuracy_pct", "model_size_bytes", "latency_median_ms",
                                                  "params", "macs"])
    return {"latest": latest, "trend": trend, "regressions": regressions, "compressed": compressed, "runs": runs}


def _last(frame: "pd.DataFrame", model: str, metric: str) -> float:
    p = frame[(frame["model"] == model) & (frame["metric"] == metric) & frame["value"].notna()]
    return float(p["value"].iloc[-1]) if len(p) else math.nan


def figures(frame: "pd.DataFrame", data: dict[str, "pd.DataFrame"], dpi: int = 90) -> list[Figure]:
    """Render the report's PNG figures (matplotlib, Agg backend).

    One latency-over-time and one distribution figure per (device, model) with latency data; memory and
    energy trends per device when measured; the accuracy-vs-latency-vs-size view when models have
    an accuracy.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out: list[Figure] = []
    trend = data["trend"]
    regs = data["regressions"]
    lat = _latency_rows(frame)

    def save(fig: Any, key: str, title: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        out.append(Figure(key, title, buf.getvalue()))

    for (device, model), t in trend.groupby(["device", "model"], sort=True):
        t = t[t["latency_median_ms"].notna()].reset_index(drop=True)
        if not len(t):
            continue
        x = np.arange(len(t))
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        y = t["latency_median_ms"].to_numpy(float)
        if "latency_q25_ms" in t and t["latency_q25_ms"].notna().any():
            ax.fill_between(x, t["latency_q25_ms"].to_numpy(float), t["latency_q75_ms"].to_numpy(float),
                            alpha=0.25, color="tab:blue", label="IQR")
        ax.plot(x, y, "o-", color="tab:blue", ms=4, label="median")
        bad = set(regs[(regs["model"] == model) & (regs["device"] == device)
                       & regs["metric"].isin(["latency", "latency_median", "latency_avg"])]["run_id"]) if len(regs) else set()
        idx = [i for i, r in enumerate(t["run_id"]) if r in bad]
        if idx:
            ax.plot(idx, y[idx], "v", color="red", ms=10, label="regression")
        steps = segment_l1(y) if len(y) >= 4 else []
        for s in steps:
            ax.axvline(s - 0.5, color="orange", ls="--", lw=1.2, label="step change" if s == steps[0] else None)
        ax.set_xticks(x)
        ax.set_xticklabels(_run_labels(t["run_started"]), rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{model} on {device}: latency per run")
        ax.legend(fontsize=7, loc="best")
        save(fig, f"latency_{device}_{model}", f"{model} on {device}: latency over time")

        samples = lat[(lat["model"] == model) & (lat["device"] == device)]
        last = t["run_id"].tolist()[-LAST_RUNS:]
        groups = [samples.loc[samples["run_id"] == r, "value"].to_numpy(float) for r in last]
        keep = [(r, g) for r, g in zip(last, groups) if g.size]
        if keep:
            fig, ax = plt.subplots(figsize=(7.5, 3.0))
            ax.boxplot([g for _, g in keep], showfliers=True)
            ax.set_xticks(range(1, len(keep) + 1))
            started = dict(zip(t["run_id"], t["run_started"]))
            ax.set_xticklabels(_run_labels([started[r] for r, _ in keep]), rotation=45, ha="right", fontsize=7)
            ax.set_ylabel("latency (ms)")
            ax.set_title(f"{model} on {device}: latency distribution, last {len(keep)} runs")
            save(fig, f"dist_{device}_{model}", f"{model} on {device}: latency distributions")

    for col, label, key in [("peak_memory_mb", "peak memory (MB)", "memory"), ("energy_mj", "energy per inference (mJ)", "energy")]:
        if col not in trend or not trend[col].notna().any():
            continue
        for device, t in trend[trend[col].notna()].groupby("device", sort=True):
            fig, ax = plt.subplots(figsize=(7.5, 3.0))
            order = sorted(set(t["run_started"]))
            pos = {r: i for i, r in enumerate(order)}
            for model, tm in t.groupby("model", sort=True):
                ax.plot([pos[r] for r in tm["run_started"]], tm[col].to_numpy(float), "o-", ms=4, label=str(model))
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(_run_labels(order), rotation=45, ha="right", fontsize=7)
            ax.set_ylabel(label)
            ax.set_title(f"{device}: {label} per run")
            ax.legend(fontsize=7)
            save(fig, f"{key}_{device}", f"{device}: {label} trend")

    comp = data["compressed"]
    if len(comp):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.8))
        sizes = comp["model_size_bytes"].to_numpy(float)
        area = (40 + 400 * sizes / np.nanmax(sizes)) if np.isfinite(sizes).any() else np.full(len(comp), 80.0)
        area = np.nan_to_num(area, nan=80.0)
        acc = comp["accuracy_pct"].to_numpy(float)
        lat_ms = comp["latency_median_ms"].to_numpy(float)
        for ax, xs, xlabel in [(ax1, lat_ms, "latency median (ms)"), (ax2, sizes / 1e6, "model size (MB)")]:
            ok = np.isfinite(xs)
            ax.scatter(xs[ok], acc[ok], s=area[ok], alpha=0.6, c=np.arange(len(comp))[ok], cmap="tab10",
                       vmin=0, vmax=9)
            for xv, yv, name in zip(xs[ok], acc[ok], comp["model"][ok]):
                ax.annotate(str(name), (xv, yv), fontsize=7, xytext=(5, 5), textcoords="offset points")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy (%)")
            if not ok.any():
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax1.set_title("accuracy vs latency (marker area = size)", fontsize=9)
        ax2.set_title("accuracy vs model size", fontsize=9)
        save(fig, "tradeoff", "compressed models vs baselines: accuracy, latency, size")
    return out


def _run_labels(started: Any) -> list[str]:
    """Short x-axis labels from ISO start times: ``MM-DD HH:MM:SS``."""
    return [str(v)[5:19].replace("T", " ") for v in started]


def _md_table(df: "pd.DataFrame", max_rows: int = 200) -> str:
    if not len(df):
        return "_(none)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in df.head(max_rows).to_dict("records"):
        lines.append("| " + " | ".join(_fmt(rec[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")


SECTIONS = [("latest", "Latest results per device and model"), ("regressions", "Regressions found"),
            ("compressed", "Compressed models vs baselines"), ("trend", "Per-run trend")]


def render_markdown(data: dict[str, "pd.DataFrame"], figs: list[Figure], out: str | os.PathLike[str],
                    title: str = "edgelr results report") -> Path:
    """Write Markdown with the tables and PNGs in ``<stem>_figures/`` beside it; return the path."""
    out = Path(out)
    fig_dir = out.parent / f"{out.stem}_figures"
    if figs:
        fig_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n", f"{len(data['runs'])} runs in the history.\n"]
    for key, head in SECTIONS:
        parts.append(f"## {head}\n")
        parts.append(_md_table(data[key]))
    parts.append("## Figures\n")
    for f in figs:
        name = f"{_safe(f.key)}.png"
        _atomic_write(fig_dir / name, f.png)
        parts.append(f"### {f.title}\n\n![{f.title}]({fig_dir.name}/{name})\n")
    _atomic_write(out, "\n".join(parts).encode())
    return out


def render_html(data: dict[str, "pd.DataFrame"], figs: list[Figure], out: str | os.PathLike[str],
                title: str = "edgelr results report") -> Path:
    """Write one self-contained HTML file (figures as base64 data URIs); return the path."""
    out = Path(out)
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f"<p>{len(data['runs'])} runs in the history.</p>"]
    for key, head in SECTIONS:
        body.append(f"<h2>{esc(head)}</h2>")
        df = data[key]
        body.append(df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0,
                               classes="tbl") if len(df) else "<p><em>(none)</em></p>")
    body.append("<h2>Figures</h2>")
    for f in figs:
        b64 = base64.b64encode(f.png).decode()
        body.append(f'<figure id="fig-{esc(_safe(f.key))}"><img class="figure" alt="{esc(f.title)}" '
                    f'src="data:image/png;base64,{b64}"><figcaption>{esc(f.title)}</figcaption></figure>')
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table.tbl {{ border-collapse: collapse; font-size: 12px; margin-bottom: 1em; }}
table.tbl th, table.tbl td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
figure {{ margin: 1em 0; }} img.figure {{ max-width: 100%; }}
</style></head><body>
{os.linesep.join(body)}
</body></html>
"""
    _atomic_write(out, doc.encode())
    return out


def _safe(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def to_json(data: dict[str, "pd.DataFrame"]) -> dict[str, list[dict[str, Any]]]:
    """The report's tables as JSON-ready lists of records (NaN -> None)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for k, df in data.items():
        recs = df.astype(object).where(df.notna(), None).to_dict("records") if len(df) else []
        out[k] = recs
    return out


def write_report(history: str | os.PathLike[str], html_out: str | os.PathLike[str] | None = None,
                 md_out: str | os.PathLike[str] | None = None, since: str | None = None) -> dict[str, "pd.DataFrame"]:
    """Load ``history`` and write the HTML and/or Markdown report; return the tables (``edgelr demo`` calls this)."""
    from edgelr.report import history as H

    frame = H.load(history, since=since)
    runs = H.runs(history)
    comps = H.load_comparisons(history)
    if since:
        runs = runs[runs["started_at"] >= H.parse_since(since)]
        comps = comps[comps["run_id"].isin(set(runs["run_id"]))]
    data = report_data(frame, comps, runs)
    if html_out or md_out:
        figs = figures(frame, data)
        if html_out:
            render_html(data, figs, html_out)
        if md_out:
            render_markdown(data, figs, md_out)
    return data
