"""LSTM rewriter ``tensor3``: the gate weights as one 3-D tensor, Tucker-2 on its hidden and input modes.

Beside the per-matrix ``svd`` / ``svd-recurrent`` rewriters (:mod:`edgelr.rewrite.recurrent`), this one
stacks the four gate matrices ``W_g = [W_x,g; W_h,g]^T (H, D + H)`` (input and recurrent kernels together)
into ``T (4, H, D + H)`` and factorizes ``T[g] ~= U G_g V^T`` with shared ``U (H, R_h)``, ``V (D + H, R_x)``
and a core ``G (4, R_h, R_x)`` (:mod:`edgelr.factorize.tensor3`). Ranks ``(R_h, R_x)``; exact at
``(H, D + H)``.

The chain: ``Dense(R_x)`` (``<layer>/t3_in``, ``x V_x + o`` for the whole sequence outside the loop; the
constant offset ``o`` is taken back out of the gate bias, see ``materialize``),
then a stock ``tf_keras.layers.RNN`` (keeping the layer's name) around
:class:`edgelr.rewrite.cells.Tucker3LSTMCell`. TFLite converts it to a ``WHILE`` loop (full-integer int8:
unrolled, see :func:`edgelr.compress.convert.unrolled_copy`). Dropout is not carried over.

Costs: ``D R_x + H R_x + 4 R_h R_x + 4 R_h H`` MACs per step; params ``D R_x + H R_x + 4 R_h R_x + R_h H``
plus the 4H bias and the R_x offset (``U`` is stored once and applied to every gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgelr.rewrite.cost import io_shapes, layer_cost
from edgelr.rewrite.registry import (
    Cost, NewLayer, Ranks, Rewrite, Rewriter, child_name, register_rewriter,
)
from edgelr.rewrite.svdmatrix import tail_share

_RNN_KEYS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll", "time_major")


@dataclass
class Tensor3State:
    """The layer's ``(4, H, D + H)`` tensor, the spectra of its two decomposed modes, and a cache of
    decompositions by ``(ranks, exact)``."""

    tensor: np.ndarray
    spectra: tuple
    input_dim: int
    cache: dict


def _dims(layer: Any) -> tuple[int, int, int]:
    """(T or 1, D, H)."""
    in_shape, _ = io_shapes(layer)
    steps = 1 if in_shape[1] is None else int(in_shape[1])
    return steps, int(layer.cell.kernel.shape[0]), int(layer.units)


@register_rewriter("tensor3", priority=-10, fallback="svd")
class LSTMTensor3Tucker(Rewriter):
    """LSTM: input and recurrent kernels as one 3-D tensor, Tucker-2 (shared U, V, core G)."""

    layers = ("LSTM",)

    def supports(self, layer: Any) -> bool:
        return type(layer).__name__ == "LSTM"

    def full_ranks(self, layer: Any) -> Ranks:
        _, d, h = _dims(layer)
        return (min(h, 4 * (d + h)), min(d + h, 4 * h))

    def cost(self, layer: Any, ranks: Ranks) -> Cost:
        r_h, r_x = (int(r) for r in ranks)
        steps, d, h = _dims(layer)
        shared = d * r_x + h * r_x + 4 * r_h * r_x  # the projection of [x; h] and the core
        # U is shared by the 4 gates...; with a bias, the projection carries R_x more (the step-0 offset below)
        params = shared + r_h * h + (4 * h + r_x if layer.use_bias else 0)
        return params, steps * (shared + 4 * r_h * h)  # ...but applied to each

    def decompose(self, layer: Any) -> Tensor3State:
        from edgelr.factorize.tensor3 import lstm_tensor, tensor3_spectra

        tensor = lstm_tensor(layer.cell.kernel.numpy(), layer.cell.recurrent_kernel.numpy())
        return Tensor3State(tensor, tensor3_spectra(tensor), int(layer.cell.kernel.shape[0]), {})

    def select_ranks(self, layer: Any, decomposition: Tensor3State, policy: Any, multiple: int, floor: int) -> Ranks:
        from edgelr.factorize import select_tucker2_ranks
        from edgelr.factorize.tensor3 import as_kernel

        ranks = select_tucker2_ranks(as_kernel(decomposition.tensor), policy,
                                     cost=lambda a, b: self.cost(layer, (int(a), int(b))), full_cost=layer_cost(layer),
                                     multiple=multiple, floor=floor, spectra=decomposition.spectra)
        full = self.full_ranks(layer)
        return (min(int(ranks[0]), full[0]), min(int(ranks[1]), full[1]))

    def error_proxy(self, decomposition: Tensor3State, ranks: Ranks) -> float | None:
        spec_h, spec_x = decomposition.spectra
        return 1.0 - (1.0 - tail_share(spec_h, int(ranks[0]))) * (1.0 - tail_share(spec_x, int(ranks[1])))

    def materialize(self, layer: Any, decomposition: Tensor3State, ranks: Ranks, *, exact: bool = True) -> Rewrite:
        from edgelr.factorize.tensor3 import tucker2_3d
        from edgelr.rewrite import cells
        from edgelr.tfcompat import keras2

        keras = keras2()
        ranks = self.check_ranks(layer, ranks)
        key = (ranks, exact)
        if key not in decomposition.cache:
            decomposition.cache[key] = tucker2_3d(decomposition.tensor, ranks, max_iter=3 if exact else 0,
                                                  spectra=decomposition.spectra)
        res = decomposition.cache[key]
        r_h, r_x = res.ranks
        d = decomposition.input_dim
        cfg = layer.get_config()
        dtype = cfg.get("dtype")
        core = res.core.transpose(2, 0, 1).reshape(r_x, 4 * r_h)  # [:, g R_h:(g+1) R_h] = G_g^T
        cell = cells.Tucker3LSTMCell(int(layer.units), r_h, activation=cfg["activation"],
                                     recurrent_activation=cfg["recurrent_activation"], use_bias=bool(layer.use_bias),
                                     dtype=dtype, name=f"{layer.name}_cell")
        rnn = keras.layers.RNN(cell, name=layer.name, dtype=dtype, **{k: cfg[k] for k in _RNN_KEYS if k in cfg})
        f32 = np.float32
        v_x = res.inputs[:d].astype(f32)
        weights = [res.inputs[d:].astype(f32), core.astype(f32), res.hidden.T.astype(f32)]
        proj_weights = [v_x]
        if layer.use_bias:
            # The projection gets a constant offset o, taken back out of the gate bias: o C U^T per gate, so the
            # layer computes the same function. Without it, a step whose input and state are zero for every
            # calibration sample (left-padded sequences, h0 = 0) gives q = 0 exactly: int8 conversion then
            # gives q a ~1e-9 scale, XNNPACK refuses the model ("failed to prepare") and the gate bias, quantized
            # at input x weight scale, overflows int32. o's size is a typical |x V_x| (median column norm / 2).
            offset = np.full(r_x, 0.5 * float(np.median(np.linalg.norm(v_x, axis=0))) or 1.0, f32)
            shift = np.concatenate([(offset @ core[:, g * r_h:(g + 1) * r_h]) @ res.hidden.T for g in range(4)])
            weights.append((layer.cell.bias.numpy() - shift).astype(f32))
            proj_weights.append(offset)
        proj = keras.layers.Dense(r_x, use_bias=bool(layer.use_bias), name=child_name(layer, "t3_in"), dtype=dtype)
        chain = [NewLayer(proj, proj_weights), NewLayer(rnn, weights, extra_inputs=True)]
        return Rewrite(chain, ranks, *self.cost(layer, ranks), float(res.rel_error))
