"""A matrix decomposed once (its Gram spectrum) and truncated cheaply at any rank.

Every SVD-based rewriter (Dense, 1x1 and channel-SVD convs, separable pointwise, Embedding, recurrent
kernels, spatial SVD) keeps one :class:`MatrixSVD` per weight matrix, so a rank search re-materializes a
layer at a new rank with one matrix product instead of a new factorization. With input statistics
(``MatrixSVD.of(matrix, covariance)``) the spectrum is the data-aware one and truncations minimise the
layer's output error (:mod:`edgelr.factorize.whiten`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgelr.rewrite.registry import Ranks, Rewriter


@dataclass(frozen=True)
class MatrixSVD:
    """A weight matrix and its spectrum (:class:`edgelr.factorize.spectrum.Spectrum`).

    Attributes
    ----------
    matrix : numpy.ndarray
        ``(m, n)`` float32 weights.
    spectrum : edgelr.factorize.spectrum.Spectrum
        Gram eigen-decomposition of the smaller side; ``spectrum.singular_values`` has ``min(m, n)`` entries.
        Of the whitened matrix ``L^T W`` when ``whitening`` is set (the data-aware spectrum).
    whitening : edgelr.factorize.Whitening or None
        The input statistics of the ``m`` rows' side, or None (weights only).
    """

    matrix: np.ndarray
    spectrum: Any
    whitening: Any = None

    @classmethod
    def of(cls, matrix: np.ndarray, covariance: np.ndarray | None = None) -> "MatrixSVD":
        """Decompose ``matrix`` (m, n) once; data-aware with the ``(m, m)`` input second moment ``covariance``."""
        from edgelr.factorize.spectrum import matrix_spectrum
        from edgelr.factorize.whiten import layer_spectrum, whitening

        arr = np.asarray(matrix, dtype=np.float32)
        if covariance is None:
            return cls(arr, matrix_spectrum(arr.astype(np.float64)))
        white = whitening(covariance)
        return cls(arr, layer_spectrum(arr.astype(np.float64), white), white)

    def tail_share(self, rank: int) -> float:
        """Share of the squared Frobenius norm beyond the ``rank`` largest singular values: the squared
        relative error of the truncated SVD at ``rank``."""
        return tail_share(self.spectrum, rank)

    def truncate(self, rank: int) -> Any:
        """``SVDResult`` with ``left (m, rank)``, ``right (rank, n)`` (float32) and its relative error."""
        from edgelr.factorize import truncated_svd

        return truncated_svd(self.matrix, int(rank), spectrum=self.spectrum, whitening=self.whitening)


def tail_share(spectrum: Any, rank: int) -> float:
    """``sum(s[rank:]**2) / sum(s**2)`` of a :class:`edgelr.factorize.spectrum.Spectrum` (0 for a zero matrix)."""
    energy = np.asarray(spectrum.singular_values, dtype=np.float64) ** 2
    total = float(energy.sum())
    return float(energy[int(rank):].sum() / total) if total > 0 else 0.0


def select_matrix_rank_for(matrix: MatrixSVD, policy: Any, cost: Callable[[int], tuple[int, int]],
                           full_cost: tuple[int, int], multiple: int, floor: int) -> int:
    """Rank of ``matrix`` chosen by ``policy`` (``edgelr.factorize.select_matrix_rank``)."""
    from edgelr.factorize import select_matrix_rank

    return int(select_matrix_rank(matrix.matrix, policy, cost=cost, full_cost=full_cost,
                                  multiple=multiple, floor=floor, spectrum=matrix.spectrum))


class SingleSVDRewriter(Rewriter):
    """Base of the rewriters with one rank, the truncation of one :class:`MatrixSVD` (their ``decompose``
    result): ranks come from the policy applied to that matrix's spectrum (data-aware when the layer has
    input statistics) with the rewriter's own cost model."""

    def select_ranks(self, layer: Any, decomposition: MatrixSVD, policy: Any, multiple: int, floor: int) -> Ranks:
        from edgelr.rewrite.cost import layer_cost

        return (select_matrix_rank_for(decomposition, policy, lambda r: self.cost(layer, (int(r),)),
                                       layer_cost(layer), multiple, floor),)

    def error_proxy(self, decomposition: MatrixSVD, ranks: Ranks) -> float | None:
        return decomposition.tail_share(int(ranks[0]))
