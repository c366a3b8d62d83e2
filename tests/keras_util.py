"""Small numeric helpers shared by the Keras model tests (``from tests.keras_util import ...``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def call(model: Any, x: np.ndarray) -> np.ndarray:
    """``model``'s inference output on ``x`` as a NumPy array."""
    return np.asarray(model(x, training=False))


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference relative to the largest magnitude of ``a``."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))


def all_layers(model: Any) -> list[Any]:
    """Every layer of ``model``, descending into nested models."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(all_layers(layer))
    return out


def perturb_batchnorm(model: Any, rng: np.random.Generator, mean_scale: float = 0.5) -> int:
    """Give every BatchNormalization (nested ones too) non-trivial gamma/beta/moving statistics, as trained
    weights would have; returns how many layers were changed."""
    count = 0
    for layer in all_layers(model):
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                               rng.normal(0, 0.3, beta.shape).astype("float32"),
                               rng.normal(0, mean_scale, mean.shape).astype("float32"),
                               rng.uniform(0.5, 2.0, var.shape).astype("float32")])
            count += 1
    return count


def small_cnn(k2: Any, hidden: int) -> Any:
    """An 8x8x1 -> 10-class CNN (conv 8, max-pool, flatten, Dense ``hidden`` relu, softmax), uncompiled;
    its weights follow the caller's random seed."""
    inp = k2.Input((8, 8, 1))
    h = k2.layers.Conv2D(8, 3, activation="relu", padding="same")(inp)
    h = k2.layers.MaxPooling2D()(h)
    h = k2.layers.Flatten()(h)
    h = k2.layers.Dense(hidden, activation="relu")(h)
    return k2.Model(inp, k2.layers.Dense(10, activation="softmax")(h))
