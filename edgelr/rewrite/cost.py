"""Parameter and multiply-accumulate (MAC) counts of tf_keras layers.

``layer_cost(layer) -> (params, macs)``: ``params`` is the layer's exact weight count (trainable and
not, as ``layer.count_params()``), ``macs`` the multiply-accumulates of ONE example (batch size 1):

- Dense: ``prod(leading dims) * in * units`` (a Dense on (T, in) inputs counts T rows).
- ConvND: ``prod(output spatial) * prod(kernel) * C_in / groups * C_out``; depthwise: ``... * C_in * mult``;
  separable: depthwise + pointwise ``prod(output spatial) * C_in * mult * C_out``; transposed convs:
  ``prod(input spatial) * prod(kernel) * C_in * C_out``.
- Recurrent layers: per full sequence (``T * (gates * H * (D + H))`` for LSTM/GRU/SimpleRNN, D the input
  size, H the units); per time step when T is unknown (``None``). Low-rank recurrent layers of edgelr
  count their factors. Bidirectional sums both directions; TimeDistributed multiplies by T.
- Normalization layers (BatchNormalization, LayerNormalization...): one MAC per output element
  (TFLite folds a BatchNormalization that follows a conv; this count is then an upper bound).
- Embedding and layers without weights (pooling, activations, reshapes, adds): 0 MACs.
- Nested models: the sum over their layers.

Bias additions are not counted.

MACs alone overstate what a factorization saves when its chain writes many activation elements:
XNNPACK's int8 kernels requantize and store every output element, which costs as much as ~16 MACs on
an AVX2 host (fitted on ResNet-50's layers, ``tests/perf/profile_resnet50_layers.py``). :func:`latency_estimate`
adds ``output_cost`` MAC-equivalents per written element; ``OUTPUT_COST`` holds the defaults by
quantization (:data:`edgelr.targets.DEFAULT_OUTPUT_COST`), which a target profile overrides with its
``output_cost`` field (``edgelr targets --json`` shows the value in use).

The estimate is the fallback. With a latency table measured on the device (``edgelr profile``,
:mod:`edgelr.profile`), :class:`MeasuredLatency` answers in milliseconds per layer and ranks:
:func:`layer_signature` names a layer by what its latency depends on (kind, configuration, input shape,
method), never by its name or weights, so one table serves every model with the same layers.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping

import numpy as np

from edgelr.errors import FactorizeError
from edgelr.targets import DEFAULT_OUTPUT_COST

Shape = tuple[int | None, ...]

#: MAC-equivalents per activation element written, by quantization (see the module docstring). Fitted on
#: an x86-64 AVX2 host with XNNPACK (reports/resnet50_layer_profile.md): int8 15-28 (16 chosen), float32 1-2.
#: Re-fit on the device with tests/perf/profile_resnet50_layers.py.
OUTPUT_COST = DEFAULT_OUTPUT_COST


def _first_shape(shape: Any) -> Shape:
    """The first tensor's shape when a layer takes or returns several tensors."""
    if isinstance(shape, list) and shape and isinstance(shape[0], (list, tuple)):
        shape = shape[0]
    return tuple(None if d is None else int(d) for d in shape)


def io_shapes(layer: Any) -> tuple[Shape, Shape]:
    """(input shape, output shape) of a built layer's first call, batch dimension included.

    Raises
    ------
    FactorizeError
        The layer was never called on a tensor (its model is not built).
    """
    try:
        return _first_shape(layer.get_input_shape_at(0)), _first_shape(layer.get_output_shape_at(0))
    except (AttributeError, RuntimeError, ValueError, IndexError):
        pass
    try:
        return _first_shape(layer.input_shape), _first_shape(layer.output_shape)
    except (AttributeError, RuntimeError, ValueError):
        raise FactorizeError(
            f"layer '{layer.name}' ({type(layer).__name__}) has no known input shape; build the model "
            f"first (give it an Input or call model.build(input_shape))") from None


def _prod(dims: Any) -> int:
    """Product of known dimensions; an unknown (None) dimension counts as 1."""
    return int(math.prod(1 if d is None else int(d) for d in dims))


