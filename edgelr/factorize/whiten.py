"""Data-aware factorization: whiten by the input statistics, decompose, un-whiten.

The maths (REFERENCE §9; the "whitening" of SVD-LLM, of which ASVD's column scaling is the diagonal case)
-------------------------------------------------------------------------------------------------------
A Keras kernel ``W`` (``n_in x n_out``) maps an input row ``x`` (``n_in``) to ``y = x W``. Plain SVD
minimises the weight error ``||W - W'||_F``; what matters is the output error on real inputs::

    E ||x (W - W')||^2 = tr((W - W')^T C (W - W')),     C = E[x^T x]   (n_in x n_in, second moment)

With ``C + lambda I = L L^T`` this is ``||L^T (W - W')||_F^2``. So take the truncated SVD of the
*whitened* matrix ``M = L^T W = U S V^T`` and un-whiten: ``W' = L^-T U_r S_r V_r^T``, i.e. the two factors
``left = L^-T U_r S_r^(1/2)`` (``n_in x r``) and ``right = S_r^(1/2) V_r^T`` (``r x n_out``). Because
``L`` is invertible, rank-``r`` matrices ``W'`` and ``L^T W'`` are in one-to-one correspondence, so by
Eckart-Young this is the exact minimiser of the output error over rank-``r`` ``W'`` (the closed form,
no iteration). The singular values of ``M`` (``= W^T L`` in the ``y = W x`` notation) are the
*data-aware spectrum*: ``sum_{h > r} s_h^2 / sum_h s_h^2`` is the squared relative output error at rank
``r``, so the rank policies (energy, EVBMF, params) read it instead of the weight spectrum.

``L`` is the Cholesky factor of ``C + lambda I`` (any ``L`` with ``L L^T = C + lambda I`` gives the same
objective; an eigen-decomposition with clipped eigenvalues is the fallback when rounding breaks Cholesky).
``C`` is often rank-deficient (inputs after ReLU, constant channels, fewer samples than features):
``lambda = reg * trace(C) / n_in`` (``reg = 1e-6`` by default) keeps ``L`` invertible and adds
``lambda ||W - W'||_F^2`` to the objective: directions the calibration inputs never excite keep the
weight-error solution instead of an arbitrary one.

Convolutions: ``x`` is the im2col patch, the kernel reshaped to ``(kh*kw*c_in, c_out)`` is ``W`` and ``C``
the patch second moment; the formula is the same (:func:`edgelr.factorize.truncated_svd` with
``whitening=``). Spatial SVD factors the ``(c_in*kh, c_out*kw)`` matrix (:func:`~edgelr.factorize.svd.spatial_matrix`),
whose rows are a ``kh x 1`` vertical patch: whitening the rows by the vertical-patch second moment is exact
when patch columns are uncorrelated and an approximation otherwise. Tucker-2 whitens the input-channel mode
by the ``c_in x c_in`` channel second moment pooled over positions (:func:`edgelr.factorize.tucker2` with
``whitening=``): exact when spatial neighbours are uncorrelated, an approximation otherwise; the tests and
``reports/data_aware.md`` check that it lowers the output error. CP stays weights-only.

API: :func:`whitening` (``C -> L``), :class:`Whitening` (``apply``: ``L^T W``, ``restore``: ``L^-T A``),
:func:`layer_spectrum` (THE data-aware spectrum of a matrix; weight spectrum without statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from edgelr.errors import FactorizeError
from edgelr.factorize._checks import as_finite_array
from edgelr.factorize.blas import one_blas_thread
from edgelr.factorize.spectrum import Spectrum, gram_spectrum

DEFAULT_REG = 1e-6
"""``lambda = DEFAULT_REG * trace(C) / n``: the regularization of the input second moment."""


@dataclass(frozen=True)
class Whitening:
    """``C + lambda I = L L^T`` for an input second moment ``C`` (``n x n``), ``L`` lower triangular.

    Attributes
    ----------
    factor
        ``(n, n)`` lower-triangular ``L`` (Cholesky factor).
    reg
        ``lambda`` (absolute).
    """

    factor: np.ndarray
    reg: float

    @property
    def size(self) -> int:
        """``n``, the input dimension."""
        return int(self.factor.shape[0])

    def apply(self, matrix: np.ndarray) -> np.ndarray:
        """``L^T matrix`` for a ``(n, k)`` matrix (whiten the input side of a Keras kernel), float64."""
        self._check(matrix)
        return self.factor.T @ np.asarray(matrix, np.float64)

    def restore(self, left: np.ndarray) -> np.ndarray:
        """``L^-T left`` for a ``(n, k)`` matrix (un-whiten a left factor), float64."""
        self._check(left)
        return scipy.linalg.solve_triangular(self.factor, np.asarray(left, np.float64), trans="T", lower=True,
                                             check_finite=False)

    def _check(self, matrix: np.ndarray) -> None:
        if np.ndim(matrix) != 2 or np.shape(matrix)[0] != self.size:
            raise FactorizeError(f"whitening: got a matrix of shape {np.shape(matrix)}; this whitening is for "
                                 f"{self.size} inputs, so the matrix needs {self.size} rows (Keras layout n_in x n_out)")


@one_blas_thread
def whitening(covariance: np.ndarray, reg: float = DEFAULT_REG) -> Whitening:
    """The whitening of an input second-moment matrix ``C = E[x^T x]`` (module docstring).

    Cholesky of ``C + lambda I`` (``O(n^3/3)``, several times faster than an eigen-decomposition: a 2304-input
    Dense layer takes well under a second); if rounding makes it fail, the eigenvalues are clipped at 0 first
    (``C = Q diag(e) Q^T``, ``L^T`` = the R of ``QR(diag(sqrt(e + lambda)) Q^T)``).

    Parameters
    ----------
    covariance
        ``(n, n)`` symmetric positive semi-definite matrix (un-centred second moment of the layer's input
        rows; a mean of ``x^T x`` over calibration rows).
    reg
        Relative regularization: ``lambda = reg * trace(C) / n`` (``reg > 0``; a tiny absolute value is used
        when ``C`` is all zeros).

    Raises
    ------
    FactorizeError
        Not square, NaN/Inf values, or ``reg <= 0``.
    """
    cov = as_finite_array(covariance, 2, "covariance")
    if cov.shape[0] != cov.shape[1]:
        raise FactorizeError(f"covariance: got shape {cov.shape}; expected a square (n, n) second-moment matrix")
    if not (isinstance(reg, (int, float)) and np.isfinite(reg) and reg > 0):
        raise FactorizeError(f"reg: got {reg!r}; expected a small positive number such as 1e-6")
    n = cov.shape[0]
    sym = 0.5 * (cov + cov.T)
    lam = float(reg) * float(np.trace(sym)) / n
    if lam <= 0.0:
        lam = 1e-30
    try:
        factor = scipy.linalg.cholesky(sym + lam * np.eye(n), lower=True, check_finite=False)
    except np.linalg.LinAlgError:  # numerically indefinite: clip the eigenvalues, then triangularize
        values, vectors = scipy.linalg.eigh(sym, check_finite=False)
        root_t = np.sqrt(np.clip(values, 0.0, None) + lam)[:, None] * vectors.T  # diag(d) Q^T, (L^T)^T L^T = C'
        r = scipy.linalg.qr(root_t, mode="r", check_finite=False)[0]
        factor = (r * np.sign(np.diag(r))[:, None]).T
    return Whitening(factor=np.ascontiguousarray(factor), reg=lam)


def as_whitening(value: "Whitening | np.ndarray", n: int, what: str) -> Whitening:
    """``value`` as a :class:`Whitening` for ``n`` inputs (a covariance is whitened here)."""
    w = value if isinstance(value, Whitening) else whitening(value)
    if w.size != n:
        raise FactorizeError(f"{what}: the input statistics are for {w.size} inputs but the weights take {n}; "
                             "collect them for this very layer")
    return w


@one_blas_thread
def layer_spectrum(matrix: np.ndarray, covariance: "np.ndarray | Whitening | None" = None) -> Spectrum:
    """The spectrum rank policies should read: data-aware with input statistics, of the weights without.

    This is the one function for "how low-rank is this layer": EVBMF, energy and params policies, the
    search's sensitivities and ``inspect`` call it (or get its result through the rewriters).

    Parameters
    ----------
    matrix
        ``(n_in, n_out)`` weights in Keras layout (``y = x @ matrix``): a Dense kernel, a conv kernel reshaped
        to ``(kh*kw*c_in, c_out)``, a spatial-SVD matrix ``(c_in*kh, c_out*kw)``.
    covariance
        ``(n_in, n_in)`` second moment ``E[x^T x]`` of the input rows (a conv's im2col patches), or its
        :class:`Whitening`; None for the weight spectrum.

    Returns
    -------
    Spectrum
        Of ``L^T matrix`` (``C + lambda I = L L^T``), so ``values[h] = s_h^2`` with ``s`` the singular
        values of ``W L`` in ``y = W x`` notation, and ``tail / total`` at rank ``r`` is the squared
        relative output error of the best rank-``r`` layer on the calibration inputs; of ``matrix`` itself
        when ``covariance`` is None. Pass it as ``spectrum=`` to the selectors and to
        :func:`~edgelr.factorize.truncated_svd` (with the same ``whitening=``) to compute nothing twice.

    Raises
    ------
    FactorizeError
        Bad matrix or covariance, or sizes that do not match.

    Example
    -------
    >>> w = whitening(cov)                                     # cov (n_in, n_in), once per layer
    >>> spec = layer_spectrum(kernel, w)                       # kernel (n_in, n_out)
    >>> r = select_matrix_rank(kernel, "energy:0.95", cost=..., full_cost=..., spectrum=spec)
    >>> res = truncated_svd(kernel, r, spectrum=spec, whitening=w)   # res.rel_error: output error
    """
    arr = as_finite_array(matrix, 2, "matrix")
    if covariance is not None:
        arr = as_whitening(covariance, arr.shape[0], "covariance").apply(arr)
    return gram_spectrum(arr, "rows" if arr.shape[0] <= arr.shape[1] else "columns")


def whiten_matrix(matrix: np.ndarray, covariance: "np.ndarray | Whitening") -> np.ndarray:
    """``L^T matrix`` (float64) for an ``(n_in, n_out)`` Keras-layout matrix and its input statistics."""
    arr = as_finite_array(matrix, 2, "matrix")
    return as_whitening(covariance, arr.shape[0], "covariance").apply(arr)


def output_error(matrix: np.ndarray, approx: np.ndarray, covariance: np.ndarray) -> float:
    """Relative output error ``sqrt(tr(E^T C E) / tr(W^T C W))`` of ``approx`` for ``matrix`` (Keras layout,
    ``E = matrix - approx``) under the input second moment ``covariance``; 0 when the output is zero."""
    w = np.asarray(matrix, np.float64)
    e = w - np.asarray(approx, np.float64)
    c = np.asarray(covariance, np.float64)
    den = float(np.einsum("ij,ik,kj->", w, c, w))
    num = float(np.einsum("ij,ik,kj->", e, c, e))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0
