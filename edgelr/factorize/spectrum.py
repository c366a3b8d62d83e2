"""Spectra computed once and shared by rank selection and decomposition.

A :class:`Spectrum` holds the Gram matrix ``X X^T`` (or ``X^T X``) of one side of a matrix ``X`` and
its eigenvalues, the squared singular values of ``X``. EVBMF and energy rank selection need only the
eigenvalues (an ``O(k^3)`` values-only eigen-solve of the small ``k x k`` Gram matrix, far cheaper
than a full SVD); truncated SVD and the HOSVD start of Tucker-2 then ask for the leading
``r`` eigenvectors only (:meth:`Spectrum.leading_vectors`). Passing the same :class:`Spectrum` to the
selector and the decomposition avoids factorizing a layer twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg

from edgelr.factorize._checks import as_finite_array


def leading_eigenvectors(gram: np.ndarray, rank: int) -> np.ndarray:
    """``(k, rank)`` orthonormal eigenvectors of the ``rank`` largest eigenvalues of a symmetric matrix.

    Parameters
    ----------
    gram
        ``(k, k)`` symmetric positive semi-definite float64 matrix.
    rank
        ``1 <= rank <= k``.

    Returns
    -------
    np.ndarray
        Columns in descending order of eigenvalue. A few leading vectors come from LAPACK's
        selected-eigenvalue driver (``syevr``), many from the full divide-and-conquer solver.
    """
    k = gram.shape[0]
    if 4 * rank <= k:
        _, vectors = scipy.linalg.eigh(gram, subset_by_index=(k - rank, k - 1), driver="evr", check_finite=False)
    else:
        _, vectors = scipy.linalg.eigh(gram, driver="evd", check_finite=False)
        vectors = vectors[:, k - rank :]
    return np.ascontiguousarray(vectors[:, ::-1])


@dataclass(frozen=True)
class Spectrum:
    """Gram matrix of one side of a matrix ``X`` of shape ``(m, n)`` and its eigenvalues.

    Attributes
    ----------
    values
        ``(k,)`` float64 eigenvalues of the Gram matrix in descending order, clipped at 0, where
        ``k = m`` for ``side="rows"`` and ``k = n`` for ``side="columns"``. ``values[h] = s_h**2``.
    gram
        ``(k, k)`` float64 Gram matrix: ``X X^T`` for ``side="rows"``, ``X^T X`` for ``side="columns"``.
    shape
        ``(m, n)``, the shape of ``X``.
    side
        Which side the Gram matrix is of; its eigenvectors are the left singular vectors of ``X`` for
        ``"rows"`` and the right ones for ``"columns"``.
    """

    values: np.ndarray
    gram: np.ndarray
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

    def leading_vectors(self, rank: int) -> np.ndarray:
        """``(k, rank)`` singular vectors of this side for the ``rank`` largest singular values."""
        return leading_eigenvectors(self.gram, rank)


def gram_spectrum(matrix: np.ndarray, side: Literal["rows", "columns"]) -> Spectrum:
    """Gram matrix of one side of ``matrix`` and its eigenvalues (no input checks: internal use).

    Parameters
    ----------
    matrix
        ``(m, n)`` finite float64 array.
    side
        ``"rows"`` for ``X X^T`` (m x m), ``"columns"`` for ``X^T X`` (n x n).
    """
    gram = matrix @ matrix.T if side == "rows" else matrix.T @ matrix
    values = scipy.linalg.eigh(gram, eigvals_only=True, check_finite=False)
    values = np.clip(values[::-1], 0.0, None)
    return Spectrum(values=values, gram=gram, shape=(int(matrix.shape[0]), int(matrix.shape[1])), side=side)


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
        ``side="rows"`` when ``m <= n`` else ``side="columns"``.

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
        Row-side spectra (``c_in x c_in`` and ``c_out x c_out`` Gram matrices): their leading
        vectors are the HOSVD factors of Tucker-2 and their singular values feed EVBMF/energy.

    Raises
    ------
    FactorizeError
        Not 4-D, empty, or with NaN/Inf values.
    """
    arr = as_finite_array(kernel, 4, "kernel")
    return gram_spectrum(mode_unfolding(arr, 2), "rows"), gram_spectrum(mode_unfolding(arr, 3), "rows")
