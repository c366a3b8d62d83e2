"""edgelr.load_model: every container (tf_keras/Keras 3 .keras, .h5, SavedModel) and every bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgelr
from edgelr.errors import ModelLoadError
from edgelr.models.formats import detect_format
from edgelr.models.load import load_model_with_info, model_info

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
]


@pytest.fixture(scope="module")
def tf_keras_model(tf_keras: Any) -> Any:
    L = tf_keras.layers
    inp = tf_keras.Input((6, 6, 2), name="image")
    x = L.Conv2D(4, 3, activation="relu")(inp)
    x = L.BatchNormalization()(x)
    x = L.Flatten()(x)
    out = L.Dense(3, activation="softmax", name="probs")(x)
    model = tf_keras.Model(inp, out, name="small")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") ** 2 for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def keras3_model(keras3: Any) -> Any:
    L = keras3.layers
    return keras3.Sequential([keras3.Input((5,)), L.Dense(4, activation="relu"), L.Dense(2)], name="k3")


X_IMG = np.random.default_rng(1).normal(size=(2, 6, 6, 2)).astype("float32")


@pytest.mark.parametrize("suffix, fmt", [(".keras", "tf_keras-keras"), (".h5", "tf_keras-h5"), ("", "tf_keras-savedmodel")])
def test_tf_keras_files_load_directly(tf_keras_model: Any, tmp_path: Path, suffix: str, fmt: str) -> None:
    path = tmp_path / f"model{suffix}"
    tf_keras_model.save(path)
    model, info = load_model_with_info(path)
    assert info.format == fmt and info.translated is False
    assert model.count_params() == tf_keras_model.count_params()
    np.testing.assert_allclose(model.predict(X_IMG, verbose=0), tf_keras_model.predict(X_IMG, verbose=0), atol=1e-6)


@pytest.mark.parametrize("suffix, fmt", [(".keras", "keras3-keras"), (".h5", "keras3-h5")])
def test_keras3_files_are_translated(keras3_model: Any, tmp_path: Path, suffix: str, fmt: str) -> None:
    from edgelr.tfcompat import keras2

    path = tmp_path / f"k3{suffix}"
    keras3_model.save(path)
    model, info = load_model_with_info(path)
    assert isinstance(model, keras2().Model)
    assert info.format == fmt and info.translated is True and info.keras_version.startswith("3.")
    x = np.random.default_rng(2).normal(size=(3, 5)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(keras3_model(x)), atol=1e-5)


def test_model_info_reports_format_shapes_and_counts(tf_keras_model: Any, tmp_path: Path) -> None:
    tf_keras_model.save(tmp_path / "m.keras")
    model, info = load_model_with_info(tmp_path / "m.keras")
    summary = model_info(model, info)
    assert summary["format"] == "tf_keras-keras"
    assert summary["inputs"] == [{"name": "image", "shape": [None, 6, 6, 2], "dtype": "float32"}]
    assert summary["outputs"][0]["shape"] == [None, 3]
    # conv 3*3*2*4+4=76, BN 4*4=16 (8 trainable), dense 64*3+3=195
    assert summary["params"] == 76 + 16 + 195
    assert summary["trainable_params"] == 76 + 8 + 195
    assert summary["layer_types"] == {"BatchNormalization": 1, "Conv2D": 1, "Dense": 1, "Flatten": 1, "InputLayer": 1}


def test_plain_saved_model_gets_a_clear_error(tmp_path: Path) -> None:
    from edgelr.tfcompat import tf

    t = tf()

    class Plain(t.Module):
        @t.function(input_signature=[t.TensorSpec([None, 3], t.float32)])
        def __call__(self, x: Any) -> Any:
            return x * 2.0

    t.saved_model.save(Plain(), str(tmp_path / "plain"))
    with pytest.raises(ModelLoadError, match=r"plain TensorFlow SavedModel.*model\.save\('model\.keras'\)"):
        edgelr.load_model(tmp_path / "plain")


def test_keras3_export_is_a_plain_saved_model(keras3_model: Any, tmp_path: Path) -> None:
    keras3_model.export(str(tmp_path / "exported"), verbose=False)
    with pytest.raises(ModelLoadError, match="without Keras metadata"):
        edgelr.load_model(tmp_path / "exported")


def _bad_inputs(tmp_path: Path, good_keras: Path) -> dict[str, tuple[Path, str]]:
    data = good_keras.read_bytes()
    (tmp_path / "truncated.keras").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(3).bytes(4096))
    (tmp_path / "notes.txt").write_text("this is not a model\n")
    (tmp_path / "text.keras").write_text("{}")
    (tmp_path / "emptydir").mkdir()
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.md", "hello")
    return {
        "truncated": (tmp_path / "truncated.keras", "corrupt or truncated"),
        "random": (tmp_path / "random.bin", "not a Keras model"),
        "text": (tmp_path / "notes.txt", "not a Keras model"),
        "text.keras": (tmp_path / "text.keras", "not a zip archive"),
        "missing": (tmp_path / "missing.keras", "no such file"),
        "emptydir": (tmp_path / "emptydir", "not a SavedModel"),
        "zip": (tmp_path / "other.zip", "without config.json"),
    }


def test_bad_inputs_are_one_line_model_load_errors(keras3_model: Any, tmp_path: Path) -> None:
    good = tmp_path / "good.keras"
    keras3_model.save(good)
    for label, (path, fragment) in _bad_inputs(tmp_path, good).items():
        with pytest.raises(ModelLoadError) as err:
            edgelr.load_model(path)
        msg = str(err.value)
        assert fragment in msg, (label, msg)
        assert "\n" not in msg and str(path) in msg, (label, msg)


def test_weights_only_files_are_rejected(keras3_model: Any, tf_keras_model: Any, tmp_path: Path) -> None:
    keras3_model.save_weights(tmp_path / "k3.weights.h5")
    tf_keras_model.save_weights(tmp_path / "tfk.h5")
    for path in (tmp_path / "k3.weights.h5", tmp_path / "tfk.h5"):
        with pytest.raises(ModelLoadError, match="without a model architecture"):
            edgelr.load_model(path)


def test_unknown_custom_layer_in_tf_keras_file(tf_keras: Any, tmp_path: Path) -> None:
    class Doubler(tf_keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return 2.0 * x

    inp = tf_keras.Input((3,))
    tf_keras.Model(inp, Doubler(name="dbl")(inp)).save(tmp_path / "c.h5")
    with pytest.raises(ModelLoadError, match=r"Doubler.*--custom-objects"):
        edgelr.load_model(tmp_path / "c.h5")
    model = edgelr.load_model(tmp_path / "c.h5", custom_objects={"Doubler": Doubler})
    assert float(np.asarray(model(np.ones((1, 3), "float32")))[0, 0]) == 2.0


def test_detect_format_does_not_need_tensorflow(tmp_path: Path) -> None:
    """Importing edgelr.models.load and detecting a format must not import TensorFlow."""
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("metadata.json", '{"keras_version": "3.15.1"}')
    code = (
        "import sys, edgelr.models.load as L; "
        f"print(L.detect_format({str(tmp_path / 'm.keras')!r}).format, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["keras3-keras", "False"]
    assert detect_format(tmp_path / "m.keras").is_keras3


def test_unbuilt_keras3_model_is_rejected(keras3: Any, tmp_path: Path) -> None:
    import warnings

    model = keras3.Sequential([keras3.layers.Dense(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "unbuilt.keras")
    with pytest.raises(ModelLoadError, match="before it was built"):
        edgelr.load_model(tmp_path / "unbuilt.keras")


def test_keras3_file_with_unknown_custom_class(keras3: Any, tmp_path: Path) -> None:
    class Halver(keras3.layers.Layer):  # not registered: Keras 3 cannot find it when reading
        def call(self, x: Any) -> Any:
            return 0.5 * x

    inp = keras3.Input((3,))
    keras3.Model(inp, Halver(name="half")(inp)).save(tmp_path / "h.keras")
    with pytest.raises(ModelLoadError) as err:
        edgelr.load_model(tmp_path / "h.keras")
    msg = str(err.value)
    assert "Halver" in msg and "--custom-objects" in msg and "\n" not in msg
