"""Tucker-2 decomposition of a conv kernel over its channel modes (Kim et al. 2016).

``kernel[i, j, a, b] ~= sum_{p, q} first[a, p] core[i, j, p, q] last[q, b]``: a 1x1 conv
``c_in -> r_in``, the ``kh x kw`` conv ``r_in -> r_out`` (original stride, padding, dilation) and a
1x1 conv ``r_out -> c_out``.

HOSVD start (leading eigenvectors of the Gram matrices of the mode-2 and mode-3 unfoldings), then
HOOI sweeps: each factor is refreshed from the leading left singular vectors of the unfolding of the
kernel projected on the other factor, computed from the smaller of its two Gram matrices (``c x c``
or ``kh*kw*r x kh*kw*r``), never by an SVD of a long unfolding.
The error follows from the core norm because the factors are orthonormal:
``||W - W_hat||^2 = ||W||^2 - ||core||^2``.

Data-aware (``whitening=``, :mod:`edgelr.factorize.whiten`): with ``C`` the ``c_in x c_in`` second moment of
the input channels (pooled over positions), ``C + lambda I = L L^T``, the kernel is whitened on its input
mode, ``K~ = K x_3 L^T`` (``K~[i, j, p, b] = sum_a L[a, p] K[i, j, a, b]``), decomposed as above, and the
input factor un-whitened, ``first = L^-T U_in``. This minimises ``sum_{i,j,b} E(x^T (K - K')[i, j, :, b])^2``,
the output error when input pixels at different positions are uncorrelated; with correlated neighbours it
is an approximation (the exact optimum under full patch statistics needs an alternating solve), which
``tests/test_factorize_data_aware.py`` and ``reports/data_aware.md`` check lowers the true output error.
``first`` is then not orthonormal and ``rel_error`` is the relative error of the whitened kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelr.errors import FactorizeError
from edgelr.factorize._checks import as_finite_array, check_rank, output_dtype
from edgelr.factorize.blas import one_blas_thread
from edgelr.factorize.spectrum import Spectrum, gram_spectrum, leading_eigenvectors, mode_unfolding
from edgelr.factorize.whiten import Whitening, as_whitening


# Relative errors below this are computed from the reconstruction rather than from norms.
_RECOMPUTE_BELOW = 1e-3
# sqrt(||W||^2 - ||core||^2) / ||W|| cannot resolve errors below ~1e-8 (float64 cancellation).
_EXACT = 1e-7


@dataclass(frozen=True)
class Tucker2Result:
    """Tucker-2 factors of a ``(kh, kw, c_in, c_out)`` kernel.

    Attributes
    ----------
    first
        ``(c_in, r_in)`` orthonormal columns (``L^-T`` times orthonormal columns when data-aware): the 1x1
        conv ``c_in -> r_in``.
    core
        ``(kh, kw, r_in, r_out)``: the spatial conv.
    last
        ``(r_out, c_out)`` orthonormal rows: the 1x1 conv ``r_out -> c_out``.
    ranks
        ``(r_in, r_out)``.
    rel_error
        ``||W - W_hat||_F / ||W||_F`` (0 for an all-zero kernel); of the whitened kernel when data-aware.
    n_iter
        Number of HOOI sweeps run after the HOSVD start (0 = plain HOSVD).
    """

    first: np.ndarray
    core: np.ndarray
    last: np.ndarray
    ranks: tuple[int, int]
    rel_error: float
    n_iter: int


def _leading_left_vectors(matrix: np.ndarray, rank: int) -> np.ndarray:
    """``(c, rank)`` leading left singular vectors of a ``(c, n)`` matrix, via its smaller Gram matrix.

    In HOOI the projected unfolding is ``c x (kh*kw*r)``; with small ranks ``n = kh*kw*r < c`` and the
    ``n x n`` Gram ``X^T X`` is the cheap one: its eigenvectors ``V`` give ``X V``, orthonormalised by QR.
    """
    c, n = matrix.shape
    if n < c and rank <= n:
        v = leading_eigenvectors(matrix.T @ matrix, rank)
        q, _ = np.linalg.qr(matrix @ v)
        return np.ascontiguousarray(q)
    return leading_eigenvectors(matrix @ matrix.T, rank)


def _check_ranks(ranks: object, c_in: int, c_out: int) -> tuple[int, int]:
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise FactorizeError(
            f"ranks: got {ranks!r}; expected a pair (r_in, r_out) with 1 <= r_in <= {c_in}, 1 <= r_out <= {c_out}"
        )
    r_in = check_rank(ranks[0], c_in, f"r_in (ranks[0]) for c_in={c_in}")
    r_out = check_rank(ranks[1], c_out, f"r_out (ranks[1]) for c_out={c_out}")
    return r_in, r_out


@one_blas_thread
def tucker2(
    kernel: np.ndarray,
    ranks: tuple[int, int],
    *,
    max_iter: int = 10,
    tol: float = 1e-4,
    spectra: tuple[Spectrum, Spectrum] | None = None,
    whitening: Whitening | np.ndarray | None = None,
) -> Tucker2Result:
    """Tucker-2 decomposition of a conv kernel: HOSVD start, then HOOI until the error stops improving.

    Parameters
    ----------
    kernel
        ``(kh, kw, c_in, c_out)`` conv weights (Keras layout).
    ranks
        ``(r_in, r_out)`` with ``1 <= r_in <= c_in`` and ``1 <= r_out <= c_out``.
    max_iter
        Maximum number of HOOI sweeps (0 = HOSVD only).
    tol
        Stop when a sweep lowers the relative error by less than ``tol`` (absolute, in relative-error
        units, as tensorly's ``partial_tucker``).
    spectra
        Optional :func:`~edgelr.factorize.spectrum.unfolding_spectra` of the same kernel (the ones rank
        selection used): their vectors are the HOSVD start, so nothing is computed twice. With
        ``whitening``: ``unfolding_spectra(whiten_kernel(kernel, whitening))``.
    whitening
        Optional ``(c_in, c_in)`` second moment of the input channels (or its
        :func:`~edgelr.factorize.whiten.whitening`): decompose the whitened kernel and un-whiten ``first``
        (module docstring).

    Returns
    -------
    Tucker2Result
        Factors in the input's float dtype; the error is never above the HOSVD error.

    Raises
    ------
    FactorizeError
        Not 4-D, NaN/Inf values, ranks out of range, negative ``max_iter`` or ``tol``, statistics of
        another size.
    """
    arr = as_finite_array(kernel, 4, "kernel")
    kh, kw, c_in, c_out = arr.shape
    white = None if whitening is None else as_whitening(whitening, c_in, "whitening")
    if white is not None:
        arr = whiten_kernel(arr, white)
    r_in, r_out = _check_ranks(ranks, c_in, c_out)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise FactorizeError(f"max_iter: got {max_iter!r}; expected an integer >= 0")
    if not np.isfinite(tol) or tol < 0:
        raise FactorizeError(f"tol: got {tol!r}; expected a finite number >= 0")

    if spectra is None:
        spec_in = gram_spectrum(mode_unfolding(arr, 2), "rows")
        spec_out = gram_spectrum(mode_unfolding(arr, 3), "rows")
    else:
        spec_in, spec_out = spectra
        if spec_in.shape != (c_in, kh * kw * c_out) or spec_out.shape != (c_out, kh * kw * c_in):
            raise FactorizeError(
                f"spectra: computed for unfoldings {spec_in.shape} and {spec_out.shape}, not for a kernel of "
                f"shape {arr.shape}; pass unfolding_spectra(kernel) of this very kernel"
            )
    u_in = spec_in.leading_vectors(r_in)
    u_out = spec_out.leading_vectors(r_out)

    spatial = kh * kw
    w_ab = arr.reshape(spatial * c_in, c_out)  # rows (s, a), columns b
    w_ba = np.ascontiguousarray(arr.transpose(0, 1, 3, 2)).reshape(spatial * c_out, c_in)  # rows (s, b)
    norm2 = float(np.dot(arr.ravel(), arr.ravel()))

    def core_and_error(u_in: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        # y: (spatial, c_in, r_out) = W x_3 u_out^T; core = y x_2 u_in^T: (spatial, r_in, r_out)
        core = np.matmul(u_in.T, y)
        err2 = max(norm2 - float(np.dot(core.ravel(), core.ravel())), 0.0)
        return core, (float(np.sqrt(err2 / norm2)) if norm2 > 0 else 0.0)

    y = (w_ab @ u_out).reshape(spatial, c_in, r_out)
    core, error = core_and_error(u_in, y)
    best = (u_in, u_out, core, error)
    n_iter = 0
    for _ in range(max_iter):
        if error < _EXACT:  # already exact up to the precision of the norm difference
            break
        # refresh u_in from the mode-2 Gram of W x_3 u_out^T
        y2 = y.transpose(1, 0, 2).reshape(c_in, spatial * r_out)
        u_in = _leading_left_vectors(y2, r_in)
        # refresh u_out from the mode-3 Gram of W x_2 u_in^T
        z = (w_ba @ u_in).reshape(spatial, c_out, r_in)
        z3 = z.transpose(1, 0, 2).reshape(c_out, spatial * r_in)
        u_out = _leading_left_vectors(z3, r_out)
        y = (w_ab @ u_out).reshape(spatial, c_in, r_out)
        core, new_error = core_and_error(u_in, y)
        n_iter += 1
        if new_error < best[3]:
            best = (u_in, u_out, core, new_error)
        improved = error - new_error
        error = new_error
        if improved < tol:
            break

    u_in, u_out, core, error = best
    if error < _RECOMPUTE_BELOW and norm2 > 0:
        # ||W||^2 - ||core||^2 loses digits to cancellation when the error is small: measure it directly
        approx = np.matmul(np.matmul(u_in, core), u_out.T).reshape(arr.shape)
        error = float(np.linalg.norm(arr - approx) / np.sqrt(norm2))
    dtype = output_dtype(kernel)
    if white is not None:
        u_in = white.restore(u_in)
    return Tucker2Result(
        first=u_in.astype(dtype),
        core=core.reshape(kh, kw, r_in, r_out).astype(dtype),
        last=np.ascontiguousarray(u_out.T, dtype=dtype),
        ranks=(r_in, r_out),
        rel_error=error,
        n_iter=n_iter,
    )


def whiten_kernel(kernel: np.ndarray, whitening: Whitening | np.ndarray) -> np.ndarray:
    """``K x_3 L^T``: a ``(kh, kw, c_in, c_out)`` kernel whitened on its input-channel mode (float64).

    ``whitening`` is the ``(c_in, c_in)`` channel second moment or its
    :func:`~edgelr.factorize.whiten.whitening`. ``unfolding_spectra(whiten_kernel(k, w))`` are the
    data-aware spectra Tucker-2 rank selection reads.
    """
    arr = as_finite_array(kernel, 4, "kernel")
    kh, kw, c_in, c_out = arr.shape
    white = as_whitening(whitening, c_in, "whitening")
    unfolded = white.apply(mode_unfolding(arr, 2))  # (c_in, kh*kw*c_out)
    return np.ascontiguousarray(unfolded.reshape(c_in, kh, kw, c_out).transpose(1, 2, 0, 3))
