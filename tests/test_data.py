"""Data loading for --data: built-in sets, .npz files, module:function, and checks against a model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgelr.data import FASHION_DIR, fit_to_model, load_data
from edgelr.errors import DataError


def fake_model(in_shape: tuple, out_shape: tuple) -> SimpleNamespace:
    """Only what fit_to_model reads: Keras-style input_shape/output_shape (batch dim first)."""
    return SimpleNamespace(input_shape=(None, *in_shape), output_shape=(None, *out_shape), inputs=[0], outputs=[0])


def test_digits_splits_are_disjoint_and_complete() -> None:
    d = load_data("digits")
    assert d.input_shape == (8, 8, 1) and d.num_classes == 10
    assert sum(d.sizes().values()) == 1797
    assert d.x_train.dtype == np.float32 and 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert d.sizes()["test"] == 359


@pytest.mark.skipif(not FASHION_DIR.exists(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_files() -> None:
    d = load_data("fashion-mnist")
    assert d.sizes() == {"train": 54000, "val": 6000, "test": 10000}
    assert d.input_shape == (28, 28, 1) and d.num_classes == 10
    assert sorted(np.unique(d.y_test).tolist()) == list(range(10))


def test_npz_with_explicit_splits_and_one_hot_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    y = rng.integers(0, 3, 50)
    np.savez(p, x_train=rng.random((50, 4)), y_train=np.eye(3)[y], x_test=rng.random((10, 4)), y_test=y[:10])
    d = load_data(str(p))
    assert d.sizes() == {"train": 45, "val": 5, "test": 10}
    assert d.y_train.dtype == np.int64 and d.num_classes == 3
    assert d.x_train.dtype == np.float32


def test_npz_x_y_is_split(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((100, 3), np.float32), y=np.arange(100) % 4)
    d = load_data(str(p))
    assert d.sizes() == {"train": 72, "val": 8, "test": 20}


@pytest.mark.parametrize("arrays, needle", [
    ({"a": np.zeros(3)}, "expected x_train, y_train, x_test, y_test"),
    ({"x": np.zeros((5, 2)), "y": np.zeros(4)}, "5 inputs but 4 labels"),
])
def test_bad_npz_contents(tmp_path: Path, arrays: dict, needle: str) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=needle):
        load_data(str(p))


def test_corrupt_npz_and_unknown_name(tmp_path: Path) -> None:
    p = tmp_path / "bad.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(str(p))
    with pytest.raises(DataError, match="neither a built-in data set"):
        load_data("imagenet")


def test_module_function_with_batched_tf_datasets(tmp_path: Path) -> None:
    mod = tmp_path / "mydata.py"
    mod.write_text(
        "import numpy as np\n"
        "class DS:\n"
        "    def __init__(self, n): self.n = n\n"
        "    def __iter__(self):\n"
        "        for i in range(0, self.n, 4):\n"
        "            yield np.ones((min(4, self.n - i), 6), np.float32) * i, np.arange(i, min(i + 4, self.n)) % 2\n"
        "def load():\n    return DS(10), DS(6)\n")
    d = load_data(f"{mod}:load")
    assert d.sizes() == {"train": 10, "val": 6, "test": 6}
    assert d.input_shape == (6,) and d.num_classes == 2
    with pytest.raises(DataError, match="has no function 'nope'"):
        load_data(f"{mod}:nope")


def test_fit_to_model_adds_channel_axis_and_rejects_mismatch() -> None:
    d = load_data("digits")
    squeezed = d.subset(20, 5, 5)
    from dataclasses import replace
    squeezed = replace(squeezed, x_train=squeezed.x_train[..., 0], x_val=squeezed.x_val[..., 0],
                       x_test=squeezed.x_test[..., 0])
    fitted = fit_to_model(squeezed, fake_model((8, 8, 1), (10,)))
    assert fitted.input_shape == (8, 8, 1)
    with pytest.raises(DataError, match=r"inputs of shape \(8, 8, 1\) but the model expects \(28, 28, 1\)"):
        fit_to_model(d, fake_model((28, 28, 1), (10,)))
    with pytest.raises(DataError, match="labels 0..9 but the model outputs 5 classes"):
        fit_to_model(d, fake_model((8, 8, 1), (5,)))
