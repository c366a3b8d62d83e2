"""Behaviour of edgelr.factorize rank selection: EVBMF, energy, budget policies, rounding, errors."""

from __future__ import annotations

import numpy as np
import pytest

from edgelr.errors import FactorizeError
from edgelr.factorize import (
    RankPolicy,
    energy_rank,
    evbmf_rank,
    evbmf_rank_from_singular_values,
    matrix_spectrum,
    parse_rank_policy,
    select_cp_rank,
    select_matrix_rank,
    select_tucker2_ranks,
    unfolding_spectra,
)


def planted_low_rank(rng: np.random.Generator, m: int, n: int, rank: int, snr: float) -> np.ndarray:
    """Rank-``rank`` signal + N(0, 1) noise; planted singular values in [snr, 2 snr] x (sqrt(m) + sqrt(n)).

    ``sqrt(m) + sqrt(n)`` is the largest singular value of the m x n noise, so ``snr`` is the ratio of
    the weakest planted singular value to the noise edge.
    """
    u, _ = np.linalg.qr(rng.standard_normal((m, rank)))
    v, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    d = rng.uniform(snr, 2 * snr, rank) * (np.sqrt(m) + np.sqrt(n))
    return (u * d) @ v.T + rng.standard_normal((m, n))


def matrix_with_spectrum(singular_values: list[float], shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(5)
    k = len(singular_values)
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], k)))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], k)))
    return (u * np.asarray(singular_values)) @ v.T


def svd_cost(n_in: int, n_out: int):  # noqa: ANN201
    return lambda r: (r * (n_in + n_out), 10 * r * (n_in + n_out))


# ---------------------------------------------------------------- EVBMF


