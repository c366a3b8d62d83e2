"""The seed methods for low-rank training (issue 14 part 4): nuclear-norm prox, DeepTwist, orthogonal
factors, the 3-D LSTM tensor (Tucker-2) rewriter and cross-validated ranks."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edgelr.compress.cv_ranks import kfold_indices, one_se_choice
from edgelr.compress.lowrank_train import nuclear_norm, svt
from edgelr.errors import UsageError


@pytest.fixture(scope="module")
def small_cnn(tf_keras: ModuleType) -> Any:
    """Conv 3x3 (8 -> 12) + 1x1 conv + Dense, on 6x6x3 inputs, briefly trained (decaying spectra)."""
    k2 = tf_keras
    k2.utils.set_random_seed(0)
    inp = k2.Input((6, 6, 3))
    h = k2.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    h = k2.layers.Conv2D(12, 3, padding="same", activation="relu", name="c2")(h)
    h = k2.layers.Conv2D(10, 1, activation="relu", name="p1")(h)
    h = k2.layers.Flatten()(h)
    out = k2.layers.Dense(5, name="fc")(k2.layers.Dense(24, activation="relu", name="fc1")(h))
    return k2.Model(inp, out)


def test_svt_lowers_the_nuclear_norm_and_zeroes_small_singular_values() -> None:
    w = np.random.default_rng(0).normal(size=(12, 7)).astype(np.float32)
    s = np.linalg.svd(w, compute_uv=False)
    tau = float(np.median(s))
    out = svt(w, tau)
    assert out.shape == w.shape and out.dtype == w.dtype
    assert nuclear_norm(out) == pytest.approx(np.maximum(s - tau, 0).sum(), rel=1e-5)
    assert np.linalg.matrix_rank(out, tol=1e-4) == int((s > tau).sum())


def test_nuclear_prox_step_lowers_every_layers_nuclear_norm_and_keeps_shapes(small_cnn: Any) -> None:
    from edgelr.compress.lowrank_train import layer_matrices, nuclear_prox
    from edgelr.tfcompat import keras2

    model = keras2().models.clone_model(small_cnn)
    model.set_weights(small_cnn.get_weights())
    names = ["c2", "p1", "fc1"]
    before = {n: (model.get_layer(n).kernel.shape, [nuclear_norm(np.asarray(getattr(m, "get", lambda: m)()))
                                                    for m, _ in layer_matrices(model.get_layer(n))]) for n in names}
    assert nuclear_prox(model, shrink=0.5) >= 5
    for n in names:
        layer = model.get_layer(n)
        after = [nuclear_norm(np.asarray(getattr(m, "get", lambda: m)())) for m, _ in layer_matrices(layer)]
        assert layer.kernel.shape == before[n][0]
        assert all(a < b * 0.9 for a, b in zip(after, before[n][1])), (n, after, before[n][1])


def test_deeptwist_leaves_weights_exactly_low_rank_and_factorization_is_lossless(small_cnn: Any) -> None:
    from edgelr.compress.lowrank_train import deeptwist_callback, twist_targets
    from edgelr.rewrite import build_factorized, plan_factorization
    from edgelr.tfcompat import keras2

    k2 = keras2()
    model = k2.models.clone_model(small_cnn)
    model.set_weights(small_cnn.get_weights())
    plan = plan_factorization(model, method="auto", rank_policy="rank:3", min_reduction=None, progress=False)
    targets, other = twist_targets(plan)
    assert {t.path for t in targets} == {"c1", "c2", "p1", "fc1", "fc"} and other == []
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6, 6, 3)).astype(np.float32), rng.normal(size=(64, 5)).astype(np.float32)
    model.compile(k2.optimizers.Adam(1e-2), "mse")
    twist = deeptwist_callback(targets, every=3)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[twist])
    assert twist.steps == 8 and twist.applied == 2
    dense = model.get_layer("fc1").kernel.numpy()
    assert np.linalg.matrix_rank(dense, tol=1e-4 * np.abs(dense).max()) == 3
    k = model.get_layer("c2").kernel.numpy()  # Tucker-2: both channel modes at rank 3
    for mode in (2, 3):
        unf = np.moveaxis(k, mode, 0).reshape(k.shape[mode], -1)
        assert np.linalg.matrix_rank(unf, tol=1e-4 * np.abs(unf).max()) == 3
    fact, report = build_factorized(model, plan_factorization(model, method="auto", rank_policy="rank:3",
                                                              min_reduction=None, progress=False),
                                    {t.path: t.ranks for t in targets})
    assert not report["skipped"].any() and report["rel_error"].max() < 1e-5
    np.testing.assert_allclose(fact.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)


def test_orthonormalized_factors_keep_the_function_and_start_the_penalty_at_zero(small_cnn: Any) -> None:
    from edgelr.compress.lowrank_train import factor_pairs, orthogonal_penalty, orthogonality_error, orthonormalize_factors
    from edgelr.rewrite import factorize_model

    fact, _ = factorize_model(small_cnn, method="auto", rank_policy="rank:4", min_reduction=None, progress=False)
    x = np.random.default_rng(1).normal(size=(8, 6, 6, 3)).astype(np.float32)
    ref = fact.predict(x, verbose=0)
    assert orthonormalize_factors(fact) == len(list(factor_pairs(fact))) >= 3
    np.testing.assert_allclose(fact.predict(x, verbose=0), ref, atol=1e-4)
    for layer, _ in factor_pairs(fact):
        assert orthogonality_error(layer.get_weights()[0]) < 1e-8
    penalty = orthogonal_penalty(fact, 1.0)
    assert penalty is not None and float(penalty()) < 1e-6


def test_full_rank_factor_chains_merge_back_into_the_original_weights(small_cnn: Any) -> None:
    from edgelr.compress.lowrank_train import merge_chain
    from edgelr.rewrite import build_factorized, plan_factorization

    plan = plan_factorization(small_cnn, method="auto", rank_policy="rank:2", min_reduction=None, progress=False)
    full = {p: plan.layers[p].full_ranks for p in plan.candidates()}
    wide, _ = build_factorized(small_cnn, plan, full, progress=False)
    assert wide.count_params() > small_cnn.count_params()
    for path in full:
        chain = [lay.get_weights() for lay in wide.layers if lay.name.startswith(path + "/")]
        assert len(chain) >= 2
        original = small_cnn.get_layer(path).get_weights()
        merged = merge_chain(chain, original[0].shape)
        for a, b in zip(merged, original):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_lstm(tf_keras: ModuleType) -> Any:
    k2 = tf_keras
    k2.utils.set_random_seed(0)
    inp = k2.Input((6, 5), batch_size=1)
    h = k2.layers.LSTM(8, name="lstm")(inp)
    return k2.Model(inp, k2.layers.Dense(3, name="head")(h))


def test_tensor3_lstm_tucker_is_exact_at_full_rank_and_converts_to_tflite(tiny_lstm: Any) -> None:
    from edgelr.compress.convert import convert
    from edgelr.compress.validate import run_tflite
    from edgelr.rewrite import applicable_methods, factorize_model, methods

    assert "tensor3" in methods() and "tensor3" in applicable_methods(tiny_lstm.get_layer("lstm"))
    fact, report = factorize_model(tiny_lstm, method="tensor3", rank_policy="rank:100", min_reduction=None,
                                   include=["lstm"], progress=False)
    row = report.set_index("layer").loc["lstm"]
    assert row["method"] == "tensor3" and tuple(row["ranks"]) == (8, 13) and row["rel_error"] < 1e-6
    assert [type(lay.cell).__name__ for lay in fact.layers if hasattr(lay, "cell")] == ["Tucker3LSTMCell"]
    x = np.random.default_rng(0).normal(size=(3, 6, 5)).astype(np.float32)
    ref = tiny_lstm.predict(x, batch_size=1, verbose=0)
    np.testing.assert_allclose(fact.predict(x, batch_size=1, verbose=0), ref, atol=1e-5)
    np.testing.assert_allclose(run_tflite(convert(fact, "none").content, x), ref, atol=1e-5)
    small, rep = factorize_model(tiny_lstm, method="tensor3", rank_policy="rank:4", min_reduction=None,
                                 include=["lstm"], progress=False)
    row = rep.set_index("layer").loc["lstm"]
    assert tuple(row["ranks"]) == (4, 4) and row["params_after"] < row["params_before"]
    from edgelr.rewrite.cost import layer_cost

    assert sum(layer_cost(lay)[1] for lay in small.layers if lay.name.startswith("lstm")) == row["macs_after"]
    assert small.count_params() == tiny_lstm.count_params() - row["params_before"] + row["params_after"]


def test_tensor3_int8_runs_under_xnnpack_when_the_first_step_is_all_zero(tf_keras: ModuleType) -> None:
    """Left-padded sequences: step 0 sees x = 0 and h0 = 0 in every calibration sample. Without the projection's
    offset the core's output there is exactly 0, gets a ~1e-9 int8 scale and XNNPACK refuses the model (seen
    on JapaneseVowels' LSTM(128) at every rank)."""
    from edgelr.compress.convert import convert
    from edgelr.compress.validate import run_tflite
    from edgelr.rewrite import factorize_model

    k2 = tf_keras
    k2.utils.set_random_seed(0)
    inp = k2.Input((6, 5), batch_size=1)
    model = k2.Model(inp, k2.layers.Dense(3, name="head")(k2.layers.LSTM(8, name="lstm")(inp)))
    cell = model.get_layer("lstm").cell
    cell.bias.assign(np.random.default_rng(2).normal(scale=0.5, size=cell.bias.shape))  # as trained: not zero
    fact, _ = factorize_model(model, method="tensor3", rank_policy="rank:4", min_reduction=None,
                              include=["lstm"], progress=False)
    x = np.random.default_rng(1).normal(size=(64, 6, 5)).astype(np.float32)
    x[:, :2] = 0.0                                                  # padding at the start of every sequence
    ref = fact.predict(x[:16], batch_size=1, verbose=0)
    y = run_tflite(convert(fact, "int8", representative=x).content, x[:16])   # XNNPACK prepares it
    assert np.abs(y - ref).max() < 0.1 * np.abs(ref).max()


