"""Input checks shared by the decompositions: finite weights, array rank, factorization ranks.

Every check raises :class:`edgelr.errors.FactorizeError` with a message that names the value
received and the valid range.
"""

from __future__ import annotations

import numbers

import numpy as np

from edgelr.errors import FactorizeError


def as_finite_array(array: object, ndim: int, what: str) -> np.ndarray:
    """Return ``array`` as a float64 ndarray of ``ndim`` dimensions with only finite values.

    Parameters
    ----------
    array
        Anything :func:`numpy.asarray` accepts.
    ndim
        Required number of dimensions (2 for a matrix, 4 for a conv kernel ``(kh, kw, c_in, c_out)``).
    what
        Name used in error messages, e.g. ``"matrix"`` or ``"kernel"``.

    Raises
    ------
    FactorizeError
        Wrong number of dimensions, an empty axis, a non-numeric dtype or NaN/Inf values.
    """
    try:
        arr = np.asarray(array)
    except Exception as exc:  # pragma: no cover - numpy accepts nearly anything
        raise FactorizeError(f"{what}: cannot be read as an array ({exc}); pass a NumPy array") from exc
    if arr.ndim != ndim:
        layout = "(m, n)" if ndim == 2 else "(kh, kw, c_in, c_out)"
        raise FactorizeError(
            f"{what}: got an array of shape {arr.shape} ({arr.ndim}-D); expected a {ndim}-D array {layout}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise FactorizeError(f"{what}: got dtype {arr.dtype}; expected real floating-point weights")
    if 0 in arr.shape:
        raise FactorizeError(f"{what}: got an empty array of shape {arr.shape}; every axis needs size >= 1")
    arr64 = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr64).all():
        bad = int(np.size(arr64) - np.count_nonzero(np.isfinite(arr64)))
        raise FactorizeError(
            f"{what}: {bad} of {arr64.size} values are NaN or Inf; only finite weights can be factorized "
            "(check the model's training)"
        )
    return arr64


def check_rank(rank: object, max_rank: int, what: str) -> int:
    """Return ``rank`` as an int after checking ``1 <= rank <= max_rank``.

    Raises
    ------
    FactorizeError
        ``rank`` is not an integer, is zero/negative or exceeds ``max_rank``.
    """
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise FactorizeError(f"{what}: got {rank!r} ({type(rank).__name__}); expected an integer in [1, {max_rank}]")
    value = int(rank)
    if value < 1 or value > max_rank:
        raise FactorizeError(f"{what}: got {value}; the valid range for this shape is [1, {max_rank}]")
    return value


def output_dtype(array: object) -> np.dtype:
    """The float dtype factors are returned in: the input's float dtype, float64 for integer input."""
    dtype = np.asarray(array).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)
