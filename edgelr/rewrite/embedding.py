"""Embedding by truncated SVD of the table: ``Embedding(vocab, r) -> Dense(dim, no bias)``.

Names ``<layer>/svd_in`` (the smaller table, keeps ``mask_zero`` and ``input_length``) and ``<layer>/svd_out``.
A lookup costs no MACs, the projection does: this rewrite trades MACs for parameters, so the model rewrite
judges it on parameters only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgelr.rewrite.cost import io_shapes
from edgelr.rewrite.registry import Cost, NewLayer, Ranks, Rewrite, child_name, derived_config, register_rewriter
from edgelr.rewrite.svdmatrix import MatrixSVD, SingleSVDRewriter


@register_rewriter("svd")
class EmbeddingSVD(SingleSVDRewriter):
    """Embedding -> a narrower Embedding and a Dense projection (truncated SVD of the table)."""

    layers = ("Embedding",)

    def supports(self, layer: Any) -> bool:
        return type(layer).__name__ == "Embedding"

    def full_ranks(self, layer: Any) -> Ranks:
        return (int(min(layer.input_dim, layer.output_dim)),)

    def cost(self, layer: Any, ranks: Ranks) -> Cost:
        (r,) = ranks
        in_shape, _ = io_shapes(layer)
        tokens = int(np.prod([1 if d is None else d for d in in_shape[1:]]))
        dim = int(layer.output_dim)
        return int(layer.input_dim) * r + r * dim, tokens * r * dim

    def outputs(self, layer: Any, ranks: Ranks | None) -> int | None:
        in_shape, _ = io_shapes(layer)
        tokens = int(np.prod([1 if d is None else d for d in in_shape[1:]]))
        return tokens * (int(layer.output_dim) + (0 if ranks is None else int(ranks[0])))

    def decompose(self, layer: Any) -> MatrixSVD:
        return MatrixSVD.of(np.asarray(layer.embeddings.numpy(), dtype=np.float32))

    def materialize(self, layer: Any, decomposition: MatrixSVD, ranks: Ranks, *, exact: bool = True) -> Rewrite:
        from edgelr.tfcompat import keras2

        keras = keras2()
        ranks = self.check_ranks(layer, ranks)
        (r,) = ranks
        svd = decomposition.truncate(r)
        table = keras.layers.Embedding.from_config(derived_config(layer, child_name(layer, "svd_in"), output_dim=r,
                                                                  input_dim=int(layer.input_dim)))
        proj = keras.layers.Dense(int(layer.output_dim), use_bias=False, name=child_name(layer, "svd_out"),
                                  dtype=layer.get_config().get("dtype"))
        chain = [NewLayer(table, [svd.left]), NewLayer(proj, [svd.right])]
        return Rewrite(chain, ranks, *self.cost(layer, ranks), svd.rel_error)