def test_one_se_rule_picks_the_most_compressed_candidate_within_one_standard_error() -> None:
    scores = {"full": [89, 93, 91], "half": [89, 91, 90], "quarter": [80, 85, 82], "noisy": [70, 95, 90]}
    costs = {"full": 100, "half": 50, "quarter": 25, "noisy": 10}
    choice = one_se_choice(scores, costs)
    # best mean: full (91, SE 2/sqrt(3) = 1.15); half (90) is within; quarter (82.3) and noisy (85) are not
    assert choice.best == "full" and choice.choice == "half"
    assert choice.threshold == pytest.approx(91 - 2 / np.sqrt(3))
    assert one_se_choice({**scores, "full": [90.9, 91.1, 91.0]}, costs).choice == "full"  # SE 0.06: half is out
    losses = {k: [100 - v for v in vals] for k, vals in scores.items()}
    assert one_se_choice(losses, costs, higher_is_better=False).choice == "half"
    folds = kfold_indices(10, 3, seed=0)
    assert sorted(np.concatenate([h for _, h in folds]).tolist()) == list(range(10))
    assert all(len(set(t) & set(h)) == 0 and len(t) + len(h) == 10 for t, h in folds)


def test_compress_options_check_the_low_rank_training_flags() -> None:
    from edgelr.compress.options import check_options

    opts = check_options({"deeptwist_every": 20, "orthogonal": 1e-3, "cv_folds": 3, "cv_policies": ["params:0.5"]})
    assert (opts.deeptwist_every, opts.orthogonal, opts.cv_folds) == (20, 1e-3, 3)
    for bad, flag in (({"deeptwist_every": 0}, "--deeptwist"), ({"nuclear": -1.0}, "--nuclear"),
                      ({"cv_folds": 1}, "--cv-folds"), ({"cv_policies": ["params:0.5"]}, "--cv-policy"),
                      ({"nuclear": 0.5, "max_accuracy_drop": 1.0}, "--nuclear"),
                      ({"cv_folds": 3, "cv_policies": ["bogus"]}, "--cv-policy"),
                      ({"overparam_epochs": 2}, "--overparam-epochs")):
        with pytest.raises(UsageError, match=flag):
            check_options(bad)
