"""Latency-aware model-wide rank allocation (``allocate="latency"``, edgelr.rewrite.allocate): the Lagrangian
solver against brute force, the rank ladder, the error proxies against real truncations, and whole-model
plans that stay within the per-layer policy's totals while being faster by the estimate."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from edgelr.errors import FactorizeError
from tests.keras_util import call, rel_diff

pytestmark = pytest.mark.timeout(600)


def test_rank_ladder() -> None:
    from edgelr.rewrite.allocate import MAX_STEPS, rank_ladder

    assert rank_ladder(64, 16) == [16, 32, 48, 64]
    assert rank_ladder(3, 16) == [3]
    assert rank_ladder(40, 16) == [16, 32, 40]
    assert rank_ladder(512, 1) == list(range(8, 513, 8))  # coarsened: 512 / 64 steps
    big = rank_ladder(1000, 16)
    assert big[0] == 16 and big[-1] == 1000 and len(big) <= MAX_STEPS + 1
    assert all(b % 16 == 0 for b in big[:-1])


def test_lagrangian_matches_brute_force() -> None:
    """Convex per-layer trade-offs: the grid search finds the brute-force optimum; infeasible -> None."""
    from edgelr.rewrite.allocate import _lagrangian

    rng = np.random.default_rng(1)
    for _ in range(5):
        layers, width = 4, 5
        # per layer: cost falls linearly, loss rises convexly along the options (every option on the hull)
        steps = np.arange(width)
        cost = rng.uniform(1, 5, (layers, 1)) * (width - steps)[None, :]
        loss = rng.uniform(0.1, 1, (layers, 1)) * (steps ** 2)[None, :]
        other = np.zeros_like(cost)
        budget = float(cost.sum(axis=0).mean())
        pick = _lagrangian(loss, float(loss[:, width // 2].sum()), [(cost, budget), (other, 1.0)])
        assert pick is not None
        assert cost[np.arange(layers), pick].sum() <= budget
        best = min((loss[np.arange(layers), combo].sum(), combo)
                   for combo in itertools.product(range(width), repeat=layers)
                   if cost[np.arange(layers), list(combo)].sum() <= budget)
        # relaxation + coordinate polish: within one option step of the true optimum (usually on it)
        step = float(np.max(np.diff(loss, axis=1)))
        assert loss[np.arange(layers), pick].sum() <= best[0] + step
    assert _lagrangian(loss, 1.0, [(cost, 0.5), (other, 1.0)]) is None


def _low_rank(rng: np.random.Generator, shape: tuple[int, ...], rank: int, noise: float) -> np.ndarray:
    """A (..., c_in, c_out) kernel whose channel matrix has a decaying spectrum of about ``rank``."""
    rows = int(np.prod(shape[:-1]))
    mat = rng.normal(0, 1, (rows, rank)) @ (rng.normal(0, 1, (rank, shape[-1])) * np.linspace(1, 0.1, rank)[:, None])
    mat = mat / np.sqrt(rows) + noise * rng.normal(0, 1, (rows, shape[-1])) / np.sqrt(rows)
    return mat.reshape(shape).astype("float32")


def _mixed(keras: Any) -> Any:
    """An output-bound expanding 1x1 conv on a 32x32 map, compute-bound 3x3 convs on 8x8, a Dense head."""
    inp = keras.Input((32, 32, 16), name="image")
    x = keras.layers.Conv2D(128, 1, activation="relu", name="expand")(inp)
    x = keras.layers.Conv2D(64, 3, strides=4, padding="same", activation="relu", name="down")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="mid")(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="wide")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(96, name="head")(x)
    model = keras.Model(inp, out, name="mixed")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([_low_rank(rng, kernel.shape, 24, 0.05), rng.normal(0, 0.1, bias.shape).astype("float32")])
    return model


def _totals(plan: Any) -> tuple[int, float, float]:
    """(params, estimated latency, summed loss) of the plan's selected ranks over its planned layers."""
    from edgelr.rewrite.allocate import _loss
    from edgelr.rewrite.cost import latency_estimate

    params = latency = loss = 0.0
    for path, lp in plan.layers.items():
        ranks = plan.selected.get(path)
        rw = lp.rewriter
        if ranks is None:
            p, m = lp.cost_before
            out = rw.outputs(lp.layer, None)
        else:
            p, m = rw.cost(lp.layer, ranks)
            out = rw.outputs(lp.layer, ranks)
            loss += _loss(rw.error_proxy(lp.decomposition, ranks))
        params += p
        latency += latency_estimate(m, out, plan.output_cost)
    return int(params), latency, loss