def _timesteps(in_shape: Shape) -> int:
    return 1 if len(in_shape) < 3 or in_shape[1] is None else int(in_shape[1])


def rnn_step_macs(cell: Any, input_dim: int) -> int:
    """MACs of one time step of a recurrent cell (stock LSTM/GRU/SimpleRNN cells or edgelr's low-rank cells).

    Parameters
    ----------
    cell : tf_keras RNN cell
    input_dim : int
        D, the size of one input time step.
    """
    if hasattr(cell, "step_macs"):  # a cell that counts its own (edgelr.rewrite.cells.Tucker3LSTMCell)
        return int(cell.step_macs(input_dim))
    units = int(cell.units)
    name = type(cell).__name__
    gates = {"LSTMCell": 4, "GRUCell": 3, "SimpleRNNCell": 1, "LowRankLSTMCell": 4, "LowRankGRUCell": 3}.get(name)
    if gates is None:
        return 0
    rec_rank = getattr(cell, "rank", None)
    recurrent = units * gates * units if rec_rank is None else int(rec_rank) * units * (1 + gates)
    return gates * units * input_dim + recurrent


def layer_macs(layer: Any) -> int:
    """MACs of one example through ``layer`` (see the module docstring for the counting rules)."""
    name = type(layer).__name__
    if hasattr(layer, "layers") and hasattr(layer, "inputs"):  # nested model
        return sum(layer_macs(sub) for sub in layer.layers)
    if name in {"InputLayer", "Embedding"} or not layer.weights:
        return 0
    in_shape, out_shape = io_shapes(layer)
    if name == "Dense":
        return _prod(in_shape[1:-1]) * int(in_shape[-1]) * int(layer.units)
    if name in {"Conv1D", "Conv2D", "Conv3D"}:
        cin = int(in_shape[-1] if layer.data_format == "channels_last" else in_shape[1])
        spatial = out_shape[1:-1] if layer.data_format == "channels_last" else out_shape[2:]
        return _prod(spatial) * _prod(layer.kernel_size) * (cin // int(layer.groups)) * int(layer.filters)
    if name in {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}:
        cin = int(in_shape[-1] if layer.data_format == "channels_last" else in_shape[1])
        spatial = in_shape[1:-1] if layer.data_format == "channels_last" else in_shape[2:]
        return _prod(spatial) * _prod(layer.kernel_size) * cin * int(layer.filters)
    if name in {"DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"}:
        cin = int(in_shape[-1] if layer.data_format == "channels_last" else in_shape[1])
        spatial = out_shape[1:-1] if layer.data_format == "channels_last" else out_shape[2:]
        mult = int(layer.depth_multiplier)
        macs = _prod(spatial) * _prod(layer.kernel_size) * cin * mult
        if name.startswith("Separable"):
            macs += _prod(spatial) * cin * mult * int(layer.filters)
        return macs
    if name in {"LSTM", "GRU", "SimpleRNN", "RNN"}:
        return _timesteps(in_shape) * rnn_step_macs(layer.cell, int(in_shape[-1]))
    if name == "Bidirectional":
        steps = _timesteps(in_shape)
        return steps * (rnn_step_macs(layer.forward_layer.cell, int(in_shape[-1]))
                        + rnn_step_macs(layer.backward_layer.cell, int(in_shape[-1])))
    if name == "TimeDistributed":
        inner = layer.layer
        inner_in = (in_shape[0],) + tuple(in_shape[2:])
        if type(inner).__name__ == "Dense":
            inner_macs = _prod(inner_in[1:-1]) * int(inner_in[-1]) * int(inner.units)
        else:
            inner_macs = layer_macs(inner)
        return _timesteps(in_shape) * inner_macs
    if "Normalization" in name:
        return _prod(out_shape[1:])
    return 0


def layer_cost(layer: Any) -> tuple[int, int]:
    """``(params, macs)`` of a built tf_keras layer, MACs per single example (see module docstring).

    Parameters
    ----------
    layer : tf_keras.layers.Layer
        A layer of a built model (it must have been called on a tensor).

    Returns
    -------
    params : int
        Number of weights (``layer.count_params()``).
    macs : int
        Multiply-accumulates for one example (batch size 1).
    """
    return int(layer.count_params()), int(layer_macs(layer))


def model_cost(model: Any) -> tuple[int, int]:
    """``(params, macs)`` of a whole built model: ``count_params()`` and the sum of its layers' MACs."""
    return int(model.count_params()), int(sum(layer_macs(layer) for layer in model.layers))


def latency_estimate(macs: int, outputs: int, output_cost: float) -> float:
    """Relative latency of a layer or chain in MAC-equivalents: ``macs + output_cost * outputs``.

    Parameters
    ----------
    macs : int
        Multiply-accumulates per example.
    outputs : int
        Activation elements written per example (every node of a chain counts its own output).
    output_cost : float
        MAC-equivalents per written element (``OUTPUT_COST`` or a target's ``output_cost``).
    """
    return float(macs) + float(output_cost) * float(outputs)


def output_cost_for(target: Any) -> float:
    """The output cost the estimate uses for ``target``: its own ``output_cost`` when > 0, else ``OUTPUT_COST``
    for its quantization (:attr:`edgelr.targets.Target.effective_output_cost`); int8 without a target."""
    if target is None:
        return OUTPUT_COST["int8"]
    own = float(getattr(target, "output_cost", 0.0) or 0.0)
    return own if own > 0 else OUTPUT_COST.get(str(getattr(target, "quantization", "int8")), OUTPUT_COST["int8"])


_IGNORED_CONFIG = ("name", "trainable", "dtype", "initializer", "regularizer", "constraint", "batch_input_shape",
                   "input_dim", "input_shape")


def layer_signature(layer: Any, method: str) -> str:
    """What a layer's latency depends on, as a short hash: kind, configuration (no name, initializers,
    regularizers or constraints), input shape without the batch, and the low-rank ``method``.

    Two layers with the same signature run the same kernels on the same shapes, in any model.
    """
    config = {k: v for k, v in layer.get_config().items() if not any(x in k for x in _IGNORED_CONFIG)}
    in_shape = io_shapes(layer)[0][1:]
    doc = json.dumps([type(layer).__name__, config, list(in_shape), str(method)], sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def ranks_key(ranks: Any) -> str:
    """``whole`` for the layer as is (None), else ``16x8``: the ranks part of a latency-table key."""
    return "whole" if ranks is None else "x".join(str(int(r)) for r in ranks)


class MeasuredLatency:
    """Per-layer latencies measured on one device (ms), looked up by layer, method and ranks.

    ``entries`` maps :func:`layer_signature` -> {ranks tuple or None (the layer as is): ms}. Ranks between
    the measured ladder points are interpolated (bilinear for two ranks: a Tucker-2 chain's time is close to
    ``a + b r_in + c r_out + d r_in r_out``); beyond the ladder, clamped. A layer the table lacks gets its
    :func:`latency_estimate` times ``ms_per_unit``, least squares over the measured layers, so measured and
    estimated layers add up in one unit.

    Attributes
    ----------
    device : str
    model_ms : float
        The whole original model measured in the same sessions (NaN when not measured).
    context_scale : float
        How much slower a layer runs inside the whole model than alone, per ms of its micro-model
        (:meth:`calibrate`; 1.0 until calibrated): a change of the layers' table sum by d ms changes the whole
        model by ``context_scale * d``.
    """

    def __init__(self, entries: Mapping[str, Mapping[Any, float]], device: str = "", model_ms: float = float("nan"),
                 ms_per_unit: float | None = None, context_scale: float = 1.0) -> None:
        self.entries = {sig: dict(v) for sig, v in entries.items()}
        self.device = device
        self.model_ms = float(model_ms)
        self.ms_per_unit = ms_per_unit
        self.context_scale = float(context_scale)
        self.calibration = ""
        self.misses: set[str] = set()

    def calibrate(self, model_ms: float, probe_ms: float, layers_ms: float, probe_layers_ms: float) -> float:
        """Fit :attr:`context_scale` from two whole models measured in the same sessions as the micro-models.

        Micro-models run alone, with their inputs and weights hot in cache and, on a busy device, in gaps
        short enough to escape other processes; inside the model the same layers take longer. With the
        model's time ``T = R + s * S`` (``S`` the sum of its layers' table entries, ``R`` what the profile does
        not cover: pooling, adds, the layers without a chain), the original (``model_ms``, ``layers_ms``) and
        a probe with every layer at one ladder rank (``probe_ms``, ``probe_layers_ms``) give
        ``s = (T0 - T1) / (S0 - S1)``. Guards: when the probe's saving is under 5 % of ``S0`` or either time is
        not finite, ``s`` stays 1 (the plain difference); when the fit is not positive or leaves a negative
        remainder, ``s = T0 / S0`` (all of the model scales). Sets :attr:`calibration` to what was used."""
        t0, t1, s0, s1 = (float(v) for v in (model_ms, probe_ms, layers_ms, probe_layers_ms))
        if not all(np.isfinite([t0, t1, s0, s1])) or s0 <= 0 or s0 - s1 < 0.05 * s0:
            self.context_scale, self.calibration = 1.0, "none (no usable probe)"
        else:
            s = (t0 - t1) / (s0 - s1)
            if s > 0 and t0 - s * s0 >= 0:
                self.context_scale, self.calibration = s, "two-point"
            else:
                self.context_scale, self.calibration = t0 / s0, "proportional"
        return self.context_scale

    def measured(self, layer: Any, method: str) -> bool:
        """True when the table has the layer (as is) for ``method``."""
        return None in self.entries.get(layer_signature(layer, method), {})

    def latency_ms(self, layer: Any, method: str, ranks: Any, estimate: float) -> float:
        """Latency of ``layer`` as is (``ranks`` None) or rewritten by ``method`` at ``ranks``, in ms.

        ``estimate`` is :func:`latency_estimate` of the same thing (MAC-equivalents), used, scaled, when the
        table has no entry."""
        table = self.entries.get(layer_signature(layer, method), {})
        if ranks is None and None in table:
            return float(table[None])
        points = {k: v for k, v in table.items() if k is not None}
        if ranks is not None and points:
            value = _interpolate(points, tuple(int(r) for r in ranks))
            if value is not None:
                return value
        self.misses.add(getattr(layer, "name", "?"))
        return float(estimate) * (self.ms_per_unit or 0.0)

    def fit_scale(self, estimates: Mapping[tuple[str, Any], float]) -> float:
        """Fit ``ms_per_unit`` (through the origin) from ``(signature, ranks) -> estimate`` pairs the table
        has measured; keeps and returns it."""
        pairs = [(est, self.entries[sig][r]) for (sig, r), est in estimates.items()
                 if sig in self.entries and r in self.entries[sig] and est > 0]
        if pairs:
            x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            self.ms_per_unit = float((x * y).sum() / max((x * x).sum(), 1e-30))
        return float(self.ms_per_unit or 0.0)


def _interpolate(points: Mapping[tuple[int, ...], float], ranks: tuple[int, ...]) -> float | None:
    """Multilinear interpolation of ``points`` (a full grid of rank tuples -> ms) at ``ranks``; None when the
    points do not form a grid of ``len(ranks)`` dimensions."""
    dims = len(ranks)
    if any(len(k) != dims for k in points):
        return None
    axes = [sorted({k[d] for k in points}) for d in range(dims)]
    if ranks in points:
        return float(points[ranks])
    corners: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    for d, r in enumerate(ranks):
        ax = axes[d]
        r = min(max(r, ax[0]), ax[-1])
        hi = next(i for i, a in enumerate(ax) if a >= r)
        lo = max(0, hi - 1) if ax[hi] != r else hi
        w = 0.0 if lo == hi else (r - ax[lo]) / (ax[hi] - ax[lo])
        nxt = []
        for key, weight in corners:
            nxt.append((key + (ax[lo],), weight * (1 - w)))
            if hi != lo:
                nxt.append((key + (ax[hi],), weight * w))
        corners = nxt
    if any(k not in points for k, _ in corners):
        return None
    return float(sum(points[k] * w for k, w in corners))
