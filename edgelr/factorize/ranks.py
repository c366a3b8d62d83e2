"""Rank policies: how many ranks a factorized layer keeps.

A policy is parsed from a short spec string (``--rank`` on the command line):

==================  ==========================================================================
``vbmf``            weakened EVBMF (factor ``DEFAULT_WEAKENING`` = 0.8), never below ``min(floor, max)``
``vbmf:0.5``        weakened EVBMF with that factor ``f`` in ``[0, 1]`` (``vbmf:1``: plain EVBMF)
``energy:0.9``      smallest rank keeping that share of ``sum(s_h^2)`` (squared Frobenius norm)
``params:0.25``     largest rank whose factorized parameters are ``<= 0.25 x`` the original's
``macs:0.5``        largest rank whose factorized MACs are ``<= 0.5 x`` the original's
``rank:16``         that rank (clipped to what the shape allows)
==================  ==========================================================================

Every selector then rounds the rank UP to a multiple of ``multiple`` (TFLite kernels run faster on
channel counts that are multiples of 4/8) and clips it to ``[1, max possible rank]``; after rounding
a ``params``/``macs`` budget can be exceeded by at most ``multiple - 1`` ranks.

Why weakening and a floor for ``vbmf``: EVBMF returns 0 or 1 on many real layers (flat spectra, see
REFERENCE section 7), which destroys accuracy before fine-tuning (a mini-Xception lost all but 7 % top-1
agreement with plain EVBMF). Like MUSCO, the EVBMF rank ``r_vbmf`` of each spectrum is weakened towards the
full rank ``R`` (:func:`edgelr.factorize.vbmf.weaken_rank`): ``r = floor(R - f (R - r_vbmf))``, so
``r >= (1 - f) R`` (a floor as a share of the full rank), and ``r_vbmf = 0`` (only noise found) keeps ``R``
(the layer then stays as is). The absolute floor follows: ``max(r, min(floor, R))`` (``floor`` 8 by
default, ``rank_floor`` of :func:`edgelr.rewrite.plan_factorization`). Both apply to ``vbmf`` only; the
other policies say exactly what they keep. ``reports/robust_ranks.md`` measures the factor.

``cost`` callables return ``(params, macs)`` of the factorized layer at a rank and must not decrease
as a rank grows (true for every factorization here); the budget search relies on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from edgelr.errors import FactorizeError
from edgelr.factorize._checks import as_finite_array
from edgelr.factorize.blas import one_blas_thread
from edgelr.factorize.cp import max_cp_rank
from edgelr.factorize.spectrum import Spectrum, gram_spectrum, mode_unfolding
from edgelr.factorize.vbmf import (
    DEFAULT_WEAKENING,
    check_weakening,
    energy_rank,
    evbmf_rank_from_singular_values,
    weaken_rank,
)

PolicyKind = Literal["vbmf", "energy", "params", "macs", "rank"]
ACCEPTED_FORMS = ('"vbmf", "energy:F", "params:F", "macs:F" (0 < F <= 1), "vbmf:W" (weakening 0 <= W <= 1) or '
                  '"rank:N" (integer N >= 1)')


@dataclass(frozen=True)
class RankPolicy:
    """A parsed rank policy.

    Attributes
    ----------
    kind
        ``"vbmf"``, ``"energy"``, ``"params"``, ``"macs"`` or ``"rank"``.
    value
        For ``vbmf`` the weakening factor in ``[0, 1]``, or ``None`` for ``DEFAULT_WEAKENING``; the share
        in ``(0, 1]`` for ``energy``/``params``/``macs``; the rank (a whole number >= 1) for ``rank``.
    """

    kind: PolicyKind
    value: float | None

    @property
    def weakening(self) -> float:
        """The VBMF weakening factor this policy uses (``vbmf`` only; :data:`DEFAULT_WEAKENING` when unset)."""
        return DEFAULT_WEAKENING if self.value is None else float(self.value)

    def __str__(self) -> str:
        if self.kind == "vbmf":
            return "vbmf" if self.value is None else f"vbmf:{self.value:g}"
        if self.kind == "rank":
            return f"rank:{int(self.value or 0)}"
        return f"{self.kind}:{self.value:g}"


def parse_rank_policy(spec: str) -> RankPolicy:
    """Parse ``"vbmf"``, ``"energy:0.9"``, ``"params:0.25"``, ``"macs:0.5"`` or ``"rank:16"``.

    Raises
    ------
    FactorizeError
        Any other form; the message names the spec received and the accepted forms.
    """
    if not isinstance(spec, str):
        raise FactorizeError(f"rank policy: got {spec!r}; expected one of {ACCEPTED_FORMS}")
    text = spec.strip().lower()
    kind, sep, raw = text.partition(":")
    kind = kind.strip()
    raw = raw.strip()
    if kind not in get_args(PolicyKind):
        raise FactorizeError(f"rank policy: got {spec!r}; expected one of {ACCEPTED_FORMS}")
    if kind == "vbmf":
        if not sep:
            return RankPolicy("vbmf", None)
        try:
            return RankPolicy("vbmf", check_weakening(float(raw)))
        except (ValueError, FactorizeError):
            raise FactorizeError(f"rank policy: got {spec!r}; vbmf:W needs a weakening factor 0 <= W <= 1 "
                                 f"(1 = plain EVBMF). Accepted: {ACCEPTED_FORMS}") from None
    if not raw:
        raise FactorizeError(f"rank policy: got {spec!r}; '{kind}' needs a value. Accepted: {ACCEPTED_FORMS}")
    if kind == "rank":
        if not raw.isdigit() or int(raw) < 1:
            raise FactorizeError(f"rank policy: got {spec!r}; rank:N needs an integer N >= 1. Accepted: {ACCEPTED_FORMS}")
        return RankPolicy("rank", float(int(raw)))
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise FactorizeError(f"rank policy: got {spec!r}; {kind}:F needs 0 < F <= 1. Accepted: {ACCEPTED_FORMS}")
    return RankPolicy(kind, value)  # type: ignore[arg-type]


def _as_policy(policy: RankPolicy | str) -> RankPolicy:
    return parse_rank_policy(policy) if isinstance(policy, str) else policy


def _check_options(multiple: int, floor: int, full_cost: tuple[int, int]) -> None:
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise FactorizeError(f"multiple: got {multiple!r}; expected an integer >= 1 (e.g. 8)")
    if isinstance(floor, bool) or not isinstance(floor, (int, np.integer)) or floor < 0:
        raise FactorizeError(f"floor: got {floor!r}; expected an integer >= 0")
    if len(full_cost) != 2 or min(full_cost) < 0:
        raise FactorizeError(f"full_cost: got {full_cost!r}; expected (params, macs) >= 0 of the original layer")


def _round_clip(rank: int, multiple: int, max_rank: int) -> int:
    rounded = -(-max(int(rank), 1) // multiple) * multiple
    return int(min(max(rounded, 1), max_rank))


def _largest_fitting(fits: Callable[[int], bool], max_k: int) -> int:
    """Largest ``k`` in ``[1, max_k]`` with ``fits(k)`` (monotone: True then False); 1 if none fits."""
    if not fits(1):
        return 1
    lo, hi = 1, max_k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _budget(policy: RankPolicy, full_cost: tuple[int, int]) -> tuple[int, float]:
    index = 0 if policy.kind == "params" else 1
    return index, float(policy.value or 0.0) * float(full_cost[index])


def _single_rank(policy: RankPolicy, full_cost: tuple[int, int], cost: Callable[[int], tuple[int, int]],
                 max_rank: int, spectral: Callable[[], int]) -> int:
    """One rank by ``policy``: ``rank:N`` as given, a ``params``/``macs`` budget by the largest rank whose
    ``cost`` fits, else (``vbmf``/``energy``) what ``spectral()`` returns. Not yet rounded or clipped."""
    if policy.kind == "rank":
        return int(policy.value or 1)
    if policy.kind in ("params", "macs"):
        index, budget = _budget(policy, full_cost)
        return _largest_fitting(lambda r: cost(r)[index] <= budget, max_rank)
    return spectral()


def _spectrum_rank(singular_values: np.ndarray, shape: tuple[int, int], policy: RankPolicy, floor: int) -> int:
    max_rank = min(shape)
    if policy.kind == "energy":
        return max(energy_rank(singular_values, float(policy.value or 0.0)), 1)
    weakened = weaken_rank(max_rank, evbmf_rank_from_singular_values(singular_values, shape), policy.weakening)
    return max(weakened, min(floor, max_rank))


@one_blas_thread
def select_matrix_rank(
    matrix: np.ndarray,
    policy: RankPolicy | str,
    *,
    cost: Callable[[int], tuple[int, int]],
    full_cost: tuple[int, int],
    multiple: int = 1,
    floor: int = 8,
    spectrum: Spectrum | None = None,
) -> int:
    """Rank of a truncated SVD ``(m, r) @ (r, n)`` of a matrix under ``policy``.

    Parameters
    ----------
    matrix
        ``(m, n)`` weights.
    policy
        A :class:`RankPolicy` or its spec string.
    cost
        ``cost(r) -> (params, macs)`` of the factorized layer at rank ``r``.
    full_cost
        ``(params, macs)`` of the original layer.
    multiple
        Round the rank up to a multiple of this.
    floor
        Lowest rank ``vbmf`` may give (capped at ``min(m, n)``).
    spectrum
        Optional :func:`~edgelr.factorize.spectrum.matrix_spectrum` of ``matrix``, to share with
        :func:`~edgelr.factorize.truncated_svd`.

    Returns
    -------
    int
        In ``[1, min(m, n)]``.

    Raises
    ------
    FactorizeError
        Bad matrix, policy or options.
    """
    pol = _as_policy(policy)
    _check_options(multiple, floor, full_cost)
    arr = as_finite_array(matrix, 2, "matrix")
    max_rank = min(arr.shape)

    def spectral() -> int:
        spec = spectrum if spectrum is not None else gram_spectrum(
            arr, "rows" if arr.shape[0] <= arr.shape[1] else "columns")
        return _spectrum_rank(spec.singular_values, arr.shape, pol, floor)

    return _round_clip(_single_rank(pol, full_cost, cost, max_rank, spectral), multiple, max_rank)


def _unfolding_spectra(arr: np.ndarray, spectra: tuple[Spectrum, Spectrum] | None) -> tuple[Spectrum, Spectrum]:
    if spectra is not None:
        return spectra
    return gram_spectrum(mode_unfolding(arr, 2), "rows"), gram_spectrum(mode_unfolding(arr, 3), "rows")


@one_blas_thread
def select_tucker2_ranks(
    kernel: np.ndarray,
    policy: RankPolicy | str,
    *,
    cost: Callable[[int, int], tuple[int, int]],
    full_cost: tuple[int, int],
    multiple: int = 1,
    floor: int = 8,
    spectra: tuple[Spectrum, Spectrum] | None = None,
) -> tuple[int, int]:
    """Tucker-2 ranks ``(r_in, r_out)`` of a ``(kh, kw, c_in, c_out)`` kernel under ``policy``.

    ``vbmf``/``energy`` run on the spectra of the mode-2 (``c_in x kh*kw*c_out``) and mode-3
    (``c_out x kh*kw*c_in``) unfoldings, each with its own floor. ``params``/``macs`` scale both ranks
    by one factor, ``(round(t*c_in/c), round(t*c_out/c))`` with ``c = max(c_in, c_out)``, and take the
    largest ``t`` that fits the budget. ``rank:N`` gives ``(N, N)``, each clipped to its channel count.

    Parameters
    ----------
    kernel
        ``(kh, kw, c_in, c_out)`` conv weights.
    policy, full_cost, multiple, floor
        As :func:`select_matrix_rank`.
    cost
        ``cost(r_in, r_out) -> (params, macs)`` of the factorized layer.
    spectra
        Optional :func:`~edgelr.factorize.spectrum.unfolding_spectra` of ``kernel``, to share with
        :func:`~edgelr.factorize.tucker2`.

    Returns
    -------
    tuple[int, int]
        ``1 <= r_in <= c_in``, ``1 <= r_out <= c_out``.
    """
    pol = _as_policy(policy)
    _check_options(multiple, floor, full_cost)
    arr = as_finite_array(kernel, 4, "kernel")
    _, _, c_in, c_out = arr.shape
    if pol.kind == "rank":
        r_in = r_out = int(pol.value or 1)
    elif pol.kind in ("params", "macs"):
        index, budget = _budget(pol, full_cost)
        c_max = max(c_in, c_out)

        def pair(t: int) -> tuple[int, int]:
            return max(1, round(t * c_in / c_max)), max(1, round(t * c_out / c_max))

        t = _largest_fitting(lambda t: cost(*pair(t))[index] <= budget, c_max)
        r_in, r_out = pair(t)
    else:
        spec_in, spec_out = _unfolding_spectra(arr, spectra)
        r_in = _spectrum_rank(spec_in.singular_values, spec_in.shape, pol, floor)
        r_out = _spectrum_rank(spec_out.singular_values, spec_out.shape, pol, floor)
        # a mode-n unfolding can be wider than tall: its rank may not exceed the channel count
    return _round_clip(r_in, multiple, c_in), _round_clip(r_out, multiple, c_out)


@one_blas_thread
def select_cp_rank(
    kernel: np.ndarray,
    policy: RankPolicy | str,
    *,
    cost: Callable[[int], tuple[int, int]],
    full_cost: tuple[int, int],
    multiple: int = 1,
    floor: int = 8,
    spectra: tuple[Spectrum, Spectrum] | None = None,
) -> int:
    """CP rank ``R`` of a ``(kh, kw, c_in, c_out)`` kernel under ``policy``.

    ``vbmf``/``energy``: the larger of the two ranks found on the mode-2 and mode-3 unfoldings (as
    for Tucker-2). ``params``/``macs``: the largest ``R`` that fits the budget. The maximum is
    :func:`~edgelr.factorize.cp.max_cp_rank` (product of the dimensions but the largest).

    Parameters
    ----------
    kernel
        ``(kh, kw, c_in, c_out)`` conv weights.
    policy, full_cost, multiple, floor
        As :func:`select_matrix_rank`.
    cost
        ``cost(R) -> (params, macs)`` of the CP-factorized layer.
    spectra
        Optional :func:`~edgelr.factorize.spectrum.unfolding_spectra` of ``kernel``.

    Returns
    -------
    int
        In ``[1, max_cp_rank(kernel.shape)]``.
    """
    pol = _as_policy(policy)
    _check_options(multiple, floor, full_cost)
    arr = as_finite_array(kernel, 4, "kernel")
    max_rank = max_cp_rank(arr.shape)

    def spectral() -> int:
        spec_in, spec_out = _unfolding_spectra(arr, spectra)
        return max(_spectrum_rank(spec_in.singular_values, spec_in.shape, pol, floor),
                   _spectrum_rank(spec_out.singular_values, spec_out.shape, pol, floor))

    return _round_clip(_single_rank(pol, full_cost, cost, max_rank, spectral), multiple, max_rank)
