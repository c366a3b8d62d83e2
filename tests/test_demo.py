"""`edgelr demo` runs the whole product on the built-in example and reports original vs compressed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "edgelr.cli.main", "demo", "--out", str(out), "--epochs", "12",
                           "--runs", "5", "--sessions", "6", "--json"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["accuracy"] > 85.0
    rows = {r["model"]: r for r in summary["summary"]}
    orig, comp = rows["original"], rows["compressed"]
    assert comp["macs"] < orig["macs"] and comp["params"] < orig["params"]
    assert comp["tflite_bytes"] < orig["tflite_bytes"]
    assert comp["latency_median_ms"] > 0 and orig["latency_median_ms"] > 0
    assert orig["peak_memory_mb"] > 0
    sp = summary["speedup"]       # measured over interleaved sessions, with its interval
    assert sp["blocks"] == 6 and sp["low"] <= sp["speedup"] <= sp["high"] and "x [" in comp["speedup"]
    for name in ("model.tflite", "baseline.tflite", "model.keras", "report.json", "layers.csv"):
        assert (out / "compressed" / name).stat().st_size > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert (out / "report.md").exists()
