"""Bad data gets one clear line before any work: mismatched lengths, NaN/Inf values, an unknown demo target."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgelr.data import Dataset, check_dataset, load_data
from edgelr.errors import DataError

EDGELR = [sys.executable, "-m", "edgelr.cli.main"]


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _good(n: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x_train": rng.random((n, 4, 4, 1), dtype=np.float32), "y_train": rng.integers(0, 3, n),
            "x_test": rng.random((10, 4, 4, 1), dtype=np.float32), "y_test": rng.integers(0, 3, 10)}


def test_train_inputs_and_labels_of_different_lengths(tmp_path: Path) -> None:
    arrays = _good()
    arrays["y_train"] = arrays["y_train"][:-3]  # was "internal error: IndexError" (the split came first)
    with pytest.raises(DataError, match="train has 40 inputs but 37 labels; they must match"):
        load_data(str(_npz(tmp_path, **arrays)))


@pytest.mark.parametrize("poison, expected", [
    (lambda x: np.full_like(x, np.nan), "all values of the train inputs are NaN or infinite"),
    (lambda x: np.where(x > 0.5, np.inf, x), "of the train inputs are NaN or infinite"),
])
def test_nan_or_infinite_training_inputs_are_refused(tmp_path: Path, poison, expected: str) -> None:
    arrays = _good()
    arrays["x_train"] = poison(arrays["x_train"])
    with pytest.raises(DataError, match=expected):
        load_data(str(_npz(tmp_path, **arrays)))


def test_python_api_datasets_are_checked_too() -> None:
    good = _good()
    x = good["x_train"]
    bad = Dataset("mine", x, good["y_train"][:5], x, good["y_train"], good["x_test"], good["y_test"], 3)
    with pytest.raises(DataError, match="data 'mine': train has 40 inputs but 5 labels"):
        check_dataset(bad)
    nan_test = Dataset("mine", x, good["y_train"], x, good["y_train"], good["x_test"] * np.nan, good["y_test"], 3)
    with pytest.raises(DataError, match="test inputs are NaN or infinite"):
        check_dataset(nan_test)
    assert check_dataset(Dataset("ok", x, good["y_train"], x, good["y_train"], good["x_test"], good["y_test"], 3))


def test_demo_checks_the_target_before_training(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run([*EDGELR, "demo", "--target", "nosuch", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown target 'nosuch'" in lines[0] and "rpi4" in lines[0]
    assert "training" not in proc.stderr and not (tmp_path / "demo").exists()
    assert time.monotonic() - start < 60  # no TensorFlow import, no training
    (tmp_path / "mine.toml").write_text('[targets.mine]\nbase = "rpi4"\n')
    proc = subprocess.run([*EDGELR, "demo", "--target", "nosuch", "--targets", str(tmp_path / "mine.toml"),
                           "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "mine, pixel7" in proc.stderr  # the demo reads user profiles too
