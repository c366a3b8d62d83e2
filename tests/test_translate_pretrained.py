"""Models as users have them: Keras Applications architectures and a model really trained in Keras 3.

No download is possible here, so "pretrained" is emulated: Keras 3 ``keras.applications``
architectures with ``weights=None`` whose BatchNormalization statistics are set to non-trivial values,
and a small CNN trained in Keras 3 on scikit-learn's bundled digits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgelr.models.load import load_model_with_info, model_info
from tests.keras_util import perturb_batchnorm

pytestmark = pytest.mark.timeout(600)


def _check_application(model: Any, path: Path, rng: np.random.Generator) -> dict[str, Any]:
    model.save(path)
    loaded, info = load_model_with_info(path)
    assert info.format == "keras3-keras"
    assert loaded.count_params() == model.count_params()
    x = rng.uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
    expected = np.asarray(model(x, training=False))
    got = np.asarray(loaded(x, training=False))
    assert np.abs(expected).max() > 1e-2  # logits, not a saturated softmax: the comparison means something
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    return model_info(loaded, info)


@pytest.mark.slow
def test_mobilenet_v2_application(keras3: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = keras3.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(96, 96, 3), classifier_activation=None
    )
    assert perturb_batchnorm(model, rng, mean_scale=0.3) == 52
    summary = _check_application(model, tmp_path / "mnv2.keras", rng)
    assert summary["params"] == model.count_params() == 1_691_208
    assert summary["inputs"][0]["shape"] == [None, 96, 96, 3]
    assert summary["outputs"][0]["shape"] == [None, 1000]
    assert summary["layer_types"]["DepthwiseConv2D"] == 17


@pytest.mark.slow
def test_mobilenet_v3_small_application_with_keras_ops_in_graph(keras3: Any, tmp_path: Path) -> None:
    """MobileNetV3's graph holds keras.ops nodes (``x + 3.0``) and hard_sigmoid/hard_swish activations."""
    rng = np.random.default_rng(1)
    model = keras3.applications.MobileNetV3Small(
        weights=None, input_shape=(96, 96, 3), classifier_activation=None, include_preprocessing=True
    )
    perturb_batchnorm(model, rng, mean_scale=0.3)
    summary = _check_application(model, tmp_path / "mnv3.keras", rng)
    assert summary["layer_types"].get("TFOpLambda", 0) > 0


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]  # (1797, 8, 8, 1), values in [0, 1]
    return x, data.target.astype("int64")


def test_cnn_trained_in_keras3_on_digits(keras3: Any, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    keras3.utils.set_random_seed(0)
    x, y = digits
    L = keras3.layers
    model = keras3.Sequential(
        [
            keras3.Input((8, 8, 1)),
            L.Conv2D(16, 3, padding="same", activation="relu"),
            L.BatchNormalization(),
            L.MaxPooling2D(),
            L.Conv2D(32, 3, padding="same", activation="relu"),
            L.Flatten(),
            L.Dropout(0.2),
            L.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1500], y[:1500], epochs=10, batch_size=32, verbose=0)
    acc = float(np.mean(np.argmax(model.predict(x[1500:], verbose=0), axis=1) == y[1500:]))
    assert acc > 0.8  # it really learned
    model.save(tmp_path / "digits.keras")

    loaded, info = load_model_with_info(tmp_path / "digits.keras")
    assert info.translated and loaded.count_params() == model.count_params()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    loaded_acc = float(np.mean(np.argmax(loaded.predict(x[1500:], verbose=0), axis=1) == y[1500:]))
    assert loaded_acc == acc
