"""Rank estimates from a spectrum: EVBMF (Nakajima et al. 2013), its weakened form, and retained energy.

All need only singular values, so they run on the spectrum that the decomposition reuses
(:mod:`edgelr.factorize.spectrum`), weight or data-aware (whitened) alike.

Weakened EVBMF (as MUSCO, Gusak et al. 2019, ``musco.pytorch...rank_estimation.estimator.weaken_rank``):
EVBMF estimates how many singular values stand above the noise of a *random* matrix; on trained layers it
often keeps far too few (rank 0 or 1 on flat spectra, see REFERENCE section 7), and a factorized model
collapses before fine-tuning. The weakened rank moves from the EVBMF rank ``r_vbmf`` back towards the full
rank ``R`` by a factor ``f`` in ``[0, 1]``::

    r = floor(R - f * (R - r_vbmf))          (f = 1: plain EVBMF; f = 0: the full rank)

so ``r >= (1 - f) * R``: the factor also sets a floor as a share of the full rank. ``r_vbmf = 0`` (no
singular value above the estimated noise: the spectrum is flat, the layer is not low-rank) gives ``R``,
which leaves the layer as is, as MUSCO does. MUSCO's default is ``f = 0.8``; edgelr's default
:data:`DEFAULT_WEAKENING` is measured in ``reports/robust_ranks.md``. An absolute floor (``rank_floor``,
default 8) is applied after, by :mod:`edgelr.factorize.ranks`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from edgelr.errors import FactorizeError
from edgelr.factorize._checks import as_finite_array
from edgelr.factorize.blas import one_blas_thread

# tau_bar / sqrt(alpha): the EVBMF threshold constant of Nakajima et al. 2013.
_TAU_BAR_FACTOR = 2.5129
# Singular values below this fraction of the largest are numerically zero: a Gram-matrix spectrum in
# float64 resolves singular values only down to ~1e-8 of the largest, and float32 weights hold ~1e-7.
_ZERO_FRACTION = 1e-7
#: The weakening factor ``f`` of ``vbmf`` without a value (module docstring; ``vbmf:F`` sets another).
DEFAULT_WEAKENING = 0.8


def _check_singular_values(singular_values: object) -> np.ndarray:
    s = np.asarray(singular_values, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise FactorizeError(f"singular_values: got shape {s.shape}; expected a non-empty 1-D array")
    if not np.isfinite(s).all() or (s < 0).any():
        raise FactorizeError("singular_values: got NaN/Inf or negative values; expected finite values >= 0")
    return np.sort(s)[::-1]


def _evbmf_objective(sigma2: float, s2: np.ndarray, big_l: int, big_m: int, x_bar: float) -> float:
    """Nakajima's free energy F(sigma^2) for H = L singular values (no residual term)."""
    alpha = big_l / big_m
    x = s2 / (big_m * sigma2)
    above = x[x > x_bar]
    below = x[x <= x_bar]
    d = above - (1.0 + alpha)
    tau = 0.5 * (d + np.sqrt(np.maximum(d * d - 4.0 * alpha, 0.0)))
    value = np.sum(below - np.log(below))
    value += np.sum(above - tau + np.log((tau + 1.0) / above) + alpha * np.log(tau / alpha + 1.0))
    return float(value)


def evbmf_rank_from_singular_values(singular_values: np.ndarray, shape: tuple[int, int]) -> int:
    """EVBMF rank of an ``(m, n)`` matrix from its singular values (noise variance estimated).

    Implements the equations of Nakajima et al. 2013 (see ``shared/REFERENCE.md`` section 7) for
    ``Y`` of shape ``L x M`` with ``L = min(m, n)`` (the transpose is used when ``m > n``) and all ``L``
    singular values (``H = L``, so the residual term vanishes). ``sigma^2`` minimises the free energy
    with :func:`scipy.optimize.minimize_scalar` (``method="bounded"``) over ``log(sigma^2)`` between
    the paper's bounds; the rank is the number of singular values above
    ``sigma * sqrt(M (1 + tau_bar)(1 + alpha / tau_bar))``.

    Singular values below ``1e-7`` of the largest are taken as exact zeros and the matrix as having
    only as many rows as the others (a Gram-matrix spectrum cannot resolve them).

    Parameters
    ----------
    singular_values
        ``(min(m, n),)`` singular values, any order.
    shape
        ``(m, n)`` of the matrix.

    Returns
    -------
    int
        In ``[0, min(m, n)]``; 0 for an all-zero matrix. Real layers can give 0 or 1: callers keep a
        floor (:func:`edgelr.factorize.select_matrix_rank`).

    Raises
    ------
    FactorizeError
        Bad spectrum, or a spectrum length that is not ``min(m, n)``.
    """
    s = _check_singular_values(singular_values)
    big_l, big_m = sorted(int(v) for v in shape)
    if s.size != big_l:
        raise FactorizeError(
            f"singular_values: got {s.size} values for a matrix of shape {tuple(shape)}; expected min(m, n) = {big_l}"
        )
    if s[0] == 0.0:
        return 0
    s = s[s > s[0] * _ZERO_FRACTION]
    big_l = int(s.size)
    s2 = (s / s[0]) ** 2  # scale-free: the rank does not depend on the units of the weights
    alpha = big_l / big_m
    tau_bar = _TAU_BAR_FACTOR * np.sqrt(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)

    e = min(int(np.ceil(big_l / (1.0 + alpha))) - 1, big_l - 1)
    upper = float(s2.sum()) / (big_l * big_m)
    lower = max(float(s2[e]) / (big_m * x_bar), float(s2[e:].mean()) / big_m)
    if not lower < upper:
        sigma2 = upper
    else:
        opt = minimize_scalar(
            lambda log_s2: _evbmf_objective(float(np.exp(log_s2)), s2, big_l, big_m, x_bar),
            bounds=(np.log(lower), np.log(upper)),
            method="bounded",
            options={"xatol": 1e-8},
        )
        sigma2 = float(np.exp(opt.x))
    threshold2 = big_m * sigma2 * x_bar
    return int(np.count_nonzero(s2 > threshold2))


