"""Behaviour of edgelr.factorize decompositions: exact reconstruction, shapes, optimality, errors."""

from __future__ import annotations

import numpy as np
import pytest

from edgelr.errors import FactorizeError
from edgelr.factorize import (
    cp,
    matrix_spectrum,
    max_cp_rank,
    spatial_svd,
    truncated_svd,
    tucker2,
    unfolding_spectra,
)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tucker_reconstruct(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    return np.einsum("ap,ijpq,qb->ijab", first, core, last)


def cp_reconstruct(res) -> np.ndarray:  # noqa: ANN001 - CPResult
    return np.einsum("ar,ir,jr,rb->ijab", res.first, res.vertical, res.horizontal, res.last)


def conv_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Keras-style Conv2D, stride 1, 'valid' padding, no bias: x (H, W, c_in), kernel (kh, kw, c_in, c_out)."""
    kh, kw, _, c_out = kernel.shape
    h, w = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    out = np.zeros((h, w, c_out))
    for i in range(kh):
        for j in range(kw):
            out += x[i : i + h, j : j + w, :] @ kernel[i, j]
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------- truncated SVD


@pytest.mark.parametrize("shape", [(20, 35), (35, 20), (17, 17), (1, 9), (9, 1)])
def test_svd_full_rank_reconstructs_exactly(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    w = rng.standard_normal(shape).astype(np.float32)
    res = truncated_svd(w, min(shape))
    assert res.left.shape == (shape[0], min(shape)) and res.right.shape == (min(shape), shape[1])
    assert res.left.dtype == np.float32 and res.right.dtype == np.float32
    assert rel(res.left.astype(np.float64) @ res.right, w.astype(np.float64)) < 1e-5
    assert res.rel_error < 1e-5
    assert res.singular_values.shape == (min(shape),)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_svd_truncation_is_optimal_and_error_matches(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    w = rng.standard_normal(shape)
    s = np.linalg.svd(w, compute_uv=False)
    res = truncated_svd(w, 7)
    assert res.rank == 7
    assert res.left.shape == (shape[0], 7) and res.right.shape == (7, shape[1])
    np.testing.assert_allclose(res.singular_values, s, rtol=1e-10)
    actual = rel(res.left @ res.right, w)
    eckart_young = np.sqrt((s[7:] ** 2).sum() / (s**2).sum())
    assert actual == pytest.approx(eckart_young, rel=1e-9)
    assert res.rel_error == pytest.approx(actual, rel=1e-9)
    # sqrt(S) split evenly: both factors carry the same singular values
    np.testing.assert_allclose(np.linalg.norm(res.left, axis=0), np.sqrt(s[:7]), rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(res.right, axis=1), np.sqrt(s[:7]), rtol=1e-9)


def test_svd_of_rank_deficient_matrix_stays_finite_and_exact(rng: np.random.Generator) -> None:
    w = rng.standard_normal((12, 3)) @ rng.standard_normal((3, 20))  # rank 3
    res = truncated_svd(w, 12)
    assert np.isfinite(res.left).all() and np.isfinite(res.right).all()
    assert rel(res.left @ res.right, w) < 1e-8
    assert truncated_svd(w, 3).rel_error < 1e-6


def test_svd_with_shared_spectrum_is_identical(rng: np.random.Generator) -> None:
    w = rng.standard_normal((40, 25))
    spectrum = matrix_spectrum(w)
    a, b = truncated_svd(w, 9), truncated_svd(w, 9, spectrum=spectrum)
    np.testing.assert_array_equal(a.left, b.left)
    np.testing.assert_array_equal(a.right, b.right)
    with pytest.raises(FactorizeError, match=r"\(25, 40\)"):
        truncated_svd(w.T, 9, spectrum=spectrum)


# ---------------------------------------------------------------- Tucker-2


@pytest.mark.parametrize("shape", [(3, 3, 16, 24), (3, 3, 40, 8), (5, 5, 3, 12), (1, 1, 10, 6)])
def test_tucker2_full_rank_reconstructs_exactly(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    k = rng.standard_normal(shape).astype(np.float32)
    res = tucker2(k, (shape[2], shape[3]))
    assert res.first.shape == (shape[2], shape[2])
    assert res.core.shape == shape
    assert res.last.shape == (shape[3], shape[3])
    assert res.first.dtype == np.float32
    assert rel(tucker_reconstruct(res.first.astype(np.float64), res.core, res.last), k.astype(np.float64)) < 1e-5
    assert res.rel_error < 1e-5


def test_tucker2_shapes_orthonormal_factors_and_reported_error(rng: np.random.Generator) -> None:
    k = rng.standard_normal((3, 3, 32, 48))
    res = tucker2(k, (6, 10))
    assert res.ranks == (6, 10)
    assert (res.first.shape, res.core.shape, res.last.shape) == ((32, 6), (3, 3, 6, 10), (10, 48))
    np.testing.assert_allclose(res.first.T @ res.first, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(res.last @ res.last.T, np.eye(10), atol=1e-10)
    assert res.rel_error == pytest.approx(rel(tucker_reconstruct(res.first, res.core, res.last), k), rel=1e-8)


@pytest.mark.parametrize("seed", range(5))
def test_hooi_never_worse_than_hosvd(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((3, 3, 24, 40)) + 3 * np.einsum(
        "ijpq,ap,qb->ijab", rng.standard_normal((3, 3, 4, 4)), rng.standard_normal((24, 4)), rng.standard_normal((4, 40))
    )
    hosvd = tucker2(k, (5, 7), max_iter=0)
    hooi = tucker2(k, (5, 7))
    assert hosvd.n_iter == 0
    assert 1 <= hooi.n_iter <= 10
    assert hooi.rel_error <= hosvd.rel_error + 1e-12


def test_hooi_improves_on_random_kernel(rng: np.random.Generator) -> None:
    k = rng.standard_normal((3, 3, 32, 32))
    assert tucker2(k, (6, 6)).rel_error < tucker2(k, (6, 6), max_iter=0).rel_error - 1e-3


@pytest.mark.parametrize(
    ("shape", "ranks"), [((3, 3, 32, 48), (6, 10)), ((3, 3, 64, 64), (8, 8)), ((7, 7, 3, 16), (3, 5)), ((3, 3, 20, 12), (15, 10))]
)
def test_tucker2_matches_tensorly_partial_tucker(shape: tuple[int, ...], ranks: tuple[int, int]) -> None:
    from tensorly.decomposition import partial_tucker
    from tensorly.tenalg import multi_mode_dot
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(7)
    k = rng.standard_normal(shape) * np.linspace(0.2, 2.0, shape[3])  # uneven channel energies
    with threadpool_limits(limits=1, user_api="blas"):
        (core, factors), _ = partial_tucker(k, rank=list(ranks), modes=[2, 3])
    tl_error = rel(multi_mode_dot(core, factors, modes=[2, 3]), k)
    ours = tucker2(k, ranks, max_iter=100, tol=1e-4)
    assert ours.rel_error == pytest.approx(tl_error, abs=2e-3)
    # the default (10 sweeps) gets close too
    assert tucker2(k, ranks).rel_error <= tl_error + 5e-3


def test_tucker2_with_shared_spectra_is_identical(rng: np.random.Generator) -> None:
    k = rng.standard_normal((3, 3, 20, 30))
    a = tucker2(k, (5, 6))
    b = tucker2(k, (5, 6), spectra=unfolding_spectra(k))
    np.testing.assert_allclose(tucker_reconstruct(a.first, a.core, a.last), tucker_reconstruct(b.first, b.core, b.last))
    with pytest.raises(FactorizeError, match="spectra"):
        tucker2(k, (5, 6), spectra=unfolding_spectra(k[:, :, :10]))


def test_tucker2_recovers_planted_tucker_structure(rng: np.random.Generator) -> None:
    k = np.einsum(
        "ijpq,ap,qb->ijab", rng.standard_normal((3, 3, 4, 6)), rng.standard_normal((30, 4)), rng.standard_normal((6, 50))
    )
    assert tucker2(k, (4, 6)).rel_error < 1e-6


# ---------------------------------------------------------------- CP


def test_cp_shapes_finite_error_and_repeatable(rng: np.random.Generator) -> None:
    k = rng.standard_normal((3, 3, 16, 20)).astype(np.float32)
    a = cp(k, 12, random_state=3)
    assert (a.first.shape, a.vertical.shape, a.horizontal.shape, a.last.shape) == ((16, 12), (3, 12), (3, 12), (12, 20))
    assert a.first.dtype == np.float32
    assert 0.0 < a.rel_error < 1.0 and np.isfinite(a.rel_error)
    assert a.rel_error == pytest.approx(rel(cp_reconstruct(a).astype(np.float64), k.astype(np.float64)), rel=1e-4)
    b = cp(k, 12, random_state=3)
    np.testing.assert_array_equal(a.first, b.first)
    np.testing.assert_array_equal(a.last, b.last)


def test_cp_recovers_planted_cp_tensor(rng: np.random.Generator) -> None:
    fa, fv, fh, fl = (rng.standard_normal(s) for s in ((12, 3), (3, 3), (3, 3), (3, 10)))
    k = np.einsum("ar,ir,jr,rb->ijab", fa, fv, fh, fl)
    res = cp(k, 3, n_iter_max=500)
    assert res.rel_error < 1e-4
    assert rel(cp_reconstruct(res), k) < 1e-4


def test_cp_rank_above_mode_size_uses_seed(rng: np.random.Generator) -> None:
    k = rng.standard_normal((3, 3, 8, 8))
    a, b, c = cp(k, 20, random_state=0), cp(k, 20, random_state=0), cp(k, 20, random_state=1)
    np.testing.assert_array_equal(a.first, b.first)
    assert not np.array_equal(a.first, c.first)
    assert np.isfinite(a.rel_error) and a.rel_error < cp(k, 4).rel_error


# ---------------------------------------------------------------- spatial SVD


@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (5, 3, 6, 2), (3, 3, 1, 8)])
def test_spatial_svd_full_rank_composes_to_original_conv(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    kh, kw, c_in, c_out = shape
    k = rng.standard_normal(shape)
    full = min(c_in * kh, c_out * kw)
    res = spatial_svd(k, full)
    assert res.vertical.shape == (kh, 1, c_in, full) and res.horizontal.shape == (1, kw, full, c_out)
    assert res.singular_values.shape == (full,)
    assert res.rel_error < 1e-5
    x = rng.standard_normal((11, 12, c_in))
    expected = conv_valid(x, k)
    composed = conv_valid(conv_valid(x, res.vertical), res.horizontal)
    assert rel(composed, expected) < 1e-5


def test_spatial_svd_truncated_error_matches_composition(rng: np.random.Generator) -> None:
    k = rng.standard_normal((3, 3, 8, 8))
    res = spatial_svd(k, 5)
    # the composed kernel: sum_r vertical[i,0,c,r] horizontal[0,j,r,d]
    composed = np.einsum("icr,jrd->ijcd", res.vertical[:, 0], res.horizontal[0])
    assert res.rel_error == pytest.approx(rel(composed, k), rel=1e-8)
    assert spatial_svd(k, 10).rel_error < res.rel_error


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: truncated_svd(np.ones((4, 6)), 5), r"got 5; the valid range for this shape is \[1, 4\]"),
        (lambda: truncated_svd(np.ones((4, 6)), 0), r"got 0; .*\[1, 4\]"),
        (lambda: truncated_svd(np.ones((4, 6)), -2), r"got -2"),
        (lambda: truncated_svd(np.ones((4, 6)), 2.5), r"got 2.5 \(float\)"),
        (lambda: truncated_svd(np.ones((2, 4, 6)), 2), r"shape \(2, 4, 6\) \(3-D\); expected a 2-D"),
        (lambda: truncated_svd(np.array([[1.0, np.nan], [0.0, 1.0]]), 1), r"1 of 4 values are NaN or Inf"),
        (lambda: truncated_svd(np.array([[1.0, np.inf], [0.0, 1.0]]), 1), r"NaN or Inf"),
        (lambda: tucker2(np.ones((3, 3, 4, 6)), (5, 2)), r"r_in .*got 5; .*\[1, 4\]"),
        (lambda: tucker2(np.ones((3, 3, 4, 6)), (2, 7)), r"r_out .*got 7; .*\[1, 6\]"),
        (lambda: tucker2(np.ones((3, 3, 4, 6)), (0, 2)), r"got 0"),
        (lambda: tucker2(np.ones((3, 3, 4, 6)), 3), r"expected a pair"),
        (lambda: tucker2(np.ones((4, 6)), (2, 2)), r"expected a 4-D array \(kh, kw, c_in, c_out\)"),
        (lambda: tucker2(np.full((3, 3, 4, 6), np.nan), (2, 2)), r"216 of 216 values are NaN"),
        (lambda: tucker2(np.ones((3, 3, 4, 6)), (2, 2), max_iter=-1), r"max_iter: got -1"),
        (lambda: cp(np.ones((3, 3, 4, 6)), 0), r"got 0; .*\[1, 36\]"),
        (lambda: cp(np.ones((3, 3, 4, 6)), 37), r"got 37; .*\[1, 36\]"),
        (lambda: cp(np.ones((3, 4, 6)), 2), r"3-D"),
        (lambda: cp(np.ones((3, 3, 4, 6)), 25), r"CP rank 25 of a \(3, 3, 4, 6\) kernel: ALS failed"),
        (lambda: spatial_svd(np.ones((3, 3, 4, 6)), 13), r"got 13; .*\[1, 12\]"),
        (lambda: spatial_svd(np.ones((3, 3, 4, 6)), -1), r"got -1"),
        (lambda: spatial_svd(np.full((3, 3, 4, 6), -np.inf), 2), r"NaN or Inf"),
    ],
)
def test_bad_input_raises_factorize_error(call, pattern: str) -> None:  # noqa: ANN001
    with pytest.raises(FactorizeError, match=pattern):
        call()


def test_max_cp_rank_is_product_of_all_but_largest_dim() -> None:
    assert max_cp_rank((3, 3, 64, 128)) == 3 * 3 * 64
    assert max_cp_rank((7, 7, 3, 2)) == 7 * 3 * 2


def test_cp_rejects_non_finite_als_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorly.decomposition

    def diverged(tensor, rank, **kwargs):  # noqa: ANN001, ANN202, ARG001 - stands in for a diverged ALS
        factors = [np.full((dim, rank), np.nan) for dim in tensor.shape]
        return np.ones(rank), factors

    monkeypatch.setattr(tensorly.decomposition, "parafac", diverged)
    with pytest.raises(FactorizeError, match=r"CP rank 4 of a \(3, 3, 6, 8\) kernel: ALS produced NaN/Inf factors"):
        cp(np.ones((3, 3, 6, 8)), 4)


def test_all_zero_weights_give_zero_error_and_finite_factors() -> None:
    t = tucker2(np.zeros((3, 3, 4, 6)), (2, 3))
    assert t.rel_error == 0.0 and np.isfinite(t.first).all()
    np.testing.assert_allclose(t.first.T @ t.first, np.eye(2), atol=1e-12)
    s = truncated_svd(np.zeros((4, 6)), 2)
    assert s.rel_error == 0.0 and np.isfinite(s.left).all() and np.isfinite(s.right).all()
    np.testing.assert_array_equal(s.left @ s.right, np.zeros((4, 6)))


@pytest.mark.parametrize("k", [1, 2, 7, 40, 200])
def test_symmetric_eigen_values_and_leading_vectors_match_lapack(k: int) -> None:
    from edgelr.factorize.spectrum import SymmetricEigen

    rng = np.random.default_rng(k)
    a = rng.standard_normal((k, 2 * k + 1))
    gram = a @ a.T
    eigen = SymmetricEigen(gram)
    reference = np.linalg.eigvalsh(gram)[::-1]
    np.testing.assert_allclose(eigen.values, reference, rtol=1e-10, atol=1e-10 * reference[0])
    for rank in sorted({1, max(1, k // 20), max(1, k // 3), k}):  # both the MRRR-range and the all-vectors paths
        v = eigen.leading_vectors(rank)
        assert v.shape == (k, rank)
        np.testing.assert_allclose(v.T @ v, np.eye(rank), atol=1e-10)
        np.testing.assert_allclose(gram @ v, v * reference[:rank], atol=1e-9 * reference[0])


def test_recurrent_3d_tensor_is_public_and_round_trips() -> None:
    """edgelr.factorize exports the 3-D recurrent tensor: stack an LSTM's kernels, split them back exactly,
    and its Tucker-2 at full ranks is exact while a lower rank is not."""
    import edgelr.factorize as fz

    rng = np.random.default_rng(0)
    kernel, recurrent = rng.standard_normal((5, 32)), rng.standard_normal((8, 32))
    tensor = fz.lstm_tensor(kernel, recurrent)
    assert tensor.shape == (4, 8, 13)
    back = fz.lstm_kernels(tensor, 5)
    assert np.allclose(back[0], kernel) and np.allclose(back[1], recurrent)
    assert fz.tucker2_3d(tensor, (8, 13)).rel_error < 1e-6
    assert fz.tucker2_3d(tensor, (2, 3)).rel_error > 0.1
