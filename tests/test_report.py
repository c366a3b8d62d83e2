"""`edgelr report`: tables, JSON, Markdown with PNGs, and an HTML report that a real headless Chromium renders."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgelr.report import history as H
from edgelr.report.stats import compare_run

EDGELR = [sys.executable, "-m", "edgelr.cli.main"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _bench_frame(median: float, mem: float, rng: np.random.Generator, model: str = "clf",
                 device: str = "pi4") -> pd.DataFrame:
    lat = pd.DataFrame({"device": device, "model": model, "metric": "latency", "sample": range(20),
                        "value": median * rng.lognormal(0, 0.03, 20)})
    agg = pd.DataFrame({"device": device, "model": model, "metric": ["peak_memory", "energy_per_inference"],
                        "sample": -1, "value": [mem, 0.5 * median]})
    return pd.concat([lat, agg], ignore_index=True)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 regress runs of clf on pi4 (a 10% step at run 5, flagged) + one compress run with accuracies."""
    hist = tmp_path_factory.mktemp("hist") / "history"
    rng = np.random.default_rng(0)
    for k, med in enumerate([10.0] * 5 + [11.0] * 3):
        rid = H.append_run(pd.concat([_bench_frame(med, 40.0 + 0.5 * k, rng), _bench_frame(3.0, 20.0, rng, "clf_lr")]),
                           hist, kind="regress", suite="nightly")
        if k == 0:
            H.mark_baseline(hist, rid)
        comps = compare_run(H.load(hist), H.baselines(hist), rid, {"latency": "5%", "peak_memory": "10%"})
        H.record_comparisons(hist, comps)
    H.append_run(pd.DataFrame({"device": "host", "model": ["clf", "clf_lr"] * 2,
                               "metric": ["accuracy"] * 2 + ["model_size"] * 2,
                               "value": [88.0, 87.4, 1.2e6, 3.1e5]}), hist, kind="compress")
    return hist


def test_report_json_tables(history: Path) -> None:
    proc = subprocess.run([*EDGELR, "report", str(history), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    latest = {(r["device"], r["model"]): r for r in data["latest"]}
    assert latest[("pi4", "clf")]["latency_median_ms"] == pytest.approx(11.0, rel=0.03)
    assert latest[("pi4", "clf")]["peak_memory_mb"] == 43.5 and latest[("pi4", "clf")]["n_samples"] == 20
    regs = data["regressions"]
    assert {r["model"] for r in regs} == {"clf"} and len(regs) == 3          # runs 5, 6, 7 vs the accepted run 0
    assert regs[-1]["change_run"] == data["runs"][5]["run_id"]                # step located at run 5
    # the compress run's host figures sit on the device rows: one row per model and device, no "host" row
    assert sorted(latest) == [("pi4", "clf"), ("pi4", "clf_lr")]
    assert latest[("pi4", "clf_lr")]["accuracy_pct"] == 87.4 and latest[("pi4", "clf_lr")]["model_size_bytes"] == 3.1e5
    assert latest[("pi4", "clf_lr")]["latency_median_ms"] == pytest.approx(3.0, rel=0.05)
    # one session per run: a speed-up with no interval, said so
    assert latest[("pi4", "clf_lr")]["speedup_text"].endswith("[no interval: 1 session(s)]")
    assert latest[("pi4", "clf_lr")]["speedup_vs"] == "clf"
    assert len(data["runs"]) == 9
    since = json.loads(subprocess.run([*EDGELR, "report", str(history), "--json", "--since", "2999-01-01"],
                                      capture_output=True, text=True, timeout=120).stdout)
    assert since["latest"] == [] and since["runs"] == []


def test_report_missing_history_is_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([*EDGELR, "report", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("edgelr: error: no history store at")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_markdown_and_html_reports_render_in_headless_chromium(history: Path, tmp_path: Path) -> None:
    md, page = tmp_path / "out" / "report.md", tmp_path / "out" / "report.html"
    proc = subprocess.run([*EDGELR, "report", str(history), "--md", str(md), "--html", str(page)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # clf and clf_lr: latency per run each; memory + energy trend for pi4; the trade-off view
    assert len(links) == 5
    for link in links:
        w, h = _png_size((md.parent / link).read_bytes())
        assert w > 200 and h > 100
    assert "| pi4 | clf |" in text and "Regressions found" in text

    html = page.read_text()
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == 5 and "<script" not in html and "http" not in html.replace("http-equiv", "")
    sizes = [_png_size(base64.b64decode(u)) for u in uris]

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make test installs it)")
    # a probe page: the report plus a script that records each image's decoded size into the DOM
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'imgcheck';
  out.textContent = JSON.stringify([...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]));
  document.body.appendChild(out);
});</script></body>"""))
    common = [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1500:]
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', dom.stdout, re.S)
    assert m, dom.stdout[-1500:]
    decoded = json.loads(m.group(1))
    assert [(w, h) for ok, w, h in decoded] == sizes and all(ok for ok, _, _ in decoded)

    shot = tmp_path / "shot.png"
    run = subprocess.run([*common, "--window-size=1200,3000", f"--screenshot={shot}", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-1500:]
    assert _png_size(shot.read_bytes()) == (1200, 3000)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(str(shot))
    assert pixels.std() > 0.05                     # not blank
    assert (pixels[..., :3].sum(axis=2) < 1.5).mean() > 0.01   # dark pixels: text and plot lines
