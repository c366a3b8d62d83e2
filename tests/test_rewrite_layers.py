"""Every rewriter at full rank reproduces its layer; parameter counts are exact (computed by hand here)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from edgelr.errors import FactorizeError
from tests.keras_util import call, rel_diff

pytestmark = pytest.mark.timeout(300)


def _single(keras: Any, shape: tuple[int, ...], make: Callable[[], Any], dtype: str = "float32",
            batch_size: int | None = None) -> Any:
    inp = keras.Input(shape, dtype=dtype, batch_size=batch_size)
    out = make()(inp)
    return keras.Model(inp, out)


def _randomize(model: Any, seed: int = 0) -> None:
    """Give every weight (biases too) random non-zero values so bias/activation handling is tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in layer.get_weights()])


def _full_rank_rewrite(model: Any, layer: str, method: str) -> tuple[Any, Any]:
    from edgelr.rewrite import build_factorized, plan_factorization

    plan = plan_factorization(model, method=method, rank_policy="rank:1", min_reduction=None, progress=False)
    lp = plan.layers[layer]
    assert lp.method == method
    return build_factorized(model, plan, {layer: lp.full_ranks})


def _inputs(model: Any, n: int = 3, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = tuple(model.inputs[0].shape)
    batch = shape[0] or n
    if model.inputs[0].dtype.name.startswith("int"):
        return rng.integers(0, 50, size=(batch,) + shape[1:]).astype("int32")
    return rng.normal(size=(batch,) + shape[1:]).astype("float32")


# (id, input shape, layer factory, method, expected layer names after the rewrite, expected params)
CASES: list[tuple[str, tuple[int, ...], Callable[[Any], Any], str, list[str], int]] = [
    ("dense", (20,), lambda k: k.layers.Dense(12, activation="relu", name="L"), "svd",
     ["L/svd_in", "L/svd_out"], 20 * 12 + 12 * 12 + 12),
    ("dense-3d", (5, 20), lambda k: k.layers.Dense(30, use_bias=False, name="L"), "svd",
     ["L/svd_in", "L/svd_out"], 20 * 20 + 20 * 30),
    ("timedistributed", (6, 20), lambda k: k.layers.TimeDistributed(k.layers.Dense(12, activation="tanh"), name="L"),
     "svd", ["L/svd_in", "L/svd_out"], 20 * 12 + 12 * 12 + 12),
    ("tucker2-same-stride2", (9, 9, 6), lambda k: k.layers.Conv2D(10, 3, strides=2, padding="same",
                                                                  activation="relu", name="L"),
     "tucker2", ["L/tucker_in", "L/tucker_core", "L/tucker_out"], 6 * 6 + 9 * 6 * 10 + 10 * 10 + 10),
    ("tucker2-valid-dilated-nobias", (12, 12, 6),
     lambda k: k.layers.Conv2D(10, (3, 2), dilation_rate=2, use_bias=False, name="L"),
     "tucker2", ["L/tucker_in", "L/tucker_core", "L/tucker_out"], 6 * 6 + 6 * 6 * 10 + 10 * 10),
    ("spatial-even-same-stride2", (11, 10, 6), lambda k: k.layers.Conv2D(10, 4, strides=2, padding="same", name="L"),
     "spatial-svd", ["L/spatial_vertical", "L/spatial_horizontal"], 4 * 6 * 24 + 4 * 24 * 10 + 10),
    ("spatial-valid-stride-hw", (11, 12, 5), lambda k: k.layers.Conv2D(7, (3, 5), strides=(2, 3), name="L",
                                                                      activation="sigmoid"),
     "spatial-svd", ["L/spatial_vertical", "L/spatial_horizontal"], 3 * 5 * 15 + 5 * 15 * 7 + 7),
    ("conv1x1-stride2", (9, 9, 12), lambda k: k.layers.Conv2D(8, 1, strides=2, padding="same", name="L"),
     "svd", ["L/svd_in", "L/svd_out"], 12 * 8 + 8 * 8 + 8),
    ("conv1d-tucker2-causal", (20, 6), lambda k: k.layers.Conv1D(9, 3, padding="causal", dilation_rate=2, name="L"),
     "tucker2", ["L/tucker_in", "L/tucker_core", "L/tucker_out"], 6 * 6 + 3 * 6 * 9 + 9 * 9 + 9),
    ("conv1d-svd-stride", (20, 6), lambda k: k.layers.Conv1D(9, 3, strides=2, padding="same", name="L"),
     "svd", ["L/svd_in", "L/svd_out"], 3 * 6 * 9 + 9 * 9 + 9),
    ("separable", (10, 10, 4), lambda k: k.layers.SeparableConv2D(6, 3, strides=2, depth_multiplier=2,
                                                                  padding="same", activation="relu", name="L"),
     "svd", ["L/depthwise", "L/svd_in", "L/svd_out"], 3 * 3 * 4 * 2 + 8 * 6 + 6 * 6 + 6),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_full_rank_rewrite_reproduces_layer(tf_keras: Any, case: tuple) -> None:
    _, shape, factory, method, names, params = case
    model = _single(tf_keras, shape, lambda: factory(tf_keras))
    _randomize(model)
    new, report = _full_rank_rewrite(model, "L", method)
    assert [layer.name for layer in new.layers[1:]] == names
    assert new.count_params() == params
    assert int(report.loc[0, "params_after"]) == params
    # the rewriter's cost model agrees with layer_cost on the layers it built
    from edgelr.rewrite import layer_cost

    assert sum(layer_cost(layer)[1] for layer in new.layers[1:]) == int(report.loc[0, "macs_after"])
    x = _inputs(model)
    assert rel_diff(call(model, x), call(new, x)) < 1e-4


def test_embedding_full_rank(tf_keras: Any) -> None:
    model = _single(tf_keras, (7,), lambda: tf_keras.layers.Embedding(50, 16, name="L"), dtype="int32")
    new, _ = _full_rank_rewrite(model, "L", "svd")
    assert [layer.name for layer in new.layers[1:]] == ["L/svd_in", "L/svd_out"]
    assert new.count_params() == 50 * 16 + 16 * 16
    x = _inputs(model)
    assert rel_diff(call(model, x), call(new, x)) < 1e-4


def test_cp_chain_equals_conv_with_cp_kernel(tf_keras: Any) -> None:
    """The CP chain (1x1, depthwise kh x 1, depthwise 1 x kw, 1x1) equals a conv whose kernel is the CP
    reconstruction, for even kernels, 'same' padding, strides and dilation."""
    from edgelr.rewrite.conv import ConvCP
    from edgelr.rewrite import rebuild_with

    rng = np.random.default_rng(3)
    for kwargs, padded in (({"kernel_size": 4, "strides": 2, "padding": "same"}, True),
                           ({"kernel_size": 3, "strides": 2, "padding": "same"}, True),
                           ({"kernel_size": (3, 5), "strides": (1, 2), "padding": "valid"}, False),
                           ({"kernel_size": (3, 4), "strides": (2, 3), "padding": "same"}, True),
                           ({"kernel_size": 3, "dilation_rate": (2, 1), "padding": "same"}, False),
                           ({"kernel_size": 3, "padding": "valid"}, False)):
        model = _single(tf_keras, (13, 12, 5), lambda: tf_keras.layers.Conv2D(7, activation="relu", name="L", **kwargs))
        kh, kw = model.layers[1].kernel_size
        r = 6
        factors = type("F", (), dict(first=rng.normal(size=(5, r)), vertical=rng.normal(size=(kh, r)),
                                      horizontal=rng.normal(size=(kw, r)), last=rng.normal(size=(r, 7)),
                                      rel_error=0.0))
        kernel = np.einsum("cr,hr,wr,ro->hwco", factors.first, factors.vertical, factors.horizontal, factors.last)
        model.layers[1].set_weights([kernel.astype("float32"), rng.normal(size=7).astype("float32")])
        rw = ConvCP().from_factors(model.layers[1], factors)
        new = rebuild_with(model, {"L": rw})
        names = ["L/cp_in"] + (["L/cp_pad"] if padded else []) + ["L/cp_vertical", "L/cp_horizontal", "L/cp_out"]
        assert [layer.name for layer in new.layers[1:]] == names
        assert new.count_params() == 5 * r + kh * r + kw * r + r * 7 + 7 == rw.params
        from edgelr.rewrite import layer_cost

        assert sum(layer_cost(layer)[1] for layer in new.layers[1:]) == rw.macs, kwargs
        x = _inputs(model)
        assert rel_diff(call(model, x), call(new, x)) < 1e-4, kwargs


def test_cp_decomposition_recovers_cp_kernel(tf_keras: Any) -> None:
    from edgelr.rewrite import build_factorized, plan_factorization

    rng = np.random.default_rng(4)
    model = _single(tf_keras, (8, 8, 6), lambda: tf_keras.layers.Conv2D(8, 3, padding="same", name="L"))
    kernel = np.einsum("cr,hr,wr,ro->hwco", rng.normal(size=(6, 4)), rng.normal(size=(3, 4)),
                       rng.normal(size=(3, 4)), rng.normal(size=(4, 8)))
    model.layers[1].set_weights([kernel.astype("float32"), np.zeros(8, "float32")])
    plan = plan_factorization(model, method="cp", rank_policy="rank:4", min_reduction=None, progress=False)
    new, report = build_factorized(model, plan)
    assert report.loc[0, "ranks"] == (4,)
    assert report.loc[0, "rel_error"] < 1e-3
    x = _inputs(model)
    assert rel_diff(call(model, x), call(new, x)) < 1e-3


RNN_CASES = [
    ("lstm-svd", lambda k: k.layers.LSTM(12, return_sequences=True, name="L"), "svd", 4,
     ["L/svd_in", "L"], lambda d, h, r: d * r + r * 4 * h + h * 4 * h + 4 * h),
    ("gru-svd", lambda k: k.layers.GRU(12, name="L"), "svd", 3,
     ["L/svd_in", "L"], lambda d, h, r: d * r + r * 3 * h + h * 3 * h + 2 * 3 * h),
    ("lstm-lowrank", lambda k: k.layers.LSTM(12, return_sequences=True, name="L"), "svd-recurrent", 4,
     ["L"], lambda d, h, r: d * 4 * h + h * h + h * 4 * h + 4 * h),
    ("gru-lowrank", lambda k: k.layers.GRU(12, name="L"), "svd-recurrent", 3,
     ["L"], lambda d, h, r: d * 3 * h + h * h + h * 3 * h + 2 * 3 * h),
]


@pytest.mark.parametrize("case", RNN_CASES, ids=[c[0] for c in RNN_CASES])
def test_recurrent_full_rank(tf_keras: Any, case: tuple) -> None:
    _, factory, method, _, names, params = case
    d, h = 10, 12
    model = _single(tf_keras, (7, d), lambda: factory(tf_keras))
    _randomize(model)
    new, _ = _full_rank_rewrite(model, "L", method)
    assert [layer.name for layer in new.layers[1:]] == names
    assert new.count_params() == params(d, h, d)
    x = _inputs(model)
    assert rel_diff(call(model, x), call(new, x)) < 1e-4


def test_recurrent_lowrank_both_kernels(tf_keras: Any) -> None:
    from edgelr.rewrite import build_factorized, plan_factorization

    d, h, r_in, r_rec = 10, 12, 4, 5
    model = _single(tf_keras, (7, d), lambda: tf_keras.layers.LSTM(h, name="L"))
    plan = plan_factorization(model, method="svd-recurrent", rank_policy="rank:1", min_reduction=None, progress=False)
    new, report = build_factorized(model, plan, {"L": (r_in, r_rec)})
    assert [layer.name for layer in new.layers[1:]] == ["L/svd_in", "L"]
    assert new.count_params() == d * r_in + r_in * 4 * h + h * r_rec + r_rec * 4 * h + 4 * h
    assert report.loc[0, "ranks"] == (r_in, r_rec)
    assert 0 < report.loc[0, "rel_error"] < 1


def test_rank_changes_param_count_exactly(tf_keras: Any) -> None:
    from edgelr.rewrite import build_factorized, plan_factorization

    model = _single(tf_keras, (9, 9, 6), lambda: tf_keras.layers.Conv2D(10, 3, name="L"))
    plan = plan_factorization(model, method="tucker2", rank_policy="rank:1", min_reduction=None, progress=False)
    for ranks in [(2, 3), (5, 7)]:
        new, report = build_factorized(model, plan, {"L": ranks}, exact=False)
        r_in, r_out = ranks
        expected = 6 * r_in + 9 * r_in * r_out + r_out * 10 + 10
        assert new.count_params() == expected == int(report.loc[0, "params_after"])
        # MACs: 1x1 at the 9x9 input, the core and last 1x1 at the 7x7 output
        assert int(report.loc[0, "macs_after"]) == 81 * 6 * r_in + 49 * (9 * r_in * r_out + r_out * 10)


@pytest.mark.parametrize("bad", [0, (0, 3), (7, 3), (2, 2, 2), "x", -1])
def test_bad_rank_raises(tf_keras: Any, bad: Any) -> None:
    from edgelr.rewrite import build_factorized, plan_factorization

    model = _single(tf_keras, (9, 9, 6), lambda: tf_keras.layers.Conv2D(10, 3, name="L"))
    plan = plan_factorization(model, method="tucker2", rank_policy="rank:1", min_reduction=None, progress=False)
    with pytest.raises(FactorizeError):
        build_factorized(model, plan, {"L": bad})


def test_layer_cost_counts(tf_keras: Any) -> None:
    from edgelr.rewrite import applicable_methods, layer_cost

    inp = tf_keras.Input((16, 16, 3))
    x = tf_keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c")(inp)
    x = tf_keras.layers.BatchNormalization(name="bn")(x)
    x = tf_keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = tf_keras.layers.Conv2D(4, 1, name="pw")(x)
    x = tf_keras.layers.Reshape((64, 4))(x)
    x = tf_keras.layers.LSTM(5, return_sequences=True, name="lstm")(x)
    x = tf_keras.layers.GRU(6, name="gru")(x)
    out = tf_keras.layers.Dense(3, name="d")(x)
    model = tf_keras.Model(inp, out)
    get = model.get_layer
    assert layer_cost(get("c")) == (3 * 3 * 3 * 8 + 8, 8 * 8 * 9 * 3 * 8)
    assert layer_cost(get("bn")) == (4 * 8, 8 * 8 * 8)
    assert layer_cost(get("dw")) == (9 * 8 + 8, 8 * 8 * 9 * 8)
    assert layer_cost(get("pw")) == (8 * 4 + 4, 64 * 8 * 4)
    assert layer_cost(get("lstm")) == (4 * 5 * (4 + 5) + 4 * 5, 64 * 4 * 5 * (4 + 5))
    assert layer_cost(get("gru")) == (3 * 6 * (5 + 6) + 2 * 3 * 6, 64 * 3 * 6 * (5 + 6))
    assert layer_cost(get("d")) == (6 * 3 + 3, 18)
    assert applicable_methods(get("c")) == ["tucker2", "cp", "spatial-svd"]
    assert applicable_methods(get("pw")) == ["svd"]
    assert applicable_methods(get("bn")) == []
    assert applicable_methods(get("lstm")) == ["svd", "svd-recurrent", "tensor3"]
    assert applicable_methods(get("d")) == ["svd"]


def test_recurrent_unroll_option(tf_keras: Any) -> None:
    from edgelr.rewrite import factorize_model

    model = _single(tf_keras, (6, 10), lambda: tf_keras.layers.LSTM(32, name="L"))
    new, report = factorize_model(model, method="svd-recurrent", rank_policy="rank:8", recurrent_unroll=True,
                                  progress=False)
    assert not report.loc[0, "skipped"]
    assert new.get_layer("L").unroll is True and model.get_layer("L").unroll is False
    assert new.get_layer("L").get_config()["unroll"] is True


@pytest.mark.parametrize("shape,make,ranks,names,params", [
    # RGB-like stem: R3 = C_in = 3, the input 1x1 is folded into the core
    ((9, 9, 3), lambda k: k.layers.Conv2D(10, 3, strides=2, padding="same", activation="relu", name="L"), (3, 6),
     ["L/tucker_core", "L/tucker_out"], 9 * 3 * 6 + 6 * 10 + 10),
    # R4 = C_out: the output 1x1 is folded, the core carries the bias and activation
    ((8, 8, 12), lambda k: k.layers.Conv2D(4, 3, padding="valid", activation="tanh", name="L"), (6, 4),
     ["L/tucker_in", "L/tucker_core"], 12 * 6 + 9 * 6 * 4 + 4),
], ids=["fold-in", "fold-out"])
def test_tucker2_square_factor_is_folded(tf_keras: Any, shape: tuple, make: Callable, ranks: tuple, names: list,
                                         params: int) -> None:
    """A Tucker factor whose rank equals its channel count is folded into the core: one node fewer, the
    same function as a conv with the Tucker reconstruction of the kernel, exact parameter count."""
    from edgelr.factorize import tucker2
    from edgelr.rewrite import build_factorized, layer_cost, plan_factorization
    from edgelr.rewrite.conv import HOOI_SWEEPS

    model = _single(tf_keras, shape, lambda: make(tf_keras))
    _randomize(model)
    plan = plan_factorization(model, method="tucker2", rank_policy="rank:1", min_reduction=None, progress=False)
    new, report = build_factorized(model, plan, {"L": ranks})
    assert [layer.name for layer in new.layers[1:]] == names
    assert new.count_params() == params == int(report.loc[0, "params_after"])
    assert sum(layer_cost(layer)[1] for layer in new.layers[1:]) == int(report.loc[0, "macs_after"])
    # reference: the original conv with its kernel replaced by the Tucker-2 reconstruction
    layer = model.get_layer("L")
    kernel, bias = layer.get_weights()
    res = tucker2(kernel.astype(np.float64), ranks, max_iter=HOOI_SWEEPS)
    approx = np.einsum("ap,ijpq,qb->ijab", res.first, res.core, res.last).astype(np.float32)
    ref = _single(tf_keras, shape, lambda: make(tf_keras))
    ref.get_layer("L").set_weights([approx, bias])
    x = _inputs(model)
    assert rel_diff(call(ref, x), call(new, x)) < 1e-4
