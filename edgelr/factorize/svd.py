"""Truncated SVD of a matrix (Dense, 1x1 conv) and spatial SVD of a k x k conv kernel.

Both go through the eigen-decomposition of the Gram matrix of the smaller side
(:func:`edgelr.factorize.spectrum.matrix_spectrum`), which on 2 cores is several times faster than a
full LAPACK SVD and gives the whole spectrum that rank selection needs; pass that
:class:`~edgelr.factorize.spectrum.Spectrum` back in to avoid computing it twice.

Data-aware (``whitening=``, :mod:`edgelr.factorize.whiten`): the matrix is whitened by its input
statistics, truncated, and the left factor un-whitened, which minimises the layer's output error on the
calibration inputs instead of the weight error; ``rel_error`` is then that relative output error and the
``spectrum`` passed in must be :func:`~edgelr.factorize.whiten.layer_spectrum` of the matrix with the same
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelr.errors import FactorizeError
from edgelr.factorize._checks import as_finite_array, check_rank, output_dtype
from edgelr.factorize.blas import one_blas_thread
from edgelr.factorize.spectrum import Spectrum, gram_spectrum
from edgelr.factorize.whiten import Whitening, as_whitening


@dataclass(frozen=True)
class SVDResult:
    """A rank-``r`` factorization ``matrix ~= left @ right``.

    Attributes
    ----------
    left
        ``(m, r)``: ``U_r sqrt(S_r)``.
    right
        ``(r, n)``: ``sqrt(S_r) V_r^T``.
    singular_values
        ``(min(m, n),)`` full spectrum of the matrix, descending (float64).
    rank
        ``r``.
    rel_error
        ``||W - left @ right||_F / ||W||_F`` (0 for an all-zero matrix); with ``whitening`` the relative
        output error ``||L^T (W - left @ right)||_F / ||L^T W||_F`` on the calibration inputs.
    """

    left: np.ndarray
    right: np.ndarray
    singular_values: np.ndarray
    rank: int
    rel_error: float


@dataclass(frozen=True)
class SpatialSVDResult:
    """Spatial SVD of a conv kernel: a ``kh x 1`` conv ``c_in -> R`` then a ``1 x kw`` conv ``R -> c_out``.

    Attributes
    ----------
    vertical
        ``(kh, 1, c_in, R)`` kernel of the first (vertical) conv.
    horizontal
        ``(1, kw, R, c_out)`` kernel of the second (horizontal) conv.
    rank
        ``R``.
    rel_error
        Relative Frobenius error of the composed kernel.
    singular_values
        ``(min(c_in*kh, c_out*kw),)`` full spectrum of the reshaped kernel (of the whitened one with
        ``whitening``), descending (float64).
    """

    vertical: np.ndarray
    horizontal: np.ndarray
    rank: int
    rel_error: float
    singular_values: np.ndarray


def _check_spectrum(spectrum: Spectrum, shape: tuple[int, int]) -> None:
    if tuple(spectrum.shape) != tuple(shape):
        raise FactorizeError(
            f"spectrum: computed for a matrix of shape {spectrum.shape} but the matrix has shape {shape}; "
            "pass the Spectrum of this very matrix (matrix_spectrum(matrix))"
        )


def _split_factors(arr: np.ndarray, rank: int, spectrum: Spectrum) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank-``rank`` factors of ``arr`` (float64) from its Gram spectrum, and the relative error."""
    vecs = spectrum.leading_vectors(rank)
    sing = np.sqrt(spectrum.values[:rank])
    # Split sqrt(S) evenly; for (numerically) zero singular values keep the product exact instead.
    tiny = max(float(sing[0]) if sing.size else 0.0, 1e-300) * 1e-12
    scale = np.where(sing > tiny, np.sqrt(np.maximum(sing, tiny)), 1.0)
    if spectrum.side == "rows":
        left = vecs * scale
        right = (vecs.T @ arr) / scale[:, None]
    else:
        left = (arr @ vecs) / scale
        right = vecs.T * scale[:, None]
    total = spectrum.total_energy
    tail = float(spectrum.values[rank:].sum())
    rel_error = float(np.sqrt(max(tail, 0.0) / total)) if total > 0 else 0.0
    if 0.0 < rel_error < 1e-3:
        # the tail of the Gram spectrum is only accurate to ~1e-16 ||W||^2: measure small errors directly
        rel_error = float(np.linalg.norm(arr - left @ right) / np.sqrt(total))
    return left, right, rel_error


