"""Whole-model rewrite: Functional with branches, residual adds and a nested model; Sequential; options;
.keras round trip without custom objects; TFLite conversion with builtin ops only, run in ai-edge-litert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgelr.errors import FactorizeError
from tests.keras_util import call, rel_diff

pytestmark = pytest.mark.timeout(600)


def _cnn(keras: Any) -> Any:
    """Branches, a residual add, BN, pooling, a separable conv, a nested Sequential and a head Dense."""
    inner = keras.Sequential([keras.layers.Dense(24, activation="relu", name="inner_dense"),
                              keras.layers.Dense(16, name="inner_out")], name="inner")
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    a = keras.layers.Conv2D(16, 3, padding="same", name="branch_a")(x)
    b = keras.layers.Conv2D(16, 1, name="branch_b")(x)
    x = keras.layers.Add(name="add")([a, b, x])
    x = keras.layers.Conv2D(24, 4, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.SeparableConv2D(24, 3, padding="same", name="sep")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = inner(x)
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    model = keras.Model(inp, out, name="cnn")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name != "inner":
            layer.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") + (1.0 if "variance" in v.name else 0.0)
                               for w, v in zip(layer.get_weights(), layer.weights)])
    return model


def _snapshot(model: Any) -> tuple[str, list[str], list[np.ndarray]]:
    from edgelr.rewrite import walk_layers

    return (json.dumps(model.get_config(), sort_keys=True, default=str), [p for p, _ in walk_layers(model)],
            [w.copy() for w in model.get_weights()])


def _assert_same(snap: tuple, model: Any) -> None:
    config, names, weights = snap
    now = _snapshot(model)
    assert now[0] == config and now[1] == names
    assert len(now[2]) == len(weights) and all(np.array_equal(a, b) for a, b in zip(now[2], weights))


def _full_ranks(plan: Any) -> dict[str, tuple[int, ...]]:
    return {p: lp.full_ranks for p, lp in plan.layers.items() if lp.decomposition is not None and lp.method != "cp"}


def _tflite(model: Any, representative: Any = None) -> bytes:
    from edgelr.tfcompat import tf

    converter = tf().lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf().lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _run_tflite(content: bytes, x: np.ndarray) -> tuple[np.ndarray, set[str]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    ops = {d["op_name"] for d in interp._get_ops_details()}
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]), ops


def _assert_builtin(ops: set[str]) -> None:
    assert ops and not any(op.startswith("Flex") or op == "CUSTOM" for op in ops), ops


def test_functional_full_rank_roundtrip(tf_keras: Any, tmp_path: Path) -> None:
    from edgelr.rewrite import build_factorized, plan_factorization

    model = _cnn(tf_keras)
    snap = _snapshot(model)
    plan = plan_factorization(model, method="auto", rank_policy="rank:1", min_reduction=None, progress=False)
    assert set(plan.candidates()) == {"conv1", "branch_a", "branch_b", "conv2", "sep", "inner/inner_dense",
                                      "inner/inner_out", "head"}
    new, report = build_factorized(model, plan, _full_ranks(plan))
    _assert_same(snap, model)
    assert list(report["layer"]) == ["conv1", "branch_a", "branch_b", "conv2", "sep", "inner/inner_dense",
                                     "inner/inner_out", "head"]
    assert not report["skipped"].any()
    names = [layer.name for layer in new.layers]
    for expected in ("conv1/tucker_in", "conv1/tucker_core", "conv1/tucker_out", "branch_b/svd_in", "bn1", "add",
                     "pool", "inner", "head/svd_out"):
        assert expected in names
    assert [layer.name for layer in new.get_layer("inner").layers] == [
        "inner_dense/svd_in", "inner_dense/svd_out", "inner_out/svd_in", "inner_out/svd_out"]
    # BN passes through with its weights
    for a, b in zip(model.get_layer("bn1").get_weights(), new.get_layer("bn1").get_weights()):
        assert np.array_equal(a, b)
    x = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype("float32")
    expected = call(model, x)
    assert rel_diff(expected, call(new, x)) < 1e-4

    path = tmp_path / "factorized.keras"
    new.save(path)
    loaded = tf_keras.models.load_model(path)  # no custom objects
    assert rel_diff(expected, call(loaded, x)) < 1e-4

    out, ops = _run_tflite(_tflite(new), x[:1])
    _assert_builtin(ops)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= ops
    assert rel_diff(expected[:1], out) < 1e-4


@pytest.mark.slow
def test_cp_and_spatial_models_convert(tf_keras: Any) -> None:
    """CP (with its explicit padding for a strided 'same' conv) and spatial SVD convert with builtin ops."""
    from edgelr.rewrite import factorize_model

    model = _cnn(tf_keras)
    x = np.random.default_rng(2).normal(size=(1, 16, 16, 3)).astype("float32")
    for method in ("cp", "spatial-svd"):
        new, report = factorize_model(model, method=method, rank_policy="rank:8", include=["conv2"],
                                      min_reduction=None, progress=False)
        assert list(report.loc[~report["skipped"], "layer"]) == ["conv2"]
        out, ops = _run_tflite(_tflite(new), x)
        _assert_builtin(ops)
        assert rel_diff(call(new, x), out) < 1e-4


def test_sequential_full_rank(tf_keras: Any) -> None:
    from edgelr.rewrite import build_factorized, plan_factorization

    model = tf_keras.Sequential([
        tf_keras.layers.Conv1D(8, 3, activation="relu", input_shape=(20, 4), name="c1"),
        tf_keras.layers.Conv1D(12, 1, name="c2"),
        tf_keras.layers.Flatten(name="flat"),
        tf_keras.layers.Dense(5, name="d"),
    ], name="seq")
    plan = plan_factorization(model, rank_policy="rank:1", min_reduction=None, progress=False)
    new, _ = build_factorized(model, plan, _full_ranks(plan))
    assert type(new).__name__ == "Sequential"
    assert [layer.name for layer in new.layers] == ["c1/tucker_in", "c1/tucker_core", "c1/tucker_out",
                                                    "c2/svd_in", "c2/svd_out", "flat", "d/svd_in", "d/svd_out"]
    x = np.random.default_rng(3).normal(size=(3, 20, 4)).astype("float32")
    assert rel_diff(call(model, x), call(new, x)) < 1e-4


def test_include_skip_and_errors(tf_keras: Any) -> None:
    from edgelr.rewrite import factorize_model

    model = _cnn(tf_keras)
    _, report = factorize_model(model, rank_policy="rank:4", include=["conv*", "branch_?"], skip=["branch_b"],
                                min_reduction=None, progress=False)
    rewritten = set(report.loc[~report["skipped"], "layer"])
    assert rewritten == {"conv1", "conv2", "branch_a"}
    reasons = dict(zip(report["layer"], report["reason"]))
    assert reasons["branch_b"] == "matched by skip" and reasons["head"] == "not matched by include"
    # qualified names of nested layers match too
    _, report = factorize_model(model, rank_policy="rank:4", include=["inner/*"], min_reduction=None, progress=False)
    assert set(report.loc[~report["skipped"], "layer"]) == {"inner/inner_dense", "inner/inner_out"}

    with pytest.raises(FactorizeError, match="bn1"):
        factorize_model(model, include=["bn1"], progress=False)
    with pytest.raises(FactorizeError, match="matches no layer"):
        factorize_model(model, include=["nothing*"], progress=False)
    with pytest.raises(FactorizeError, match="method"):
        factorize_model(model, method="qr", progress=False)
    with pytest.raises(FactorizeError, match="rank policy"):
        factorize_model(model, rank_policy="ranks:3", progress=False)
    with pytest.raises(FactorizeError, match="min_reduction"):
        factorize_model(model, min_reduction=1.5, progress=False)


def test_min_reduction_leaves_layers_that_do_not_pay(tf_keras: Any) -> None:
    from edgelr.rewrite import factorize_model

    inp = tf_keras.Input((20,))
    out = tf_keras.layers.Dense(12, name="d")(inp)
    model = tf_keras.Model(inp, out)
    # rank 8: 20*8 + 8*12 + 12 = 268 params vs 252: no saving
    new, report = factorize_model(model, rank_policy="rank:8", progress=False)
    assert bool(report.loc[0, "skipped"]) and "params" in report.loc[0, "reason"]
    assert [layer.name for layer in new.layers[1:]] == ["d"]
    assert int(report.loc[0, "params_after"]) == 252
    # rank 4: 20*4 + 4*12 + 12 = 140 params (56%), MACs 128/240 (53%): rewritten at 10%, left at 50%
    new, report = factorize_model(model, rank_policy="rank:4", progress=False)
    assert not report.loc[0, "skipped"] and int(report.loc[0, "params_after"]) == 140 == new.count_params()
    _, report = factorize_model(model, rank_policy="rank:4", min_reduction=0.5, progress=False)
    assert bool(report.loc[0, "skipped"])


def test_target_rounds_ranks_and_sets_defaults(tf_keras: Any) -> None:
    from edgelr.rewrite import factorize_model
    from edgelr.targets import get_target

    inp = tf_keras.Input((64,))
    out = tf_keras.layers.Dense(64, name="d")(inp)
    model = tf_keras.Model(inp, out)
    multiple = get_target("rpi4").rank_multiple
    _, report = factorize_model(model, rank_policy="rank:3", target="rpi4", progress=False)
    assert report.loc[0, "ranks"] == (multiple,)
    _, report = factorize_model(model, rank_policy="rank:3", target=get_target("rpi4"), progress=False)
    assert report.loc[0, "ranks"] == (multiple,)


def test_progress_goes_to_stderr(tf_keras: Any, capsys: Any) -> None:
    from edgelr.rewrite import factorize_model

    inp = tf_keras.Input((64,))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(64, name="d")(inp))
    factorize_model(model, rank_policy="rank:8", progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "rewrite" in captured.err


def test_plan_reuse_across_ranks(tf_keras: Any) -> None:
    """One plan, several rank sets: each build matches the count it promises and the error falls with rank."""
    from edgelr.rewrite import build_factorized, plan_factorization

    model = _cnn(tf_keras)
    plan = plan_factorization(model, rank_policy="params:0.5", min_reduction=None, progress=False)
    errors = []
    for r in (2, 4, 8):
        new, report = build_factorized(model, plan, {"conv2": (r, r), "head": None}, exact=False)
        row = report.set_index("layer").loc["conv2"]
        assert row["ranks"] == (r, r)
        assert int(row["params_after"]) == 16 * r + 16 * r * r + r * 24 + 24
        assert bool(report.set_index("layer").loc["head", "skipped"])
        errors.append(float(row["rel_error"]))
    assert errors[0] > errors[1] > errors[2]
    with pytest.raises(FactorizeError, match="not a factorizable layer"):
        build_factorized(model, plan, {"bn1": 3})


@pytest.mark.slow
def test_recurrent_model_tflite(tf_keras: Any, tmp_path: Path) -> None:
    """Embedding -> Conv1D -> LSTM (input projection, fused op kept) -> TimeDistributed(Dense) -> GRU (low-rank
    recurrent cell) -> Dense, batch 1: full-rank rewrite, .keras round trip, TFLite with builtin ops."""
    from edgelr.rewrite import build_factorized, plan_factorization

    inp = tf_keras.Input((12,), batch_size=1, dtype="int32")
    x = tf_keras.layers.Embedding(40, 16, name="emb")(inp)
    x = tf_keras.layers.Conv1D(12, 3, padding="same", activation="relu", name="c1d")(x)
    x = tf_keras.layers.LSTM(16, return_sequences=True, name="lstm")(x)
    x = tf_keras.layers.TimeDistributed(tf_keras.layers.Dense(10, activation="tanh"), name="td")(x)
    x = tf_keras.layers.GRU(12, name="gru")(x)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(4, name="head")(x))
    plan = plan_factorization(model, method="svd-recurrent", rank_policy="rank:1", min_reduction=None,
                              include=["gru"], progress=False)
    new, _ = build_factorized(model, plan, {"gru": (10, 12)})
    plan_b = plan_factorization(new, method="svd", rank_policy="rank:1", min_reduction=None,
                                include=["lstm", "emb", "c1d", "td"], progress=False)
    new, _ = build_factorized(new, plan_b, {"lstm": 12, "emb": 16, "c1d": 12, "td": 10})
    assert [layer.name for layer in new.layers[1:]] == ["emb/svd_in", "emb/svd_out", "c1d/svd_in", "c1d/svd_out",
                                                        "lstm/svd_in", "lstm", "td/svd_in", "td/svd_out", "gru",
                                                        "head"]
    assert type(new.get_layer("gru").cell).__name__ == "LowRankGRUCell"
    x = np.random.default_rng(5).integers(0, 40, size=(1, 12)).astype("int32")
    expected = call(model, x)
    assert rel_diff(expected, call(new, x)) < 1e-4
    path = tmp_path / "rnn.keras"
    new.save(path)
    loaded = tf_keras.models.load_model(path)  # the cell is registered, no custom_objects needed
    assert rel_diff(expected, call(loaded, x)) < 1e-4
    out, ops = _run_tflite(_tflite(new), x)
    _assert_builtin(ops)
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and "WHILE" in ops
    assert rel_diff(expected, out) < 1e-4


def test_subclassed_model_rejected(tf_keras: Any) -> None:
    from edgelr.rewrite import factorize_model

    class Net(tf_keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.d = tf_keras.layers.Dense(4)

        def call(self, x: Any) -> Any:
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(FactorizeError, match="subclassed"):
        factorize_model(net, progress=False)


def test_shared_layer_and_nested_functional(tf_keras: Any) -> None:
    """A Dense called twice (two nodes) and a nested Functional model called on both branches."""
    from edgelr.rewrite import build_factorized, plan_factorization

    sub_in = tf_keras.Input((12,))
    sub = tf_keras.Model(sub_in, tf_keras.layers.Dense(6, activation="tanh", name="sub_dense")(sub_in), name="sub")
    a, b = tf_keras.Input((10,), name="a"), tf_keras.Input((10,), name="b")
    shared = tf_keras.layers.Dense(12, activation="relu", name="shared")
    ya, yb = sub(shared(a)), sub(shared(b))
    out = tf_keras.layers.Dense(3, name="head")(tf_keras.layers.Concatenate(name="cat")([ya, yb]))
    model = tf_keras.Model([a, b], [out, ya], name="twin")
    plan = plan_factorization(model, rank_policy="rank:1", min_reduction=None, progress=False)
    assert set(plan.candidates()) == {"shared", "sub/sub_dense", "head"}
    new, _ = build_factorized(model, plan, _full_ranks(plan))
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=(4, 10)).astype("float32") for _ in range(2)]
    for before, after in zip(model(xs), new(xs)):
        assert rel_diff(np.asarray(before), np.asarray(after)) < 1e-4
    assert [layer.name for layer in new.get_layer("sub").layers[1:]] == ["sub_dense/svd_in", "sub_dense/svd_out"]


def _two_dense(keras: Any) -> Any:
    inp = keras.Input((64,))
    h = keras.layers.Dense(48, activation="relu", name="fc1")(inp)
    return keras.Model(inp, keras.layers.Dense(32, name="fc2")(h))


def test_layer_policies_override_the_global_policy_per_layer(tf_keras: Any) -> None:
    from edgelr.rewrite import factorize_model, plan_factorization

    tf_keras.utils.set_random_seed(0)
    model = _two_dense(tf_keras)
    # what each policy picks for its layer alone
    alone_fc1 = plan_factorization(model, rank_policy="params:0.2", include=["fc1"], min_reduction=None,
                                   progress=False).layers["fc1"].ranks
    alone_fc2 = plan_factorization(model, rank_policy="macs:0.5", include=["fc2"], min_reduction=None,
                                   progress=False).layers["fc2"].ranks
    assert alone_fc1 != alone_fc2  # the test would not tell the policies apart otherwise

    plan = plan_factorization(model, rank_policy="macs:0.5", layer_policies={"fc1": "params:0.2"},
                              min_reduction=None, progress=False)
    assert plan.layers["fc1"].ranks == alone_fc1 and plan.layers["fc2"].ranks == alone_fc2
    assert plan.rank_policy == "macs:0.5" and plan.layer_policies == {"fc1": "params:0.2"}
    new, report = factorize_model(model, rank_policy="macs:0.5", layer_policies={"fc1": "params:0.2"},
                                  min_reduction=None, progress=False)
    rows = report.set_index("layer")
    assert rows.loc["fc1", "ranks"] == alone_fc1 and rows.loc["fc2", "ranks"] == alone_fc2
    assert rows.loc["fc1", "policy"] == "params:0.2" and rows.loc["fc2", "policy"] == "macs:0.5"
    # params:0.2 keeps at most a fifth of fc1's weights
    assert rows.loc["fc1", "params_after"] <= 0.2 * rows.loc["fc1", "params_before"]
    assert new.count_params() == int(report["params_after"].sum())


def test_layer_policies_first_match_wins_and_qualified_names(tf_keras: Any) -> None:
    from edgelr.rewrite import factorize_model

    model = _two_dense(tf_keras)
    _, report = factorize_model(model, rank_policy="rank:8", layer_policies={"fc1": "rank:2", "fc*": "rank:3"},
                                min_reduction=None, progress=False)
    assert dict(zip(report["layer"], report["ranks"])) == {"fc1": (2,), "fc2": (3,)}
    assert list(report["policy"]) == ["rank:2", "rank:3"]
    # nested layers match by qualified name, like include/skip
    _, report = factorize_model(_cnn(tf_keras), rank_policy="rank:4", layer_policies={"inner/*": "rank:2"},
                                min_reduction=None, progress=False)
    policy = dict(zip(report["layer"], report["policy"]))
    assert policy["inner/inner_dense"] == policy["inner/inner_out"] == "rank:2"
    assert policy["conv1"] == "rank:4"
    # layers skipped before rank selection have no policy
    _, report = factorize_model(model, rank_policy="rank:4", skip=["fc2"], layer_policies={"fc*": "rank:2"},
                                min_reduction=None, progress=False)
    assert dict(zip(report["layer"], report["policy"])) == {"fc1": "rank:2", "fc2": ""}


def test_layer_policies_errors(tf_keras: Any) -> None:
    from edgelr.rewrite import check_layer_policies, factorize_model

    model = _two_dense(tf_keras)
    with pytest.raises(FactorizeError, match=r"layer_policies\['fc1'\].*half"):
        factorize_model(model, layer_policies={"fc1": "half"}, progress=False)
    with pytest.raises(FactorizeError, match="'conv\\*' matches no factorizable layer.*fc1, fc2"):
        factorize_model(model, layer_policies={"fc1": "rank:2", "conv*": "rank:2"}, progress=False)
    with pytest.raises(FactorizeError, match="mapping"):
        factorize_model(model, layer_policies=["fc1=rank:2"], progress=False)
    assert check_layer_policies({"fc1": " Params:0.20 ", "fc2": "vbmf"}) == {"fc1": "params:0.2", "fc2": "vbmf"}
    assert check_layer_policies(None) == {}


def _expand_reduce(keras: Any) -> Any:
    inp = keras.Input((64,))
    h = keras.layers.Dense(256, activation="relu", name="expand")(inp)
    out = keras.layers.Dense(64, name="reduce")(h)
    return keras.Model(inp, out)


def test_est_speedup_counts_written_elements(tf_keras: Any) -> None:
    """est_speedup = (MACs + c * outputs) before / after, with c = 16 for an int8 target; hand-computed."""
    from edgelr.rewrite import factorize_model
    from edgelr.rewrite.cost import OUTPUT_COST, latency_estimate

    model = _expand_reduce(tf_keras)
    _, report = factorize_model(model, rank_policy="rank:16", target="rpi4", progress=False)
    rows = report.set_index("layer")
    c = OUTPUT_COST["int8"]
    assert c == 16.0
    # expand 64 -> 16 -> 256: MACs 16384 -> 5120, elements written 256 -> 16 + 256
    assert rows.loc["expand", "est_speedup"] == pytest.approx(
        latency_estimate(64 * 256, 256, c) / latency_estimate(64 * 16 + 16 * 256, 16 + 256, c))
    assert rows.loc["expand", "est_speedup"] == pytest.approx(20480 / 9472)
    # reduce 256 -> 16 -> 64: same MACs, fewer elements written -> closer to its MAC reduction
    assert rows.loc["reduce", "est_speedup"] == pytest.approx((16384 + 16 * 64) / (5120 + 16 * 80))
    # a float target charges 2 MAC-equivalents per element; a target's own output_cost wins
    import dataclasses

    from edgelr.targets import get_target

    for target, cost in ((dataclasses.replace(get_target("rpi4"), quantization="none"), 2.0),
                         (dataclasses.replace(get_target("rpi4"), output_cost=4.0), 4.0)):
        _, rep = factorize_model(model, rank_policy="rank:16", target=target, progress=False)
        assert rep.set_index("layer").loc["expand", "est_speedup"] == pytest.approx(
            (16384 + cost * 256) / (5120 + cost * 272))


def test_min_efficiency_leaves_output_bound_layers(tf_keras: Any) -> None:
    """The expanding Dense (est. x2.16 for x3.2 fewer MACs) is left as is at min_efficiency 0.8, the
    reducing one (x2.72) is factorized; the reason names both figures."""
    from edgelr.rewrite import factorize_model

    model = _expand_reduce(tf_keras)
    new, report = factorize_model(model, rank_policy="rank:16", target="rpi4", progress=False, min_efficiency=0.8)
    rows = report.set_index("layer")
    assert bool(rows.loc["expand", "skipped"]) and not bool(rows.loc["reduce", "skipped"])
    assert "estimated speed-up x2.16" in rows.loc["expand", "reason"]
    assert "MAC reduction x3.20" in rows.loc["expand", "reason"]
    assert [layer.name for layer in new.layers[1:]] == ["expand", "reduce/svd_in", "reduce/svd_out"]
    _, report_off = factorize_model(model, rank_policy="rank:16", target="rpi4", progress=False)
    assert not report_off["skipped"].any()
    for bad in (0, 1.5, "high", True):
        with pytest.raises(FactorizeError, match="min_efficiency"):
            factorize_model(model, rank_policy="rank:16", progress=False, min_efficiency=bad)
