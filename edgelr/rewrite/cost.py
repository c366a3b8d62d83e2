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
quantization, which a target profile overrides with its ``output_cost`` field.
"""

from __future__ import annotations

import math
from typing import Any

from edgelr.errors import FactorizeError

Shape = tuple[int | None, ...]

#: MAC-equivalents per activation element written, by quantization (see the module docstring). Fitted on
#: an x86-64 AVX2 host with XNNPACK (reports/resnet50_layer_profile.md): int8 15-28 (16 chosen), float32 1-2.
#: Re-fit on the device with tests/perf/profile_resnet50_layers.py.
OUTPUT_COST = {"int8": 16.0, "dynamic": 2.0, "float16": 2.0, "none": 2.0}


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
    """The target's ``output_cost`` if set (> 0), else ``OUTPUT_COST`` for its quantization; int8 without
    a target."""
    if target is None:
        return OUTPUT_COST["int8"]
    own = float(getattr(target, "output_cost", 0.0) or 0.0)
    return own if own > 0 else OUTPUT_COST.get(str(getattr(target, "quantization", "int8")), OUTPUT_COST["int8"])
