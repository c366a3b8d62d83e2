"""CP (canonical polyadic) decomposition of a conv kernel (Lebedev et al. 2015), through tensorly.

``kernel[i, j, a, b] ~= sum_r first[a, r] vertical[i, r] horizontal[j, r] last[r, b]``: a 1x1 conv
``c_in -> R``, a depthwise ``kh x 1`` conv, a depthwise ``1 x kw`` conv and a 1x1 conv ``R -> c_out``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from edgelr.errors import FactorizeError
from edgelr.factorize._checks import as_finite_array, check_rank, output_dtype
from edgelr.factorize.blas import one_blas_thread


@dataclass(frozen=True)
class CPResult:
    """Rank-``R`` CP factors of a ``(kh, kw, c_in, c_out)`` kernel.

    Attributes
    ----------
    first
        ``(c_in, R)``; carries the CP weights (scale) of each component.
    vertical
        ``(kh, R)``: depthwise ``kh x 1`` taps.
    horizontal
        ``(kw, R)``: depthwise ``1 x kw`` taps.
    last
        ``(R, c_out)``.
    rank
        ``R``.
    rel_error
        ``||W - W_hat||_F / ||W||_F`` of the reconstruction (finite).
    """

    first: np.ndarray
    vertical: np.ndarray
    horizontal: np.ndarray
    last: np.ndarray
    rank: int
    rel_error: float


def max_cp_rank(shape: tuple[int, int, int, int]) -> int:
    """Upper bound on the CP rank of a tensor: the product of all its dimensions but the largest."""
    return int(math.prod(shape) // max(shape))


@one_blas_thread
def cp(kernel: np.ndarray, rank: int, *, n_iter_max: int = 100, random_state: int = 0) -> CPResult:
    """CP decomposition of a conv kernel by ALS (``tensorly.decomposition.parafac``, ``init='svd'``).

    Parameters
    ----------
    kernel
        ``(kh, kw, c_in, c_out)`` conv weights (Keras layout).
    rank
        ``1 <= R <= prod(shape) / max(shape)`` (:func:`max_cp_rank`).
    n_iter_max
        Maximum ALS iterations.
    random_state
        Seed for the columns the SVD start cannot fill (``R`` above a mode's size); same seed, same result.

    Returns
    -------
    CPResult
        Factors in the input's float dtype.

    Raises
    ------
    FactorizeError
        Not 4-D, NaN/Inf values, ``rank`` out of range, or ALS produced non-finite factors.
    """
    from tensorly.cp_tensor import cp_to_tensor
    from tensorly.decomposition import parafac

    arr = as_finite_array(kernel, 4, "kernel")
    r = check_rank(rank, max_cp_rank(arr.shape), f"CP rank for a {arr.shape} kernel")
    if isinstance(n_iter_max, bool) or not isinstance(n_iter_max, int) or n_iter_max < 1:
        raise FactorizeError(f"n_iter_max: got {n_iter_max!r}; expected an integer >= 1")
    with warnings.catch_warnings():
        # tensorly warns when R exceeds a mode's size and fills those columns from random_state
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs", category=UserWarning)
        try:
            weights, factors = parafac(arr, r, n_iter_max=n_iter_max, init="svd", random_state=random_state)
        except np.linalg.LinAlgError as exc:
            raise FactorizeError(
                f"CP rank {r} of a {arr.shape} kernel: ALS failed ({exc}); try a lower rank or Tucker-2 for this layer"
            ) from exc
    weights = np.asarray(weights, dtype=np.float64)
    vertical, horizontal, first, last_t = (np.asarray(f, dtype=np.float64) for f in factors)
    first = first * weights[None, :]
    if not all(np.isfinite(f).all() for f in (first, vertical, horizontal, last_t)):
        raise FactorizeError(
            f"CP rank {r} of a {arr.shape} kernel: ALS produced NaN/Inf factors; "
            "try a lower rank or Tucker-2 for this layer"
        )
    approx = cp_to_tensor((np.ones(r), [vertical, horizontal, first, last_t]))
    norm = float(np.linalg.norm(arr))
    rel_error = float(np.linalg.norm(arr - approx) / norm) if norm > 0 else 0.0
    if not np.isfinite(rel_error):
        raise FactorizeError(f"CP rank {r} of a {arr.shape} kernel: reconstruction error is not finite")
    dtype = output_dtype(kernel)
    return CPResult(
        first=first.astype(dtype),
        vertical=vertical.astype(dtype),
        horizontal=horizontal.astype(dtype),
        last=np.ascontiguousarray(last_t.T, dtype=dtype),
        rank=r,
        rel_error=rel_error,
    )
