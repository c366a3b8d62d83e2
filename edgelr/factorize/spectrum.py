"""Spectra computed once and shared by rank selection and decomposition.

A :class:`Spectrum` is the eigen-decomposition of a Gram matrix ``X X^T`` (or ``X^T X``): its
eigenvalues are the squared singular values of ``X`` and its eigenvectors are the singular vectors of
that side. EVBMF and energy rank selection need only the singular values; truncated SVD and the HOSVD
start of Tucker-2 need the vectors too, so passing the same :class:`Spectrum` to both avoids a second
factorization of the same matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgelr.factorize._checks import as_finite_array


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of the Gram matrix of one side of a matrix ``X`` of shape ``(m, n)``.

    Attributes
    ----------
    values
        ``(k,)`` float64 eigenvalues of the Gram matrix in descending order, clipped at 0, where
        ``k = m`` for ``side="rows"`` and ``k = n`` for ``side="columns"``. ``values[h] = s_h**2``.
    vectors
        ``(k, k)`` float64 orthonormal eigenvectors (columns), in the order of ``values``: the left
        singular vectors of ``X`` for ``side="rows"``, the right ones for ``side="columns"``.
    shape
        ``(m, n)``, the shape of ``X``.
    side
        ``"rows"`` if the Gram matrix is ``X X^T`` (m x m), ``"columns"`` if it is ``X^T X`` (n x n).
    """

    values: np.ndarray
    vectors: np.ndarray
    shape: tuple[int, int]
    side: Literal["rows", "columns"]

    @property
    def singular_values(self) -> np.ndarray:
        """``(min(m, n),)`` singular values of ``X`` in descending order (float64)."""
        return np.sqrt(self.values[: min(self.shape)])

    @property
    def total_energy(self) -> float:
        """``||X||_F^2``, the sum of the squared singular values."""
        return float(self.values.sum())


def gram_spectrum(matrix: np.ndarray, side: Literal["rows", "columns"]) -> Spectrum:
    """Eigen-decompose the Gram matrix of one side of ``matrix`` (no input checks: internal use).

    Parameters
    ----------
    matrix
        ``(m, n)`` finite float64 array.
    side
        ``"rows"`` for ``X X^T`` (m x m), ``"columns"`` for ``X^T X`` (n x n).
    """
    gram = matrix @ matrix.T if side == "rows" else matrix.T @ matrix
    values, vectors = np.linalg.eigh(gram)
    values = np.clip(values[::-1], 0.0, None)
    vectors = np.ascontiguousarray(vectors[:, ::-1])
    return Spectrum(values=values, vectors=vectors, shape=(int(matrix.shape[0]), int(matrix.shape[1])), side=side)


def matrix_spectrum(matrix: np.ndarray) -> Spectrum:
    """Spectrum of a matrix through the Gram matrix of its smaller side.

    Parameters
    ----------
    matrix
        ``(m, n)`` array, e.g. a Dense kernel ``(n_in, n_out)`` or a 1x1 conv kernel reshaped to
        ``(c_in, c_out)``.

    Returns
    -------
    Spectrum
        ``side="rows"`` when ``m <= n`` else ``side="columns"``; costs ``O(m n min(m, n))``.

    Raises
    ------
    FactorizeError
        Not 2-D, empty, or with NaN/Inf values.
    """
    arr = as_finite_array(matrix, 2, "matrix")
    return gram_spectrum(arr, "rows" if arr.shape[0] <= arr.shape[1] else "columns")


def mode_unfolding(kernel: np.ndarray, mode: Literal[2, 3]) -> np.ndarray:
    """Mode-2 (``c_in``) or mode-3 (``c_out``) unfolding of a conv kernel.

    Parameters
    ----------
    kernel
        ``(kh, kw, c_in, c_out)`` array.
    mode
        2 gives a ``(c_in, kh*kw*c_out)`` matrix, 3 gives ``(c_out, kh*kw*c_in)``.
    """
    kh, kw, c_in, c_out = kernel.shape
    if mode == 2:
        return kernel.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out)
    return kernel.transpose(3, 0, 1, 2).reshape(c_out, kh * kw * c_in)


def unfolding_spectra(kernel: np.ndarray) -> tuple[Spectrum, Spectrum]:
    """Spectra of the mode-2 (``c_in``) and mode-3 (``c_out``) unfoldings of a conv kernel.

    Parameters
    ----------
    kernel
        ``(kh, kw, c_in, c_out)`` array.

    Returns
    -------
    tuple[Spectrum, Spectrum]
        Row-side spectra (``c_in x c_in`` and ``c_out x c_out`` Gram matrices): their vectors are the
        HOSVD factors of Tucker-2 and their singular values feed EVBMF/energy rank selection.

    Raises
    ------
    FactorizeError
        Not 4-D, empty, or with NaN/Inf values.
    """
    arr = as_finite_array(kernel, 4, "kernel")
    return gram_spectrum(mode_unfolding(arr, 2), "rows"), gram_spectrum(mode_unfolding(arr, 3), "rows")
