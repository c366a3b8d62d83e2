"""Dense (and Dense inside TimeDistributed) by truncated SVD: ``Dense(r, no bias) -> Dense(n, bias, activation)``.

``x @ W + b`` with ``W (m, n) ~= A (m, r) @ B (r, n)`` becomes ``(x @ A) @ B + b``; exact at ``r = min(m, n)``.
Pays when ``r < m n / (m + n)``. Data-aware with the second moment of the layer's input features
(``E[x^T x]``, pooled over time steps for 3-D inputs): the truncation then minimises the output error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgelr.rewrite.cost import io_shapes
from edgelr.rewrite.registry import Cost, NewLayer, Ranks, Rewrite, child_name, derived_config, register_rewriter
from edgelr.rewrite.svdmatrix import MatrixSVD, SingleSVDRewriter


def _inner(layer: Any) -> Any:
    return layer.layer if type(layer).__name__ == "TimeDistributed" else layer


def _rows(layer: Any) -> int:
    """Rows the kernel multiplies per example: the product of the input's leading (non-batch) dims."""
    in_shape, _ = io_shapes(layer)
    return int(np.prod([1 if d is None else d for d in in_shape[1:-1]], dtype=np.int64))


@register_rewriter("svd")
class DenseSVD(SingleSVDRewriter):
    """Dense or TimeDistributed(Dense) -> two Dense layers (truncated SVD of the kernel)."""

    layers = ("Dense", "TimeDistributed(Dense)")

    def supports(self, layer: Any) -> bool:
        name = type(layer).__name__
        if name == "TimeDistributed":
            return type(layer.layer).__name__ == "Dense"
        return name == "Dense"

    def _kernel(self, layer: Any) -> np.ndarray:
        return np.asarray(_inner(layer).kernel.numpy(), dtype=np.float32)

    def full_ranks(self, layer: Any) -> Ranks:
        m, n = _inner(layer).kernel.shape
        return (int(min(m, n)),)

    def cost(self, layer: Any, ranks: Ranks) -> Cost:
        inner = _inner(layer)
        (r,) = ranks
        m, n = (int(d) for d in inner.kernel.shape)
        params = m * r + r * n + (n if inner.use_bias else 0)
        return params, _rows(layer) * (m * r + r * n)

    def outputs(self, layer: Any, ranks: Ranks | None) -> int | None:
        n = int(_inner(layer).kernel.shape[1])
        return _rows(layer) * (n if ranks is None else int(ranks[0]) + n)

    def input_statistic(self, layer: Any) -> Any:
        from edgelr.rewrite.calibration import InputStatistic

        return InputStatistic("features")

    def decompose(self, layer: Any, stats: np.ndarray | None = None) -> MatrixSVD:
        return MatrixSVD.of(self._kernel(layer), stats)

    def materialize(self, layer: Any, decomposition: MatrixSVD, ranks: Ranks, *, exact: bool = True) -> Rewrite:
        from edgelr.tfcompat import keras2

        keras = keras2()
        ranks = self.check_ranks(layer, ranks)
        svd = decomposition.truncate(ranks[0])
        inner = _inner(layer)
        first = keras.layers.Dense.from_config(derived_config(
            inner, child_name(inner, "svd_in"), units=ranks[0], use_bias=False, activation="linear",
            activity_regularizer=None, bias_regularizer=None, bias_constraint=None))
        second = keras.layers.Dense.from_config(derived_config(inner, child_name(inner, "svd_out")))
        w_out = [svd.right] + ([inner.bias.numpy()] if inner.use_bias else [])
        if inner is not layer:
            first = keras.layers.TimeDistributed(first, name=child_name(layer, "svd_in"))
            second = keras.layers.TimeDistributed(second, name=child_name(layer, "svd_out"))
        chain = [NewLayer(first, [svd.left]), NewLayer(second, w_out)]
        params, macs = self.cost(layer, ranks)
        return Rewrite(chain, ranks, params, macs, svd.rel_error)