@one_blas_thread
def evbmf_rank(matrix: np.ndarray) -> int:
    """EVBMF rank of a matrix (Nakajima et al. 2013), with the noise variance estimated.

    Parameters
    ----------
    matrix
        ``(m, n)`` weights; ``L = min(m, n)``, ``M = max(m, n)`` (transposed when ``m > n``).

    Returns
    -------
    int
        In ``[0, min(m, n)]``. See :func:`evbmf_rank_from_singular_values`.

    Raises
    ------
    FactorizeError
        Not 2-D or NaN/Inf values.
    """
    arr = as_finite_array(matrix, 2, "matrix")
    s = np.linalg.svd(arr, compute_uv=False)
    return evbmf_rank_from_singular_values(s, arr.shape)


def weaken_rank(full_rank: int, vbmf_rank: int, factor: float) -> int:
    """The weakened EVBMF rank ``floor(R - f (R - r_vbmf))``; ``R`` when ``r_vbmf`` is 0 (module docstring).

    Parameters
    ----------
    full_rank
        ``R``, the largest rank (``min(m, n)`` of the matrix).
    vbmf_rank
        ``r_vbmf`` in ``[0, R]`` (:func:`evbmf_rank_from_singular_values`).
    factor
        ``f`` in ``[0, 1]``: 1 keeps the EVBMF rank, 0 the full rank.

    Returns
    -------
    int
        In ``[r_vbmf, R]``.

    Raises
    ------
    FactorizeError
        ``factor`` outside ``[0, 1]`` or ranks out of range.
    """
    check_weakening(factor)
    full, r = int(full_rank), int(vbmf_rank)
    if full < 0 or not 0 <= r <= full:
        raise FactorizeError(f"weaken_rank: got full rank {full_rank!r} and EVBMF rank {vbmf_rank!r}; "
                             "expected 0 <= EVBMF rank <= full rank")
    if r == 0:
        return full
    # a few ulps of slack so that f = 1 gives exactly r_vbmf despite float rounding
    return max(r, min(full, int(np.floor(full - float(factor) * (full - r) + 1e-9))))


def check_weakening(factor: object) -> float:
    """``factor`` as a float in ``[0, 1]``; :class:`FactorizeError` naming the value otherwise."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float, np.floating)) or not 0.0 <= factor <= 1.0:
        raise FactorizeError(f"VBMF weakening factor: got {factor!r}; expected a number in [0, 1] "
                             f"(1 = plain EVBMF, 0 = full rank; default {DEFAULT_WEAKENING})")
    return float(factor)


def energy_rank(singular_values: np.ndarray, share: float) -> int:
    """Smallest rank whose singular values keep ``share`` of the energy ``sum(s_h^2)``.

    Parameters
    ----------
    singular_values
        ``(k,)`` non-negative singular values, any order.
    share
        Fraction of the squared Frobenius norm to keep, ``0 < share <= 1``.

    Returns
    -------
    int
        In ``[1, k]``; 0 only for an all-zero spectrum.

    Raises
    ------
    FactorizeError
        ``share`` outside ``(0, 1]`` or a bad spectrum.
    """
    if isinstance(share, bool) or not isinstance(share, (int, float, np.floating)) or not 0.0 < share <= 1.0:
        raise FactorizeError(f"energy share: got {share!r}; expected a number in (0, 1], e.g. 0.9")
    s = _check_singular_values(singular_values)
    energy = np.cumsum(s**2)
    total = float(energy[-1])
    if total == 0.0:
        return 0
    # relative slack of a few ulps so that share=1.0 keeps exactly the non-zero spectrum
    rank = int(np.searchsorted(energy / total, share * (1.0 - 1e-12), side="left")) + 1
    return min(rank, int(s.size))