@pytest.mark.timeout(120)
def test_evbmf_recovers_planted_rank_in_at_least_95_of_100_cases() -> None:
    """SNR 1.5: the weakest planted singular value is 1.5x the noise edge sigma (sqrt(m) + sqrt(n))."""
    rng = np.random.default_rng(2024)
    shapes = [(40, 100), (100, 40), (64, 64), (128, 300), (300, 128)]  # L < M, L > M and square
    hits = 0
    misses = []
    for case in range(100):
        m, n = shapes[case % len(shapes)]
        planted = int(rng.integers(1, min(m, n) // 4 + 1))
        found = evbmf_rank(planted_low_rank(rng, m, n, planted, snr=1.5))
        hits += found == planted
        if found != planted:
            misses.append((m, n, planted, found))
    assert hits >= 95, misses


def test_evbmf_is_the_same_for_a_matrix_and_its_transpose() -> None:
    rng = np.random.default_rng(3)
    y = planted_low_rank(rng, 50, 120, 6, snr=1.5)
    assert evbmf_rank(y) == evbmf_rank(y.T) == 6


def test_evbmf_is_scale_free_and_finds_nothing_in_pure_noise() -> None:
    rng = np.random.default_rng(4)
    y = planted_low_rank(rng, 60, 90, 5, snr=2.0)
    assert evbmf_rank(y * 1e-4) == evbmf_rank(y * 1e4) == 5
    assert evbmf_rank(rng.standard_normal((60, 90))) == 0


def test_evbmf_from_singular_values_matches_matrix_version_and_spectrum() -> None:
    rng = np.random.default_rng(6)
    y = planted_low_rank(rng, 70, 40, 9, snr=1.5)
    s = np.linalg.svd(y, compute_uv=False)
    assert evbmf_rank_from_singular_values(s[::-1], y.shape) == evbmf_rank(y) == 9
    assert evbmf_rank_from_singular_values(matrix_spectrum(y).singular_values, y.shape) == 9
    assert evbmf_rank(np.zeros((5, 8))) == 0
    with pytest.raises(FactorizeError, match="got 3 values for a matrix of shape \\(70, 40\\); expected min\\(m, n\\) = 40"):
        evbmf_rank_from_singular_values(s[:3], y.shape)


def test_evbmf_on_exactly_low_rank_matrix_counts_non_zero_singular_values() -> None:
    y = matrix_with_spectrum([10.0, 9.0, 8.0], (30, 50))  # other singular values are exact zeros
    assert evbmf_rank(y) <= 3


# ---------------------------------------------------------------- energy


def test_energy_rank_exact_on_constructed_spectrum() -> None:
    s = np.sqrt([50.0, 30.0, 10.0, 5.0, 5.0])  # energies sum to 100
    assert energy_rank(s, 0.5) == 1
    assert energy_rank(s, 0.8) == 2
    assert energy_rank(s, 0.81) == 3
    assert energy_rank(s, 0.9) == 3
    assert energy_rank(s, 0.95) == 4
    assert energy_rank(s, 1.0) == 5
    assert energy_rank(s[::-1], 0.9) == 3  # order does not matter
    assert energy_rank(np.array([3.0, 0.0, 0.0]), 1.0) == 1
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(FactorizeError, match="energy share: got"):
            energy_rank(s, bad)
    with pytest.raises(FactorizeError, match="NaN/Inf or negative"):
        energy_rank(np.array([1.0, -1.0]), 0.5)


# ---------------------------------------------------------------- policy parsing


@pytest.mark.parametrize(
    ("spec", "policy"),
    [
        ("vbmf", RankPolicy("vbmf", None)),
        (" VBMF ", RankPolicy("vbmf", None)),
        ("energy:0.9", RankPolicy("energy", 0.9)),
        ("params:0.25", RankPolicy("params", 0.25)),
        ("macs:0.5", RankPolicy("macs", 0.5)),
        ("macs:1", RankPolicy("macs", 1.0)),
        ("rank:16", RankPolicy("rank", 16.0)),
    ],
)
def test_parse_rank_policy_accepts_documented_forms(spec: str, policy: RankPolicy) -> None:
    assert parse_rank_policy(spec) == policy
    assert parse_rank_policy(str(policy)) == policy


@pytest.mark.parametrize(
    "spec", ["", "svd", "vbmf:2", "vbmf:-0.1", "vbmf:x", "energy", "energy:", "energy:0", "energy:1.5", "params:abc", "macs:-0.5", "rank:0", "rank:2.5", "rank:-3", "rank"]
)
def test_parse_rank_policy_rejects_bad_specs_naming_accepted_forms(spec: str) -> None:
    with pytest.raises(FactorizeError) as info:
        parse_rank_policy(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert '"vbmf", "energy:F", "params:F", "macs:F"' in message and '"rank:N"' in message


# ---------------------------------------------------------------- matrix ranks


SPECTRUM = [10.0, 8.0, 6.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05]


def test_select_matrix_rank_energy_and_fixed_rank_exact() -> None:
    w = matrix_with_spectrum(SPECTRUM, (10, 40))
    energies = np.cumsum(np.square(SPECTRUM)) / np.square(SPECTRUM).sum()
    cost, full = svd_cost(10, 40), (400, 4000)
    for share in (0.5, 0.9, 0.99, 0.999):
        expected = int(np.argmax(energies >= share)) + 1
        assert select_matrix_rank(w, f"energy:{share}", cost=cost, full_cost=full) == expected
    assert select_matrix_rank(w, "energy:0.9", cost=cost, full_cost=full) == 3  # 200/221 = 0.905
    assert select_matrix_rank(w, "rank:4", cost=cost, full_cost=full) == 4
    assert select_matrix_rank(w, "rank:64", cost=cost, full_cost=full) == 10  # clipped to min(m, n)


def test_select_matrix_rank_params_and_macs_budgets_exact() -> None:
    w = np.random.default_rng(0).standard_normal((100, 300))
    full = (30_000, 300_000)
    cost = svd_cost(100, 300)  # params 400 r, macs 4000 r
    assert select_matrix_rank(w, "params:0.25", cost=cost, full_cost=full) == 18  # 7200 <= 7500 < 7600
    assert select_matrix_rank(w, "macs:0.5", cost=cost, full_cost=full) == 37  # 148000 <= 150000 < 152000
    assert select_matrix_rank(w, "params:1", cost=cost, full_cost=full) == 75
    assert select_matrix_rank(w, "params:0.001", cost=cost, full_cost=full) == 1  # nothing fits: 1
    # a budget on params and another on macs follow their own cost component
    odd = lambda r: (r * 10, r * r)  # noqa: E731
    assert select_matrix_rank(w, "macs:0.01", cost=odd, full_cost=(1000, 10_000)) == 10
    assert select_matrix_rank(w, "params:0.5", cost=odd, full_cost=(1000, 10_000)) == 50


def test_select_matrix_rank_rounds_up_to_multiple_and_clips() -> None:
    w = np.random.default_rng(0).standard_normal((100, 300))
    full, cost = (30_000, 300_000), svd_cost(100, 300)
    assert select_matrix_rank(w, "params:0.25", cost=cost, full_cost=full, multiple=8) == 24
    assert select_matrix_rank(w, "params:0.25", cost=cost, full_cost=full, multiple=9) == 18
    assert select_matrix_rank(w, "rank:97", cost=cost, full_cost=full, multiple=8) == 100  # 104 clipped
    assert select_matrix_rank(w, "rank:1", cost=cost, full_cost=full, multiple=4) == 4


def test_select_matrix_rank_vbmf_floor() -> None:
    rng = np.random.default_rng(11)
    y = planted_low_rank(rng, 60, 150, 12, snr=2.0)
    cost, full = svd_cost(60, 150), (9000, 9000)
    # vbmf:1 is plain EVBMF (no weakening; tests/test_robust_ranks.py covers the weakened default)
    assert select_matrix_rank(y, "vbmf:1", cost=cost, full_cost=full) == 12
    assert select_matrix_rank(y, "vbmf:1", cost=cost, full_cost=full, floor=20) == 20
    assert select_matrix_rank(y, "vbmf:1", cost=cost, full_cost=full, multiple=8) == 16
    noise = rng.standard_normal((60, 150))  # EVBMF says 0: only noise, the full rank is kept (as MUSCO)
    assert evbmf_rank(noise) == 0
    assert select_matrix_rank(noise, "vbmf:1", cost=cost, full_cost=full) == 60
    assert select_matrix_rank(noise[:5], "vbmf:1", cost=cost, full_cost=full) == 5
    spectrum = matrix_spectrum(y)
    assert select_matrix_rank(y, parse_rank_policy("vbmf:1"), cost=cost, full_cost=full, spectrum=spectrum) == 12


def test_select_matrix_rank_bad_options() -> None:
    w = np.ones((4, 6))
    cost = svd_cost(4, 6)
    with pytest.raises(FactorizeError, match="multiple: got 0"):
        select_matrix_rank(w, "rank:2", cost=cost, full_cost=(24, 24), multiple=0)
    with pytest.raises(FactorizeError, match="floor: got -1"):
        select_matrix_rank(w, "rank:2", cost=cost, full_cost=(24, 24), floor=-1)
    with pytest.raises(FactorizeError, match="rank policy: got 'bogus'"):
        select_matrix_rank(w, "bogus", cost=cost, full_cost=(24, 24))
    with pytest.raises(FactorizeError, match="NaN or Inf"):
        select_matrix_rank(np.full((4, 6), np.nan), "vbmf", cost=cost, full_cost=(24, 24))


# ---------------------------------------------------------------- Tucker-2 and CP ranks


def planted_tucker(rng: np.random.Generator, shape: tuple[int, int, int, int], ranks: tuple[int, int], snr: float) -> np.ndarray:
    kh, kw, c_in, c_out = shape
    u_in, _ = np.linalg.qr(rng.standard_normal((c_in, ranks[0])))
    u_out, _ = np.linalg.qr(rng.standard_normal((c_out, ranks[1])))
    core = rng.standard_normal((kh, kw, ranks[0], ranks[1]))
    signal = np.einsum("ap,ijpq,bq->ijab", u_in, core, u_out)
    signal *= snr * (np.sqrt(c_in) + np.sqrt(kh * kw * c_out)) * np.sqrt(ranks[0]) / np.linalg.norm(signal)
    return signal + rng.standard_normal(shape)


def tucker_cost(kh: int, kw: int, c_in: int, c_out: int):  # noqa: ANN201
    return lambda a, b: (c_in * a + kh * kw * a * b + b * c_out, 100 * (c_in * a + kh * kw * a * b + b * c_out))


def test_select_tucker2_ranks_vbmf_and_energy_on_planted_kernel() -> None:
    rng = np.random.default_rng(21)
    k = planted_tucker(rng, (3, 3, 48, 64), (6, 10), snr=4.0)
    cost, full = tucker_cost(3, 3, 48, 64), (3 * 3 * 48 * 64, 0)
    assert select_tucker2_ranks(k, "vbmf:1", cost=cost, full_cost=full, floor=1) == (6, 10)
    assert select_tucker2_ranks(k, "vbmf:1", cost=cost, full_cost=full) == (8, 10)  # floor 8 on mode 2
    assert select_tucker2_ranks(k, "vbmf:1", cost=cost, full_cost=full, floor=1, multiple=4) == (8, 12)
    spectra = unfolding_spectra(k)
    expected = tuple(
        int(np.argmax(np.cumsum(s.values) / s.values.sum() >= 0.9)) + 1 for s in spectra
    )
    assert select_tucker2_ranks(k, "energy:0.9", cost=cost, full_cost=full, spectra=spectra) == expected
    assert select_tucker2_ranks(k, "rank:50", cost=cost, full_cost=full) == (48, 50)


def test_select_tucker2_ranks_scales_both_ranks_to_fit_budget() -> None:
    k = np.random.default_rng(0).standard_normal((3, 3, 32, 64))
    cost = tucker_cost(3, 3, 32, 64)
    full = (3 * 3 * 32 * 64, 100 * 3 * 3 * 32 * 64)  # 18432 params
    # t -> (round(t/2), t); params(8, 16) = 256 + 1152 + 1024 = 2432 <= 4608 (0.25 x)
    # params(9, 18) = 288 + 1458 + 1152 = 2898; ... params(14, 28) = 448 + 3528 + 1792 = 5768 > 4608
    r_in, r_out = select_tucker2_ranks(k, "params:0.25", cost=cost, full_cost=full)
    assert cost(r_in, r_out)[0] <= 0.25 * full[0]
    assert r_out in (2 * r_in - 1, 2 * r_in, 2 * r_in + 1)
    bigger = (max(1, round((r_out + 1) * 32 / 64)), r_out + 1)
    assert cost(*bigger)[0] > 0.25 * full[0]
    assert (r_in, r_out) == (12, 24)  # 384 + 2592 + 1536 = 4512 <= 4608; t=25 -> (12, 25): 4636 > 4608
    assert select_tucker2_ranks(k, "macs:0.25", cost=cost, full_cost=full) == (12, 24)
    assert select_tucker2_ranks(k, "params:0.25", cost=cost, full_cost=full, multiple=8) == (16, 24)


def test_select_cp_rank_policies() -> None:
    rng = np.random.default_rng(22)
    k = planted_tucker(rng, (3, 3, 48, 64), (6, 10), snr=4.0)
    cost = lambda r: (r * (48 + 3 + 3 + 64), r * (48 + 3 + 3 + 64) * 100)  # noqa: E731
    full = (3 * 3 * 48 * 64, 3 * 3 * 48 * 64 * 100)
    assert select_cp_rank(k, "vbmf:1", cost=cost, full_cost=full, floor=1) == 10  # max of the modes (6, 10)
    assert select_cp_rank(k, "params:0.1", cost=cost, full_cost=full) == 23  # 2714 <= 2764.8 < 2832
    assert select_cp_rank(k, "params:0.1", cost=cost, full_cost=full, multiple=8) == 24
    assert select_cp_rank(k, "rank:5000", cost=cost, full_cost=full) == 3 * 3 * 48  # max CP rank
    with pytest.raises(FactorizeError, match="4-D"):
        select_cp_rank(k[0], "vbmf", cost=cost, full_cost=full)


# ---------------------------------------------------------------- trained weights


@pytest.mark.timeout(180)
def test_trained_mlp_weights_have_low_rank_structure() -> None:
    """Weights of a small MLP trained on sklearn's digits: spectra are not flat like random weights."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=150, random_state=0)
    # one BLAS thread: threaded OpenBLAS on a busy 2-core machine made this fit 20x slower
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(x, y)
    assert mlp.score(x, y) > 0.95  # it did learn
    w = mlp.coefs_[0]  # (64 pixels, 64 hidden units)
    full = min(w.shape)
    cost, full_cost = svd_cost(*w.shape), (w.size, w.size)
    trained_energy = select_matrix_rank(w, "energy:0.9", cost=cost, full_cost=full_cost)
    assert trained_energy < full
    vbmf = evbmf_rank(w)
    assert 1 <= vbmf < full
    # for comparison the same-shaped random matrix keeps more ranks for the same energy
    random_w = np.random.default_rng(0).standard_normal(w.shape)
    assert trained_energy < select_matrix_rank(random_w, "energy:0.9", cost=cost, full_cost=full_cost)
