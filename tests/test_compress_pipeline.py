"""``edgelr.compress.pipeline.compress`` on an LSTM model and on a model nothing can factorize."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _sequences(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 10, 6) sequences; the class is the channel (of 3) with the largest mean over time."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, 10, 6)).astype(np.float32)
    y = x[:, :, :3].mean(1).argmax(-1).astype(np.int64)
    return x, y


@pytest.fixture(scope="module")
def lstm_case():
    from edgelr.data import Dataset
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.utils.set_random_seed(0)
    xt, yt = _sequences(600, 0)
    xv, yv = _sequences(100, 1)
    xs, ys = _sequences(200, 2)
    inp = k2.Input((10, 6))
    h = k2.layers.LSTM(32, name="lstm")(inp)
    model = k2.Model(inp, k2.layers.Dense(3, activation="softmax", name="head")(h))
    model.compile(k2.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(xt, yt, epochs=15, batch_size=32, verbose=0)
    return model, Dataset("seq", xt, yt, xv, yv, xs, ys, 3)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lstm_compress_reports_float_layers_and_converts(lstm_case, tmp_path: Path) -> None:
    from edgelr.compress.pipeline import compress

    model, data = lstm_case
    weights = [w.copy() for w in model.get_weights()]
    res = compress(model, data, "host", tmp_path / "out", method="svd-recurrent", rank_policy="rank:8",
                   min_reduction=None, epochs=1, progress=False)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["qat"]["applied"] is True
    assert rep["qat"]["float"] == ["lstm"]  # tfmot has no QuantizeConfig for the recurrent layer
    assert "head/svd_in" in rep["qat"]["quantization_aware"] or "head" in rep["qat"]["quantization_aware"]
    layers = {row["layer"]: row for row in rep["layers"]}
    assert layers["lstm"]["qat"] == "no" and "no 8-bit QuantizeConfig for RNN" in layers["lstm"]["qat_note"]
    assert layers["lstm"]["method"] == "svd-recurrent" and not layers["lstm"]["skipped"]
    tfl = rep["tflite"]
    assert tfl["batch_size"] == 1 and tfl["converted_in_child_process"] is True
    assert any("unrolled" in note for note in tfl["notes"])
    assert tfl["validation"]["ops"]["custom_ops"] == []
    assert "WHILE" not in tfl["validation"]["ops"]["ops"]
    assert res.summary["compressed"]["params"] < res.summary["original"]["params"]
    assert res.summary["compressed"]["tflite_score"] > 60.0
    for a, b in zip(weights, model.get_weights()):  # the caller's model is untouched
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_model_nothing_can_factorize_is_kept_and_reported(tmp_path: Path) -> None:
    from edgelr.compress.pipeline import compress
    from edgelr.data import load_data
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.utils.set_random_seed(0)
    d = load_data("digits")
    inp = k2.Input((8, 8, 1))
    h = k2.layers.BatchNormalization(name="bn")(inp)
    h = k2.layers.Flatten()(h)
    model = k2.Model(inp, k2.layers.Dense(10, activation="softmax", name="fc")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(d.x_train, d.y_train, epochs=5, verbose=0)
    res = compress(model, d, "host", tmp_path / "out", epochs=1, progress=False)
    assert res.exit_code == 0
    assert "no layer could be factorized" in res.message
    assert res.summary["compressed"]["macs"] == res.summary["original"]["macs"]
    rows = {r["layer"]: r for r in res.report["layers"]}
    assert set(rows) == {"bn", "fc"}
    assert rows["bn"]["skipped"] and "no low-rank method applies to BatchNormalization" in rows["bn"]["reason"]
    assert rows["fc"]["skipped"] and rows["fc"]["reason"]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "Layers kept as they were" in md and "bn" in md
