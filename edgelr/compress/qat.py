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
