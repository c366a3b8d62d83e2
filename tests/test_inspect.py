"""`edgelr inspect`: format, shapes, exact per-layer parameters and MACs, totals, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EDGELR = [sys.executable, "-m", "edgelr.cli.main"]


@pytest.fixture(scope="module")
def keras3_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras 3 functional model with a residual add, saved as .keras."""
    from edgelr.tfcompat import keras3

    k = keras3()
    inp = k.Input((10, 10, 3), name="img")
    x = k.layers.Conv2D(8, 3, padding="same", name="c1")(inp)          # 3*3*3*8+8 = 224 params
    y = k.layers.Conv2D(8, 1, name="c2")(x)                            # 8*8+8 = 72
    x = k.layers.Add(name="add")([x, y])
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    out = k.layers.Dense(4, name="fc")(x)                              # 8*4+4 = 36
    model = k.Model(inp, out)
    path = tmp_path_factory.mktemp("inspect") / "m.keras"
    model.save(path)
    return path


def test_inspect_json_reports_exact_params_and_macs(keras3_model_path: Path) -> None:
    proc = subprocess.run([*EDGELR, "inspect", str(keras3_model_path), "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["format"] == "keras3-keras" and rep["translated"] is True
    assert rep["inputs"][0]["shape"] == [None, 10, 10, 3]
    layers = {r["layer"]: r for r in rep["layers"]}
    assert layers["c1"]["params"] == 224 and layers["c1"]["macs"] == 10 * 10 * 3 * 3 * 3 * 8
    assert layers["c2"]["params"] == 72 and layers["c2"]["macs"] == 10 * 10 * 8 * 8
    assert layers["fc"]["params"] == 36 and layers["fc"]["macs"] == 32
    assert layers["c1"]["methods"] == ["tucker2", "cp", "spatial-svd"]
    assert layers["c2"]["methods"] == ["svd"] and layers["fc"]["methods"] == ["svd"]
    assert layers["add"]["methods"] == [] and layers["add"]["params"] == 0
    assert rep["totals"]["params"] == 332
    assert rep["totals"]["macs"] == 21600 + 6400 + 32


def test_inspect_table_shows_totals(keras3_model_path: Path) -> None:
    proc = subprocess.run([*EDGELR, "inspect", str(keras3_model_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "332 parameters" in proc.stdout and "28,032 MACs" in proc.stdout
    assert "keras3-keras" in proc.stdout


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", np.random.default_rng(0).bytes(300)])
def test_corrupt_model_is_one_line_and_exit_1(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.keras"
    bad.write_bytes(content)
    proc = subprocess.run([*EDGELR, "inspect", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = [line for line in proc.stderr.splitlines() if line.startswith("edgelr:")]
    assert len(err) == 1 and str(bad) in err[0]
    assert "Traceback" not in proc.stderr


def test_missing_model_file(tmp_path: Path) -> None:
    proc = subprocess.run([*EDGELR, "inspect", str(tmp_path / "nope.keras")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "nope.keras" in proc.stderr
