"""What a reader of `edgelr report` sees: one row per model and device, plain numbers, speed-ups with
their interval, model swaps listed and marked, tables that fit, plots of sessions, and a report that
only reads the history (read-only media included)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgelr.report import history as H
from edgelr.report import render as R
from edgelr.report.stats import compare_paired, format_speedup, paired_sessions, parse_threshold

EDGELR = [sys.executable, "-m", "edgelr.cli.main"]
SHA = {"net-old": "a" * 64, "net": "b" * 64, "net-compressed": "c" * 64}
HOST = {"net": {"accuracy": 91.23, "model_size": 1_797_376, "params": 1_234_567, "macs": 98_765_432},
        "net-compressed": {"accuracy": 90.87, "model_size": 462_848, "params": 234_567, "macs": 12_345_678}}


def _sessions(model: str, device: str, sha: str, medians: list[float], rng: np.random.Generator,
              n: int = 10) -> pd.DataFrame:
    """K sessions (``repeat`` 0..K-1) of ``n`` inferences each, with each session's latency_median row."""
    rows = []
    for rep, med in enumerate(medians):
        x = med * rng.lognormal(0, 0.01, n)
        common = {"device": device, "model": model, "model_sha256": sha, "repeat": rep}
        rows += [{**common, "metric": "latency", "sample": i, "value": float(v)} for i, v in enumerate(x)]
        rows += [{**common, "metric": "latency_median", "sample": -1, "value": float(np.median(x))},
                 {**common, "metric": "latency_p95", "sample": -1, "value": float(np.percentile(x, 95))},
                 {**common, "metric": "peak_memory", "sample": -1, "value": 30.0 if "compressed" in model else 55.0}]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def hist(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """local: 4 bench runs of net and net-compressed together (6 sessions each); net's file changes at run 2
    (sha a... -> b..., 12 ms -> 9 ms). pi4: net and net-compressed in separate runs. One compress run (host)."""
    path = tmp_path_factory.mktemp("readable") / "history"
    rng = np.random.default_rng(1)
    run_ids = []
    for k in range(4):
        net_ms, net_sha = (12.0, SHA["net-old"]) if k < 2 else (9.0, SHA["net"])
        drift = rng.uniform(0.97, 1.03, 6)                # shared by both models of a block
        frame = pd.concat([_sessions("net", "local", net_sha, list(net_ms * drift), rng),
                           _sessions("net-compressed", "local", SHA["net-compressed"], list(6.0 * drift), rng)])
        run_ids.append(H.append_run(frame, path, kind="bench"))
    run_ids.append(H.append_run(_sessions("net", "pi4", SHA["net"], [40.0, 41.0, 39.5, 40.2, 40.8], rng), path,
                                kind="bench"))
    run_ids.append(H.append_run(_sessions("net-compressed", "pi4", SHA["net-compressed"], [20.0, 20.5, 19.8, 20.2, 20.1],
                                          rng), path, kind="bench"))
    host = pd.DataFrame([{"device": "host", "model": m, "metric": metric, "value": float(v), "sample": -1,
                          "tool": "compress"} for m, vals in HOST.items() for metric, v in vals.items()])
    run_ids.append(H.append_run(host, path, kind="compress"))
    H.record_comparisons(path, pd.DataFrame([{
        "run_id": run_ids[2], "baseline": f"previous:{run_ids[1]}", "model": "net-compressed", "device": "local",
        "metric": "latency", "status": "regression", "method": "mann-whitney-u (sessions)", "p_value": 0.0021,
        "effect": 0.104, "ci_low": 0.081, "ci_high": 0.127, "threshold": "5%", "n_current": 6, "n_baseline": 6,
        "current": 6.62, "baseline_value": 6.0, "change_run": run_ids[2], "note": "synthetic"}, {
        "run_id": run_ids[2], "baseline": f"previous:{run_ids[1]}", "model": "net", "device": "local",
        "metric": "latency", "status": "regression", "method": "mann-whitney-u (sessions)", "p_value": 0.0021,
        "effect": 0.2, "ci_low": 0.15, "ci_high": 0.25, "threshold": "5%", "n_current": 6, "n_baseline": 6,
        "current": 9.0, "baseline_value": 12.0, "change_run": run_ids[2], "note": "synthetic"}]))
    return {"path": path, "runs": run_ids}


# --------------------------------------------------------------------------------- parsing helpers
def md_sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def md_tables(section: str, raw: bool = False) -> list[list[list[str]]]:
    """Every Markdown table of a section as rows of cells (header first); wrapped cells joined unless ``raw``."""
    tables, cur = [], []
    for line in section.splitlines():
        if line.startswith("|"):
            if re.fullmatch(r"\|(---\|)+", line):
                continue
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            cells = cells if raw else [c.replace("<br>", " ") for c in cells]
            cur.append(cells)
        elif cur:
            tables.append(cur)
            cur = []
    if cur:
        tables.append(cur)
    return tables


def md_records(section: str, keys: int = 2) -> list[dict[str, str]]:
    """Join the parts of a split table back on their first ``keys`` columns (row order is kept)."""
    out: list[dict[str, str]] = []
    for t in md_tables(section):
        head, rows = t[0], t[1:]
        if not out:
            out = [dict(zip(head, r)) for r in rows]
        else:
            assert [r[:keys] for r in rows] == [[o[h] for h in head[:keys]] for o in out]
            for o, r in zip(out, rows):
                o.update(zip(head, r))
    return out


class Tables(HTMLParser):
    """Every <table> of an HTML page as rows of cell texts, and whether it sits in a scroll box."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.in_scroll: list[bool] = []
        self.stack: list[str] = []
        self.row: list[str] | None = None
        self.cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.stack.append(a.get("class", "") if tag == "div" else tag)
        if tag == "table":
            self.tables.append([])
            self.in_scroll.append("table-scroll" in self.stack[:-1])
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag: str) -> None:
        self.stack.pop()
        if tag in ("td", "th") and self.row is not None:
            self.row.append(self.cell or "")
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.tables[-1].append(self.row)
            self.row = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data


@pytest.fixture(scope="module")
def rendered(hist: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("out")
    md, page = out / "r.md", out / "r.html"
    proc = subprocess.run([*EDGELR, "report", str(hist["path"]), "--md", str(md), "--html", str(page)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return {"md": md.read_text(), "html": page.read_text(), "md_path": md}


# ------------------------------------------------------------------------------------------- tests
def test_one_row_per_model_and_device_with_host_figures_joined(rendered: dict) -> None:
    latest = md_records(md_sections(rendered["md"])["Latest results: one row per model and device"])
    keys = [(r["model"], r["device"]) for r in latest]
    assert keys == [("net", "local"), ("net", "pi4"), ("net-compressed", "local"), ("net-compressed", "pi4")]
    for r in latest:                                     # the compress (host) figures on every device row
        host = HOST[r["model"]]
        assert r["accuracy (%)"] == f"{host['accuracy']:.2f}"
        assert r["size (bytes)"] == f"{host['model_size']:,}"          # 1,797,376: not 1.797e+06
        assert r["params"] == f"{host['params']:,}" and r["MACs"] == f"{host['macs']:,}"
        assert re.fullmatch(r"\d+\.\d{1,2}", r["latency median (ms)"])
    assert "e+0" not in rendered["md"] and "e+0" not in rendered["html"].split("<figure")[0]
    by = {(r["model"], r["device"]): r for r in latest}
    assert float(by[("net", "pi4")]["latency median (ms)"]) == pytest.approx(40.2, abs=0.3)
    assert by[("net", "local")]["sha256"] == SHA["net"][:12]


def test_speedups_carry_their_interval_or_say_why_not(hist: dict, rendered: dict) -> None:
    latest = {(r["model"], r["device"]): r
              for r in md_records(md_sections(rendered["md"])["Latest results: one row per model and device"])}
    frame = H.load(hist["path"])
    cur, ref = paired_sessions(frame[frame["run_id"] == hist["runs"][3]], "net-compressed", "net", device="local")
    assert len(cur) == 6
    expected = format_speedup(compare_paired(cur, ref, parse_threshold("5%")))
    assert latest[("net-compressed", "local")]["speed-up [95 % CI]"] == f"{expected} vs net"
    m = re.fullmatch(r"(\d+\.\d\d)x \[(\d+\.\d\d), (\d+\.\d\d)\]", expected)
    assert m and float(m.group(2)) <= 1.5 <= float(m.group(3))          # 9 ms / 6 ms, drift shared per block
    pi4 = latest[("net-compressed", "pi4")]["speed-up [95 % CI]"]
    assert pi4.endswith("[no interval: not measured together] vs net") and pi4.startswith("2.0")
    assert latest[("net", "local")]["speed-up [95 % CI]"] == ""        # the reference itself
    # every speed-up anywhere in the report has an interval or the reason it has none
    for text in re.findall(r"\d+\.\d\dx(?: \[[^\]]*\])?", rendered["md"]):
        assert re.search(r"\[(\d+\.\d\d, \d+\.\d\d|no interval: [^\]]+)\]", text), text


def test_model_change_listed_and_marked(hist: dict, rendered: dict) -> None:
    sections = md_sections(rendered["md"])
    changes = md_records(sections["Model changes (sha256 of a model name on a device changed)"])
    assert len(changes) == 1
    c = changes[0]
    assert (c["model"], c["device"], c["run id"]) == ("net", "local", hist["runs"][2])
    assert c["sha256 change"] == f"{'a' * 12} → {'b' * 12}" and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", c["run (UTC)"])
    trend = md_records(sections["Per-run trend"], keys=3)
    marked = [r for r in trend if r["sha256"].endswith("(changed)")]
    assert [(r["model"], r["device"]) for r in marked] == [("net", "local")]
    regs = {r["model"]: r for r in md_records(sections["Regressions found"], keys=3)}
    assert regs["net"]["model changed (sha256)"] == f"{'a' * 12} → {'b' * 12}"
    assert regs["net-compressed"]["model changed (sha256)"] == ""


def test_effect_and_threshold_share_a_unit(rendered: dict) -> None:
    regs = {r["model"]: r for r in md_records(md_sections(rendered["md"])["Regressions found"], keys=3)}
    r = regs["net-compressed"]
    assert r["change [95 % CI]"] == "+10.4 % [+8.1 %, +12.7 %]" and r["threshold"] == "5 %"
    assert r["now vs baseline"] == "6.62 ms vs 6.00 ms"
    assert R.fmt_effect(-0.62, -0.8, -0.41, "0.5pt") == ("-0.62 pt [-0.80 pt, -0.41 pt]", "0.5 pt")


def test_markdown_tables_fit_and_html_tables_scroll(rendered: dict) -> None:
    for table in md_tables(rendered["md"], raw=True):
        for row in table:
            assert R.md_width(row) <= R.MD_WIDTH, row
    p = Tables()
    p.feed(rendered["html"])
    assert p.tables and all(p.in_scroll)
    assert re.search(r"\.table-scroll \{[^}]*overflow-x: auto", rendered["html"])
    latest = p.tables[1]                                  # after the model changes table
    head = latest[0]
    rows = [dict(zip(head, r)) for r in latest[1:]]
    assert [(r["model"], r["device"]) for r in rows] == [("net", "local"), ("net", "pi4"),
                                                         ("net-compressed", "local"), ("net-compressed", "pi4")]
    assert rows[0]["size (bytes)"] == "1,797,376"


def test_number_formats() -> None:
    assert [R.fmt_ms(v) for v in (1234.5, 123.4, 12.345, 1.2345, 0.12345, 0.0)] == \
        ["1,234", "123", "12.3", "1.23", "0.123", "0.000"]
    assert R.fmt_count(1.797376e6) == "1,797,376" and R.fmt_count(float("nan")) == ""


def test_latency_plot_shows_sessions_and_model_change(hist: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    seen: dict[str, dict] = {}
    original = matplotlib.figure.Figure.savefig

    def spy(fig, buf, **kw):  # type: ignore[no-untyped-def]
        ax = fig.axes[0]
        seen[ax.get_title()] = {"ylim": ax.get_ylim(), "xlim": ax.get_xlim(),
                                "texts": [t.get_text() for t in ax.texts],
                                "vlines": [ln.get_xdata()[0] for ln in ax.lines
                                           if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]
                                           and ln.get_color() == "purple"],
                                "dots": sum(len(ln.get_xdata()) for ln in ax.lines if ln.get_marker() == ".")}
        return original(fig, buf, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    frame = H.load(hist["path"])
    data = R.report_data(frame, H.load_comparisons(hist["path"]), H.runs(hist["path"]))
    R.figures(frame, data)
    net = seen["net on local: latency per run (each dot one session)"]
    assert net["dots"] == 4 * 6                           # every session of every run drawn
    assert net["vlines"] == [1.5]                         # between run 1 (sha a) and run 2 (sha b)
    assert any("model changed" in t and "a" * 12 in t and "b" * 12 in t for t in net["texts"])
    s = data["sessions"]
    vals = s[(s["model"] == "net") & (s["device"] == "local")]["value"]
    lo, hi = net["ylim"]
    assert 0 < lo < vals.min() and hi > vals.max() and lo > vals.min() - 0.5 * (vals.max() - vals.min())
    assert net["xlim"] == pytest.approx((-0.6, 3.6))
    comp = seen["net-compressed on local: latency per run (each dot one session)"]
    assert comp["vlines"] == [] and comp["dots"] == 24


def test_usage_errors_are_one_line_exit_2(hist: dict, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for args, start in [(["--since", "yesterdayish"], "edgelr: error: --since 'yesterdayish' is not understood"),
                        (["--since", "-3d"], "edgelr: error: --since '-3d' is not understood"),
                        (["--html", str(tmp_path)], "edgelr: error: --html"),
                        (["--md", str(tmp_path / "afile" / "r.md")], "edgelr: error: --md"),
                        (["--md", str(tmp_path / "r"), "--html", str(tmp_path / "r")], "edgelr: error: --html and --md")]:
        proc = subprocess.run([*EDGELR, "report", str(hist["path"]), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith(start) and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stdout == ""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_report_leaves_the_history_untouched(hist: dict, tmp_path: Path) -> None:
    copy = tmp_path / "history"
    shutil.copytree(hist["path"], copy)
    before = _digest(copy)
    proc = subprocess.run([*EDGELR, "report", str(copy), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["latest"]
    assert _digest(copy) == before


def test_report_modules_have_no_write_path() -> None:
    import edgelr.cli.report
    import edgelr.report.series

    for mod in (R, edgelr.report.series, edgelr.cli.report):
        src = Path(mod.__file__).read_text()
        for word in ("INSERT", "CREATE", "UPDATE ", "append_run", "record_", "mark_baseline", "begin_run",
                     "_write_tx", "write=True", "sqlite3"):
            assert word not in src, (mod.__name__, word)


def test_report_on_read_only_media(hist: dict, tmp_path: Path) -> None:
    """A read-only bind mount in a private mount namespace (needs root and unshare; skipped otherwise)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    shutil.copytree(hist["path"], src / "history")
    ro.mkdir()
    out = tmp_path / "out"
    script = (f"mount --bind {src} {ro} && mount -o remount,ro,bind {ro} && touch {ro}/probe 2>/dev/null "
              f"&& echo WRITABLE; {' '.join(EDGELR)} report {ro}/history --md {out}/r.md --json")
    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=240)
    if "mount" in proc.stderr and ("permission denied" in proc.stderr.lower() or "not permitted" in proc.stderr):
        pytest.skip(f"cannot make a read-only mount here: {proc.stderr.strip()[:200]}")
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"cannot unshare a mount namespace: {proc.stderr.strip()[:200]}")
    assert "WRITABLE" not in proc.stdout
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["latest"]) == 4 and data["model_changes"][0]["new_sha256"] == SHA["net"]
    assert (out / "r.md").exists()
