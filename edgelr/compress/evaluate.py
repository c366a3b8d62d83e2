"""What kind of model we compress and how we score it (accuracy in %, or a loss).

A model is a *classifier* when the data has ``num_classes`` and the model's output has that many units;
then the score is top-1 accuracy in percent (higher is better). Otherwise the score is the mean squared
error against the targets (lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgelr.compress.validate import labels_of


@dataclass(frozen=True)
class Task:
    """How outputs are read.

    Attributes
    ----------
    classifier : bool
    num_classes : int or None
    output : str
        ``probs`` (the model ends in a softmax), ``logits`` (classifier without a final softmax) or
        ``values`` (regression / other outputs).
    """

    classifier: bool
    num_classes: int | None
    output: str

    @property
    def metric(self) -> str:
        return "accuracy" if self.classifier else "mse"

    @property
    def higher_is_better(self) -> bool:
        return self.classifier


def detect_task(model: Any, num_classes: int | None) -> Task:
    """The :class:`Task` of a tf_keras ``model`` given the data's ``num_classes`` (None = not classes)."""
    units = model.outputs[0].shape[-1]
    if num_classes and units is not None and int(units) == int(num_classes) and int(units) > 1:
        return Task(True, int(num_classes), "probs" if _ends_in_softmax(model) else "logits")
    return Task(False, None, "values")


def _ends_in_softmax(model: Any) -> bool:
    last = model.layers[-1]
    inner = getattr(last, "layer", last)  # a tfmot QuantizeWrapper around the last layer
    act = getattr(inner, "activation", None)
    if act is not None and getattr(act, "__name__", "") == "softmax":
        return True
    return type(inner).__name__ == "Softmax" or (type(inner).__name__ == "Activation"
                                                 and getattr(inner.activation, "__name__", "") == "softmax")


def predict(model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Model outputs on ``x`` (inference mode), float32 array of shape (n, *output_shape)."""
    from edgelr.tfcompat import tf

    tfm = tf()
    outs = []
    fn = tfm.function(lambda a: model(a, training=False), reduce_retracing=True)
    for i in range(0, len(x), batch_size):
        outs.append(np.asarray(fn(tfm.constant(x[i:i + batch_size], dtype=tfm.float32))))
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0,), np.float32)


def score(outputs: np.ndarray, y: np.ndarray, task: Task) -> float:
    """Accuracy in % for classifiers, MSE otherwise."""
    if task.classifier:
        return float(100.0 * np.mean(np.asarray(outputs).argmax(-1) == labels_of(y)))
    o = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    return float(np.mean((o - np.asarray(y, dtype=np.float64).reshape(len(o), -1)) ** 2))


def fidelity(outputs: np.ndarray, reference: np.ndarray, task: Task) -> float:
    """How close ``outputs`` are to the original model's ``reference`` outputs on the same inputs (no labels):
    % of inputs with the same top-1 class for classifiers (higher is better), else the mean squared
    difference (lower is better)."""
    out, ref = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
    if task.classifier:
        return float(100.0 * np.mean(out.argmax(-1) == ref.argmax(-1))) if len(out) else 100.0
    return float(np.mean((out.reshape(len(out), -1) - ref.reshape(len(ref), -1)) ** 2)) if len(out) else 0.0


def fidelity_drop(outputs: np.ndarray, reference: np.ndarray, task: Task) -> float:
    """:func:`fidelity` as a drop from the original's own (positive = worse): 100 - agreement in % for
    classifiers (an upper bound of the accuracy drop on those inputs, whatever their labels), else the mean
    squared difference."""
    f = fidelity(outputs, reference, task)
    return 100.0 - f if task.classifier else f


def evaluate(model: Any, x: np.ndarray, y: np.ndarray, task: Task, batch_size: int = 256) -> float:
    """Score of ``model`` on ``(x, y)`` (see :func:`score`)."""
    return score(predict(model, x, batch_size), y, task)


def drop(original: float, new: float, task: Task) -> float:
    """Loss of quality in points: accuracy points for classifiers (positive = worse), MSE increase otherwise."""
    return original - new if task.higher_is_better else new - original
