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


def test_low_rank_columns_and_verdict_weights_and_data_aware(tf_keras) -> None:
    """A Dense layer planted at rank 3 needs rank 3 for 1 % weight error; a compact model gets the verdict."""
    import numpy as np

    from edgelr.inspect import inspect_model, rank_for_error

    assert rank_for_error(np.array([3.0, 4.0, 0.0]), 0.01) == 2 and rank_for_error(np.array([4.0, 3.0]), 0.9) == 1
    rng = np.random.default_rng(0)
    inp = tf_keras.Input((48,))
    big = tf_keras.layers.Dense(64, use_bias=False, name="big")
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="head")(big(inp)))
    big.set_weights([rng.standard_normal((48, 3)) @ rng.standard_normal((3, 64))])
    rep = inspect_model(model)
    rows = {r["layer"]: r for r in rep["layers"]}
    assert (rows["big"]["rank_1pct"], rows["big"]["rank_5pct"], rows["big"]["full_rank"]) == (3, 3, 48)
    assert rows["big"]["error"] == "weights"
    assert rep["verdict"]["text"].startswith("worth compressing")  # 3072 weights -> 3 * 112 at 30 % weight error
    # data-aware: inputs living in a 2-D subspace make the layer's OUTPUT rank 2 (2000 rows: the calibration's
    # shrinkage towards the identity, which spreads a little energy over the other directions, stays small)
    x = (rng.standard_normal((2000, 2)) @ rng.standard_normal((2, 48))).astype("float32")
    rows = {r["layer"]: r for r in inspect_model(model, calibration=x)["layers"]}
    assert rows["big"]["error"] == "output" and rows["big"]["rank_5pct"] == 2
    # the head (48 -> 2, full rank 2) cannot shrink: a model of it alone has little to gain
    small = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="only")(inp))
    assert inspect_model(small)["verdict"]["text"].startswith("little to gain: this model is already compact")
