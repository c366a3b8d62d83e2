"""A pretrained compact CNN for the robust-rank measurements: a mini-Xception (Arriaga et al. 2017).

Conv2D(8, 3) x 2 (the first has ONE input channel: 3*3*1*8 = 72 weights), four residual modules of
SeparableConv2D (16, 32, 64, 128) with a strided 1x1 Conv2D shortcut, a final Conv2D to the classes,
global average pooling: ~58 k parameters, saved by Keras 3 (``.keras``). Trained briefly on Fashion-MNIST
(Debian dataset-fashion-mnist, 28x28x1), so its weights are trained, not random.

Usage: .venv/bin/python tests/perf/mini_xception.py OUT.keras [--epochs 3] [--train-samples 20000]
Prints the test accuracy on stderr (~1-2 min on 2 shared cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def mini_xception(k: Any, input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10) -> Any:
    """The mini-Xception of Arriaga et al. 2017 in Keras 3 (``k`` is the ``keras`` module)."""
    L = k.layers
    inp = k.Input(input_shape, name="image")
    x = L.Conv2D(8, 3, use_bias=False, name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Activation("relu")(x)
    x = L.Conv2D(8, 3, use_bias=False, name="conv2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Activation("relu")(x)
    for i, filters in enumerate((16, 32, 64, 128), start=1):
        res = L.Conv2D(filters, 1, strides=2, padding="same", use_bias=False, name=f"m{i}_shortcut")(x)
        res = L.BatchNormalization(name=f"m{i}_shortcut_bn")(res)
        x = L.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"m{i}_sep1")(x)
        x = L.BatchNormalization(name=f"m{i}_bn1")(x)
        x = L.Activation("relu")(x)
        x = L.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"m{i}_sep2")(x)
        x = L.BatchNormalization(name=f"m{i}_bn2")(x)
        x = L.MaxPooling2D(3, strides=2, padding="same")(x)
        x = L.Add(name=f"m{i}_add")([x, res])
    x = L.Conv2D(num_classes, 3, padding="same", name="conv_out")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Activation("softmax", name="predictions")(x)
    return k.Model(inp, out, name="mini_xception")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-samples", type=int, default=20000)
    args = ap.parse_args()
    from edgelr.data import load_data
    from edgelr.tfcompat import keras3

    k = keras3()
    k.utils.set_random_seed(0)
    data = load_data("fashion-mnist")
    model = mini_xception(k)
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    n = args.train_samples
    model.fit(data.x_train[:n], data.y_train[:n], epochs=args.epochs, batch_size=128, verbose=2,
              validation_data=(data.x_val[:2000], data.y_val[:2000]))
    _, acc = model.evaluate(data.x_test, data.y_test, verbose=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    print(f"mini-Xception: {model.count_params():,} parameters, test accuracy {100 * acc:.2f}% -> {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