@one_blas_thread
def truncated_svd(matrix: np.ndarray, rank: int, *, spectrum: Spectrum | None = None,
                  whitening: Whitening | np.ndarray | None = None) -> SVDResult:
    """Best rank-``rank`` approximation ``matrix ~= left @ right`` (Eckart-Young).

    Parameters
    ----------
    matrix
        ``(m, n)`` weights, e.g. a Dense kernel ``(n_in, n_out)``: then ``x @ W ~= (x @ left) @ right``,
        i.e. ``Dense(r, use_bias=False)`` then ``Dense(n_out)``.
    rank
        ``1 <= rank <= min(m, n)``.
    spectrum
        Optional :func:`~edgelr.factorize.spectrum.matrix_spectrum` of the same matrix (e.g. the one
        rank selection used); computed here when omitted. With ``whitening``:
        :func:`~edgelr.factorize.whiten.layer_spectrum` of the matrix with the same statistics.
    whitening
        Optional input statistics of the rows' side: the ``(m, m)`` second moment ``C = E[x^T x]`` of the
        inputs ``x`` (``y = x @ matrix``) or its :func:`~edgelr.factorize.whiten.whitening`. Then the
        factors minimise the output error ``E||x (W - left @ right)||^2`` (+ ``lambda ||W - left @ right||^2``),
        the closed-form optimum (:mod:`edgelr.factorize.whiten`).

    Returns
    -------
    SVDResult
        Factors in the input's float dtype (float64 for integer input).

    Raises
    ------
    FactorizeError
        Not 2-D, NaN/Inf values, ``rank`` outside ``[1, min(m, n)]``, statistics of another size.
    """
    arr = as_finite_array(matrix, 2, "matrix")
    r = check_rank(rank, min(arr.shape), f"rank for a {arr.shape[0]}x{arr.shape[1]} matrix")
    white = None if whitening is None else as_whitening(whitening, arr.shape[0], "whitening")
    target = arr if white is None else white.apply(arr)
    if spectrum is None:
        spectrum = gram_spectrum(target, "rows" if arr.shape[0] <= arr.shape[1] else "columns")
    else:
        _check_spectrum(spectrum, arr.shape)
    left, right, rel_error = _split_factors(target, r, spectrum)
    if white is not None:
        left = white.restore(left)
    dtype = output_dtype(matrix)
    return SVDResult(
        left=left.astype(dtype),
        right=right.astype(dtype),
        singular_values=spectrum.singular_values,
        rank=r,
        rel_error=rel_error,
    )


def spatial_matrix(kernel: np.ndarray) -> np.ndarray:
    """Reshape a ``(kh, kw, c_in, c_out)`` kernel to the ``(c_in*kh, c_out*kw)`` matrix of spatial SVD.

    Entry ``[(c*kh + i), (d*kw + j)]`` is ``kernel[i, j, c, d]``.
    """
    kh, kw, c_in, c_out = kernel.shape
    return kernel.transpose(2, 0, 3, 1).reshape(c_in * kh, c_out * kw)


@one_blas_thread
def spatial_svd(kernel: np.ndarray, rank: int, *, spectrum: Spectrum | None = None,
                whitening: Whitening | np.ndarray | None = None) -> SpatialSVDResult:
    """Spatial SVD (Jaderberg et al. 2014; AIMET) of a conv kernel.

    The kernel reshaped to ``(c_in*kh) x (c_out*kw)`` (:func:`spatial_matrix`) is truncated to rank
    ``R``; the left factor becomes a ``kh x 1`` conv ``c_in -> R`` and the right one a ``1 x kw`` conv
    ``R -> c_out``. Applying the two convs one after the other (cross-correlation, 'valid' padding)
    equals the original conv when ``R`` is full.

    Parameters
    ----------
    kernel
        ``(kh, kw, c_in, c_out)`` conv weights (Keras layout).
    rank
        ``1 <= R <= min(c_in*kh, c_out*kw)``.
    spectrum
        Optional ``matrix_spectrum(spatial_matrix(kernel))`` (``layer_spectrum(spatial_matrix(kernel),
        whitening)`` with ``whitening``).
    whitening
        Optional second moment ``(c_in*kh, c_in*kh)`` of the vertical ``kh x 1`` input patches, rows
        ordered as :func:`spatial_matrix`'s (``c*kh + i``), or its whitening: the vertical factor then
        minimises the output error under the approximation that patch columns are uncorrelated
        (:mod:`edgelr.factorize.whiten`).

    Raises
    ------
    FactorizeError
        Not 4-D, NaN/Inf values, ``rank`` out of range, statistics of another size.
    """
    arr = as_finite_array(kernel, 4, "kernel")
    kh, kw, c_in, c_out = arr.shape
    mat = spatial_matrix(arr)
    r = check_rank(rank, min(mat.shape), f"rank for spatial SVD of a {arr.shape} kernel")
    white = None if whitening is None else as_whitening(whitening, mat.shape[0], "whitening")
    target = mat if white is None else white.apply(mat)
    if spectrum is None:
        spectrum = gram_spectrum(target, "rows" if mat.shape[0] <= mat.shape[1] else "columns")
    else:
        _check_spectrum(spectrum, mat.shape)
    left, right, rel_error = _split_factors(target, r, spectrum)
    if white is not None:
        left = white.restore(left)
    dtype = output_dtype(kernel)
    # left[(c*kh + i), r] -> vertical[i, 0, c, r]; right[r, (d*kw + j)] -> horizontal[0, j, r, d]
    vertical = left.reshape(c_in, kh, r).transpose(1, 0, 2)[:, None, :, :]
    horizontal = right.reshape(r, c_out, kw).transpose(2, 0, 1)[None, :, :, :]
    return SpatialSVDResult(
        vertical=np.ascontiguousarray(vertical, dtype=dtype),
        horizontal=np.ascontiguousarray(horizontal, dtype=dtype),
        rank=r,
        rel_error=rel_error,
        singular_values=spectrum.singular_values,
    )
