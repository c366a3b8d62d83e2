"""``edgelr demo``: the whole product on a built-in example (scikit-learn's bundled digits).

Steps: train a small CNN (seconds on 2 cores) -> save it -> compress it for a target with an accuracy
budget -> benchmark the compressed and baseline ``.tflite`` on the ``local`` device -> write a report.
Each step after training runs when its part of edgelr is installed in this version.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelr.data import Dataset, load_data


def build_digits_cnn(input_shape: tuple[int, ...] = (8, 8, 1), num_classes: int = 10) -> Any:
    """The demo's reference CNN (tf_keras): three conv layers and two dense layers, ~40k parameters."""
    from edgelr.tfcompat import keras2

    k = keras2()
    inputs = k.Input(shape=input_shape, name="image")
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = k.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = k.layers.MaxPooling2D(2, name="pool1")(x)
    x = k.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    x = k.layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = k.layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return k.Model(inputs, outputs, name="digits_cnn")


def train_digits_cnn(data: Dataset, epochs: int = 30, seed: int = 0, verbose: bool = True) -> tuple[Any, float]:
    """Train the demo CNN on ``data``; returns ``(model, test accuracy in %)``."""
    from edgelr.tfcompat import keras2, tf

    tf().random.set_seed(seed)
    k = keras2()
    model = build_digits_cnn(data.input_shape, data.num_classes or 10)
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [k.callbacks.EarlyStopping(patience=5, restore_best_weights=True, monitor="val_accuracy")]
    if verbose:
        callbacks.append(_StderrEpochs(epochs))
    model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=epochs,
              batch_size=64, verbose=0, callbacks=callbacks)
    _, acc = model.evaluate(data.x_test, data.y_test, verbose=0)
    return model, 100.0 * float(acc)


class _StderrEpochs:
    """A Keras callback printing one progress line per epoch on stderr (created lazily: needs tf_keras)."""

    def __new__(cls, epochs: int) -> Any:
        from edgelr.tfcompat import keras2

        class _Cb(keras2().callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                logs = logs or {}
                print(f"  epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.3f} "
                      f"val_accuracy {100 * logs.get('val_accuracy', float('nan')):.1f}%",
                      file=sys.stderr, flush=True)

        return _Cb()


@dataclass
class DemoResult:
    out_dir: Path
    model_path: Path
    accuracy: float
    steps: dict[str, Any] = field(default_factory=dict)


def run_demo(out_dir: Path, epochs: int = 30, seed: int = 0) -> DemoResult:
    """Train and save the example model (more steps are added as edgelr grows)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data("digits", seed=seed)
    print(f"[1] training a small CNN on digits ({data.sizes()['train']} train / "
          f"{data.sizes()['test']} test images)", file=sys.stderr, flush=True)
    model, acc = train_digits_cnn(data, epochs=epochs, seed=seed)
    model_path = out_dir / "digits_cnn.keras"
    model.save(model_path)
    return DemoResult(out_dir=out_dir, model_path=model_path, accuracy=acc)
