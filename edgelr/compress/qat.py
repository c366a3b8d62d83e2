"""Quantization-aware training (QAT) with tensorflow-model-optimization, for the layers it supports.

tfmot's ``quantize_model`` refuses a whole model as soon as one layer has no 8-bit ``QuantizeConfig``
(LSTM, GRU, SimpleRNN, Conv1D, custom layers). Here only the layers tfmot's default 8-bit registry
supports are annotated (``quantize_annotate_layer``) and ``quantize_apply`` wraps them with fake-quant
ops; every other layer stays float during QAT and gets its int8 parameters from the converter's
post-training calibration (the representative dataset). :class:`QatResult` lists both groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

_NO_WEIGHTS = ("InputLayer",)


@dataclass
class QatLayer:
    """One layer of the model: quantization-aware or not, and why not."""

    name: str
    class_name: str
    quantization_aware: bool
    reason: str = ""


@dataclass
class QatResult:
    """Result of :func:`quantize_aware`.

    Attributes
    ----------
    model : tf_keras.Model or None
        The QAT model (fake-quant wrappers), or None when QAT could not be applied at all.
    layers : list of QatLayer
        Every layer of the float model (input layers excluded).
    error : str or None
        Why QAT was not applied (then the float model is quantized post-training).
    """

    model: Any
    layers: list[QatLayer] = field(default_factory=list)
    error: str | None = None

    @property
    def applied(self) -> bool:
        return self.model is not None

    @property
    def quantized_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.quantization_aware]

    @property
    def float_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if not layer.quantization_aware]

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "error": self.error,
                "quantization_aware": self.quantized_layers, "float": self.float_layers,
                "layers": [asdict(layer) for layer in self.layers]}


def _reason(layer: Any) -> str:
    name = type(layer).__name__
    if name in ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional"):
        return (f"tfmot has no 8-bit QuantizeConfig for {name}; trained float, int8 from post-training "
                "calibration")
    if name == "Conv1D":
        return "tfmot's default 8-bit registry has no Conv1D entry; trained float, int8 from calibration"
    if hasattr(layer, "layers"):
        return "nested model; tfmot cannot annotate inside it; trained float, int8 from calibration"
    return f"{name} is not in tfmot's default 8-bit registry; trained float, int8 from calibration"


def quantize_aware(model: Any) -> QatResult:
    """A QAT copy of ``model`` with fake quantization on every layer tfmot supports.

    Parameters
    ----------
    model : tf_keras.Model
        Functional or Sequential float model; not modified (the QAT model has its own weights).

    Returns
    -------
    QatResult
        ``model`` is None (and ``error`` says why) when tfmot cannot apply QAT to this architecture.
    """
    from edgelr.tfcompat import keras2

    k2 = keras2()
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    registry = qk.default_8bit.Default8BitQuantizeRegistry()
    layers: list[QatLayer] = []
    for layer in model.layers:
        if type(layer).__name__ in _NO_WEIGHTS:
            continue
        try:
            ok = bool(registry.supports(layer))
        except Exception:  # noqa: BLE001 - supports() may choke on exotic layers
            ok = False
        layers.append(QatLayer(layer.name, type(layer).__name__, ok, "" if ok else _reason(layer)))
    if not any(layer.quantization_aware for layer in layers):
        for layer in layers:
            layer.quantization_aware = False
        return QatResult(None, layers, "no layer of this model is supported by tfmot's 8-bit QAT")
    supported = {layer.name for layer in layers if layer.quantization_aware}
    try:
        base = k2.models.clone_model(model)
        base.set_weights(model.get_weights())

        def annotate(layer: Any) -> Any:
            return qk.quantize_annotate_layer(layer) if layer.name in supported else layer

        annotated = k2.models.clone_model(base, clone_function=annotate)
        with qk.quantize_scope():
            qat_model = qk.quantize_apply(annotated)
    except Exception as exc:  # noqa: BLE001 - tfmot raises ValueError/RuntimeError/TypeError...
        for layer in layers:
            layer.quantization_aware = False
            layer.reason = layer.reason or "QAT could not be applied to this model"
        msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return QatResult(None, layers, f"tfmot quantize_apply failed ({msg}); int8 from post-training calibration")
    return QatResult(qat_model, layers, None)


def calibrate_ranges(qat_model: Any, x: Any, *, batches: int = 16, batch_size: int = 64) -> int:
    """Initialise the activation ranges of a QAT model from data.

    tfmot's ``MovingAverageQuantizer`` starts every activation range at [-6, 6] and moves it by an EMA
    with decay 0.999, so a short QAT run (a few hundred steps) keeps ranges far too wide (an input in
    [0, 1] gets ~20 of its 256 levels) and the int8 model is worse than post-training quantization. Here
    the model runs ``batches`` training-mode forward passes with the EMA decay lowered (0 for the first
    batch, then 0.5), so the ranges start at the data's; non-range state (BatchNorm statistics) is restored.

    Parameters
    ----------
    qat_model : tf_keras.Model
        From :func:`quantize_aware` (modified in place: its ``*_min``/``*_max`` range variables).
    x : ndarray, shape (n, *input_shape)
        Calibration inputs (training data).

    Returns
    -------
    int
        Number of forward passes run.
    """
    from edgelr.tfcompat import tf

    tfm = tf()
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    keep = [v for v in qat_model.non_trainable_weights
            if not (v.name.split(":")[0].endswith("_min") or v.name.split(":")[0].endswith("_max"))]
    saved = [v.numpy() for v in keep]
    original = quant_ops.MovingAvgQuantize
    decay = tfm.Variable(0.0, trainable=False, dtype=tfm.float32)

    def patched(*args: Any, **kwargs: Any) -> Any:
        kwargs["ema_decay"] = decay
        return original(*args, **kwargs)

    n = 0
    quant_ops.MovingAvgQuantize = patched
    try:
        step = tfm.function(lambda a: qat_model(a, training=True))
        for i in range(0, min(len(x), batches * batch_size), batch_size):
            step(tfm.constant(x[i:i + batch_size], tfm.float32))
            decay.assign(0.5)
            n += 1
    finally:
        quant_ops.MovingAvgQuantize = original
    for v, val in zip(keep, saved):
        v.assign(val)
    return n
