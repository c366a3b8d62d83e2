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
import scipy.linalg.lapack

from edgelr.factorize._checks import as_finite_array
from edgelr.factorize.blas import one_blas_thread


class SymmetricEigen:
    """Eigenvalues of a symmetric matrix now, any number of leading eigenvectors later, one reduction.

    The matrix is reduced once to tridiagonal form ``A = Q T Q^T`` (LAPACK ``dsytrd``, the
    ``O(k^3)`` step); all eigenvalues come from ``T`` (``dsterf``, ``O(k^2)``), and
    :meth:`leading_vectors` computes eigenvectors of ``T`` (``dstemr`` on an index range for a few,
    ``dstevd`` for many) and maps only the requested ones back with the stored reflectors
    (``dormqr``). Rank selection needs every eigenvalue but only
    the first ``r`` vectors, so this costs about one values-only solve instead of two solves.

    Parameters
    ----------
    matrix
        ``(k, k)`` symmetric float64 matrix (only its lower triangle is read).
    """

    def __init__(self, matrix: np.ndarray) -> None:
        self._matrix = matrix
        k = int(matrix.shape[0])
        self._k = k
        self._reflectors: np.ndarray | None = None
        if k == 1:
            self.values = np.array([float(matrix[0, 0])])
            return
        lwork = int(scipy.linalg.lapack.dsytrd_lwork(k, lower=1)[0])
        c, d, e, tau, info = scipy.linalg.lapack.dsytrd(matrix, lower=1, lwork=max(lwork, k))
        values, info2 = scipy.linalg.lapack.dsterf(d.copy(), e.copy())
        if info != 0 or info2 != 0:  # pragma: no cover - LAPACK failure: use the one-shot solver
            self.values = np.asarray(scipy.linalg.eigh(matrix, eigvals_only=True, check_finite=False))[::-1].copy()
            return
        self._reflectors, self._tau, self._d, self._e = c, tau, d, e
        self.values = np.asarray(values)[::-1].copy()  # descending

    def leading_vectors(self, rank: int) -> np.ndarray:
        """``(k, rank)`` orthonormal eigenvectors of the ``rank`` largest eigenvalues, descending."""
        k = self._k
        if k == 1:
            return np.ones((1, 1))
        if self._reflectors is not None:
            lapack = scipy.linalg.lapack
            z = None
            if 16 * rank <= k:  # a few vectors: MRRR on the wanted index range only
                m, _, z_all, info = lapack.dstemr(self._d.copy(), np.append(self._e, 0.0), 2, 0.0, 0.0, k - rank + 1, k)
                if info == 0 and m == rank:
                    z = z_all[:, :rank]
            else:  # many vectors: divide and conquer on T (all of them) is cheaper than MRRR on a range
                _, z_all, info = lapack.dstevd(self._d.copy(), self._e.copy())
                if info == 0:
                    z = z_all[:, k - rank :]
            if z is not None:
                z = np.asfortranarray(z)
                vectors = np.empty((k, rank))
                vectors[0] = z[0]
                # Q = diag(1, Q1) with Q1 the product of the dsytrd reflectors (QR layout below the diagonal)
                qz, _, info = lapack.dormqr(
                    "L", "N", self._reflectors[1:, : k - 1], self._tau, z[1:], 64 * rank + 4160
                )
                if info == 0:
                    vectors[1:] = qz
                    return np.ascontiguousarray(vectors[:, ::-1])
        _, vectors = scipy.linalg.eigh(  # pragma: no cover - fallback when MRRR fails
            self._matrix, subset_by_index=(k - rank, k - 1), check_finite=False
        )
        return np.ascontiguousarray(vectors[:, ::-1])


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
        Columns in descending order of eigenvalue.
    """
    return SymmetricEigen(gram).leading_vectors(rank)


@dataclass(frozen=True)
class Spectrum:
    """Gram matrix of one side of a matrix ``X`` of shape ``(m, n)`` and its eigenvalues.

    Attributes
    ----------
    values
        ``(k,)`` float64 eigenvalues of the Gram matrix in descending order, clipped at 0, where
        ``k = m`` for ``side="rows"`` and ``k = n`` for ``side="columns"``. ``values[h] = s_h**2``.
    eigen
        The reduced Gram matrix (``X X^T`` for ``side="rows"``, ``X^T X`` for ``side="columns"``),
        from which :meth:`leading_vectors` computes eigenvectors on demand.
    shape
        ``(m, n)``, the shape of ``X``.
    side
        Which side the Gram matrix is of; its eigenvectors are the left singular vectors of ``X`` for
        ``"rows"`` and the right ones for ``"columns"``.
    """

    values: np.ndarray
    eigen: SymmetricEigen
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
        return self.eigen.leading_vectors(rank)


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
    eigen = SymmetricEigen(gram)
    values = np.clip(eigen.values, 0.0, None)
    return Spectrum(values=values, eigen=eigen, shape=(int(matrix.shape[0]), int(matrix.shape[1])), side=side)


@one_blas_thread
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


@one_blas_thread
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