def test_latency_allocation_stays_within_the_policy_totals(tf_keras: Any) -> None:
    """Same policy: the latency allocation has no more params and loss and a lower estimated latency than
    the per-layer allocation; its report rows say so and the built model has the reported sizes."""
    from edgelr.rewrite import build_factorized, plan_factorization
    from edgelr.rewrite.cost import model_cost

    model = _mixed(tf_keras)
    per_layer = plan_factorization(model, rank_policy="params:0.3", target="rpi4", progress=False)
    latency = plan_factorization(model, rank_policy="params:0.3", target="rpi4", progress=False, allocate="latency")
    p0, t0, l0 = _totals(per_layer)
    p1, t1, l1 = _totals(latency)
    assert p1 <= p0 and l1 <= l0 + 1e-9
    assert t1 < 0.97 * t0  # strictly faster by the estimate on this model
    alloc = latency.allocation
    assert alloc.improved and alloc.budget[0] >= alloc.used[0] and alloc.budget[1] > alloc.used[1]
    assert alloc.loss <= alloc.loss_policy + 1e-9
    assert per_layer.allocation is None
    # every selected rank is on the target's ladder (multiple 8) or the full rank
    for path, ranks in latency.selected.items():
        full = latency.layers[path].full_ranks
        assert all(r % 8 == 0 or r == f for r, f in zip(ranks, full)), (path, ranks)

    new, report = build_factorized(model, latency)
    rows = report.set_index("layer")
    assert all(str(p).endswith("(latency)") for p in rows["policy"])
    kept = rows.loc[rows["skipped"]]
    for reason in kept["reason"]:
        assert "latency allocation" in reason
    # the rebuilt model's parameter count is the plan's
    before, _ = model_cost(model)
    after, _ = model_cost(new)
    assert after == before - int((rows["params_before"] - rows["params_after"]).sum())
    x = np.random.default_rng(2).normal(0, 1, (2, 32, 32, 16)).astype("float32")
    assert np.all(np.isfinite(call(new, x)))


def test_latency_allocation_finds_the_folded_tucker(tf_keras: Any) -> None:
    """The strided 3x3 conv 'down' (128 -> 64, stride 4): the per-layer policy's symmetric Tucker ranks run
    the input factor on the 32x32 map and cost more MACs than the conv, so the layer is left whole. The
    allocation searches both ranks and keeps r_in = C_in, which folds the input factor into the core: a
    strided core conv 128 -> r_out and a 1x1, many times cheaper."""
    from edgelr.rewrite import build_factorized, plan_factorization

    model = _mixed(tf_keras)
    per_layer = plan_factorization(model, rank_policy="params:0.3", target="rpi4", progress=False)
    assert per_layer.layers["down"].skipped and "down" not in per_layer.selected
    latency = plan_factorization(model, rank_policy="params:0.3", target="rpi4", progress=False, allocate="latency")
    r_in, r_out = latency.selected["down"]
    assert r_in == 128 and r_out < 64
    lp = latency.layers["down"]
    assert lp.cost_after[1] < lp.cost_before[1] / 3 and lp.est_speedup > 3
    new, _ = build_factorized(model, latency)
    names = [layer.name for layer in new.layers]
    assert "down/tucker_core" in names and "down/tucker_out" in names and "down/tucker_in" not in names


def test_full_rank_allocation_is_exact(tf_keras: Any) -> None:
    """A budget as large as the model (rank:N at full rank): whatever the allocation picks, a factorized
    layer at full rank or a layer left whole reproduces the original outputs."""
    from edgelr.rewrite import factorize_model

    model = _mixed(tf_keras)
    new, report = factorize_model(model, rank_policy="rank:128", target="rpi4", progress=False,
                                  min_reduction=None, allocate="latency")
    x = np.random.default_rng(3).normal(0, 1, (2, 32, 32, 16)).astype("float32")
    done = report.loc[~report["skipped"]]
    assert (done["rel_error"] < 1e-5).all(), done[["layer", "ranks", "rel_error"]]
    assert rel_diff(call(model, x), call(new, x)) < 1e-4


def test_error_proxies_match_truncations(tf_keras: Any) -> None:
    """SVD proxy = the squared relative error of the truncation; Tucker-2 proxy is 0 at full rank, in
    [0, 1], falls as ranks grow, and bounds the HOSVD error squared from below by at most the HOSVD
    bound's slack (t_in + t_out)."""
    from edgelr.rewrite.registry import get_rewriter
    from edgelr.rewrite.svdmatrix import tail_share

    model = _mixed(tf_keras)
    dense = model.get_layer("head")
    rw = get_rewriter(dense, "svd")
    dec = rw.decompose(dense)
    for r in (8, 24, 64, 96):
        rewrite = rw.materialize(dense, dec, (r,))
        assert rw.error_proxy(dec, (r,)) == pytest.approx(rewrite.rel_error ** 2, abs=1e-6)
    conv = model.get_layer("wide")
    tw = get_rewriter(conv, "tucker2")
    state = tw.decompose(conv)
    assert tw.error_proxy(state, (64, 128)) == pytest.approx(0.0, abs=1e-9)
    previous = 0.0
    for r in (64, 48, 32, 16, 8):
        e = tw.error_proxy(state, (r, 2 * r))
        t_in, t_out = tail_share(state.spectra[0], r), tail_share(state.spectra[1], 2 * r)
        assert 0.0 <= e <= 1.0 and e >= previous - 1e-12
        assert max(t_in, t_out) - 1e-12 <= e <= t_in + t_out + 1e-12
        hosvd = tw.materialize(conv, state, (r, 2 * r), exact=False).rel_error ** 2
        assert hosvd <= t_in + t_out + 1e-6  # the HOSVD bound the proxy approximates
        previous = e


def test_bad_allocate_is_refused(tf_keras: Any) -> None:
    from edgelr.rewrite import factorize_model

    model = _mixed(tf_keras)
    for bad in ("model", "", None, 1):
        with pytest.raises(FactorizeError, match="allocate: got"):
            factorize_model(model, rank_policy="params:0.3", progress=False, allocate=bad)
