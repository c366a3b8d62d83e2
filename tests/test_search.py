"""The rank search (edgelr.compress.search): which candidates it tries, in which order, what it returns,
its label-free signal, and seeding. The search runs on a real tiny model with a real plan and real
candidate measurements; only the expensive trial (fine-tune, QAT, conversion, validation) is replaced by a
stand-in whose validated drop is a known function of the candidate's MACs."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgelr.compress.search import MIN_GAIN, next_trial, search_inputs

BUDGET, SLACK = 1.0, 4.0


def cand(label: str, macs: int, signal: float, tflite_drop: float | None = None) -> dict[str, Any]:
    return {"label": label, "macs": macs, "val_drop": signal, "tried": tflite_drop is not None,
            "tflite_drop": tflite_drop}


def test_backing_off_tries_a_candidate_that_validated_within_budget_first() -> None:
    """The demo case: after 5.2x failed, the 4.04x candidate whose signal is within the budget is tried
    before the less compressed 3.06x one with a smaller signal."""
    c = [cand("5.2x", 100, 0.9, tflite_drop=1.8), cand("4.04x", 130, 0.95), cand("3.06x", 170, 0.4)]
    assert next_trial(c, BUDGET, SLACK)["label"] == "4.04x"


def test_a_candidate_more_compressed_than_a_failure_with_no_better_signal_is_skipped() -> None:
    c = [cand("failed", 100, 1.5, tflite_drop=3.0), cand("worse", 90, 2.0), cand("near", 103, 1.6),
         cand("better-signal", 95, 0.5), cand("safe", 200, 3.0)]
    assert next_trial(c, BUDGET, SLACK)["label"] == "better-signal"
    c[3]["tried"], c[3]["tflite_drop"] = True, 2.0
    assert next_trial(c, BUDGET, SLACK)["label"] == "safe"  # 'worse' and 'near' are predicted to fail


def test_after_a_met_budget_only_clearly_more_compressed_candidates_are_tried() -> None:
    c = [cand("met", 100, 0.5, tflite_drop=0.2), cand("marginal", int(100 * (1 - MIN_GAIN / 2)), 0.1),
         cand("less", 150, 0.0), cand("more", 80, 2.5), cand("far", 60, 9.0)]
    assert next_trial(c, BUDGET, SLACK)["label"] == "more"  # within the slack; 'far' is beyond it
    c[3]["tried"], c[3]["tflite_drop"] = True, 1.5
    assert next_trial(c, BUDGET, SLACK) is None  # nothing left worth a trial: stop with 'met'


def test_nothing_within_the_slack_backs_off_by_signal() -> None:
    c = [cand("failed", 100, 6.0, tflite_drop=5.0), cand("a", 120, 5.5), cand("b", 300, 4.5)]
    assert next_trial(c, BUDGET, SLACK)["label"] == "b"


def test_search_inputs_top_up_a_small_validation_split_with_training_inputs() -> None:
    """67 training samples with a 7-sample validation split: the signal is measured on all 67 inputs."""
    x_val, x_train = np.zeros((7, 3)), np.arange(60 * 3, dtype=np.float32).reshape(60, 3) + 1
    xs, from_train = search_inputs(x_val, x_train, 1000, seed=0)
    assert xs.shape == (67, 3) and from_train == 60 and xs.dtype == np.float32
    xs2, _ = search_inputs(x_val, np.arange(600 * 3, dtype=np.float32).reshape(600, 3), 100, seed=5)
    again, _ = search_inputs(x_val, np.arange(600 * 3, dtype=np.float32).reshape(600, 3), 100, seed=5)
    assert len(xs2) == 100 and np.array_equal(xs2, again)  # a seeded draw
    big, n = search_inputs(np.ones((50, 3)), x_train, 20, seed=0)
    assert len(big) == 20 and n == 0  # a large enough validation split is used alone


def test_the_signal_sees_what_seven_labels_cannot() -> None:
    """Two candidates that both score 100 % on 7 labelled samples differ in agreement on more inputs."""
    from edgelr.compress.evaluate import Task, fidelity_drop, score

    task = Task(True, 3, "probs")
    ref = np.eye(3)[np.arange(67) % 3]
    good, bad = ref.copy(), ref.copy()
    bad[10:30] = np.eye(3)[(np.arange(10, 30) + 1) % 3]
    labels = np.arange(7) % 3
    assert score(good[:7], labels, task) == score(bad[:7], labels, task) == 100.0
    assert fidelity_drop(good, ref, task) == 0.0
    assert fidelity_drop(bad, ref, task) == pytest.approx(100 * 20 / 67)
    regression = Task(False, None, "values")
    assert fidelity_drop(ref + 0.5, ref, regression) == pytest.approx(0.25)


@pytest.fixture(scope="module")
def tiny(tf_keras: ModuleType) -> tuple[Any, Any]:
    from edgelr.compress.attempt import set_seeds

    set_seeds(0)
    k = tf_keras
    inp = k.Input(shape=(32,))
    x = k.layers.Dense(96, activation="relu", name="fc1")(inp)
    x = k.layers.Dense(96, activation="relu", name="fc2")(x)
    model = k.Model(inp, k.layers.Dense(10, activation="softmax", name="out")(x))
    rng = np.random.default_rng(0)
    for name in ("fc1", "fc2"):  # rank-8 kernels (+ a little noise), like trained weights' decaying spectra
        kernel, bias = model.get_layer(name).get_weights()
        low = rng.normal(size=(kernel.shape[0], 8)) @ rng.normal(size=(8, kernel.shape[1])) / 8
        model.get_layer(name).set_weights([(low + 0.01 * rng.normal(size=kernel.shape)).astype(np.float32), bias])
    data = SimpleNamespace(x_val=rng.normal(size=(20, 32)).astype(np.float32),
                           x_train=rng.normal(size=(300, 32)).astype(np.float32))
    return model, data


def run_search(tiny: tuple[Any, Any], drop_of_macs: Any, max_trials: int = 4,
               min_saving: int | None = None) -> tuple[Any, dict[str, Any], list]:
    import edgelr.compress.search as search
    from edgelr.compress.evaluate import Task
    from edgelr.compress.options import CompressOptions, resolve_plan_options
    from edgelr.compress.search import search_and_run
    from edgelr.rewrite.cost import model_cost
    from edgelr.targets import get_target

    model, data = tiny
    opts = CompressOptions(max_accuracy_drop=BUDGET, progress=False, search_subset=100, max_trials=max_trials,
                           rank_policy="params:0.5", min_saving=min_saving)
    ran: list[str] = []

    def run(new: Any, factor_report: Any, label: str) -> Any:
        params, macs = model_cost(new)
        ran.append(label)
        d = float(drop_of_macs(macs))
        return SimpleNamespace(label=label, macs=macs, params=params, tflite_drop=d,
                               validation=SimpleNamespace(accuracy=90.0 - d, loss=None))

    runner = SimpleNamespace(opts=opts, data=data, task=Task(True, 10, "probs"), original=model,
                             quantization="int8", run=run)
    with pytest.MonkeyPatch.context() as mp:  # fewer shares: fewer candidates to build (a faster test)
        mp.setattr(search, "RATIOS", (0.25, 0.5))
        mp.setattr(search, "LADDER", (0.125, 0.25, 0.75))
        chosen, info = search_and_run(runner, resolve_plan_options(opts, get_target("host")), lambda msg: None)
    return chosen, info, ran


def relative_to_first(drop: Any) -> Any:
    """A trial outcome as a function of the MACs relative to the first trial's (the policy's)."""
    first: list[int] = []

    def outcome(macs: int) -> float:
        first.append(macs)
        return drop(macs / first[0])

    return outcome


def test_the_policy_is_tried_first_and_the_result_is_the_least_macs_that_met(tiny: tuple[Any, Any]) -> None:
    # the policy meets the budget; 30 % fewer MACs than it does not
    chosen, info, ran = run_search(tiny, relative_to_first(lambda rel: 0.5 if rel >= 0.7 else 2.0))
    policy = next(c for c in info["candidates"] if c["kind"] == "policy")
    assert ran[0] == policy["label"]
    tried = [c for c in info["candidates"] if c["tried"]]
    assert [c["label"] for c in sorted(tried, key=lambda c: c["trial"])] == ran
    met = [c for c in tried if c["tflite_drop"] <= BUDGET]
    assert info["budget_met"] and chosen.macs == min(c["macs"] for c in met) < policy["macs"]
    assert {"policy", "greedy", "uniform"} <= {c["kind"] for c in info["candidates"]}
    assert info["subset"] == 100 and info["subset_from_train"] == 80  # 20 validation inputs topped up


def test_a_failing_policy_backs_off(tiny: tuple[Any, Any]) -> None:
    chosen, info, ran = run_search(tiny, relative_to_first(lambda rel: 0.5 if rel > 1.0 else 3.0))
    policy = next(c for c in info["candidates"] if c["kind"] == "policy")
    assert ran[0] == policy["label"] and len(ran) > 1
    assert info["budget_met"] and chosen.macs > policy["macs"]
    assert all(c["tflite_drop"] > BUDGET for c in info["candidates"] if c["tried"] and c["macs"] <= policy["macs"])


def test_an_impossible_budget_returns_the_smallest_drop(tiny: tuple[Any, Any]) -> None:
    chosen, info, ran = run_search(tiny, lambda macs: 5.0 + 1e-6 * macs, max_trials=2)
    assert not info["budget_met"] and len(ran) == 2
    assert chosen.tflite_drop == min(t["tflite_drop"] for t in info["trials"])


def test_same_seed_same_fine_tune(tf_keras: ModuleType) -> None:
    """The run's seeds (edgelr.compress.attempt.deterministic): a model built and fine-tuned twice from the same
    seed is the same, bit for bit, without TensorFlow's op determinism."""
    from tensorflow.python.framework import config as tf_config

    from edgelr.compress.attempt import deterministic
    from edgelr.compress.distill import DistillConfig, distill
    from edgelr.compress.evaluate import Task

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(256, 16)).astype(np.float32), rng.integers(0, 4, 256)
    teacher = np.eye(4, dtype=np.float32)[y] * 0.9 + 0.025
    weights = []
    for _ in range(2):
        with deterministic(7):
            assert not tf_config.is_op_determinism_enabled()
            m = tf_keras.Sequential([tf_keras.Input(shape=(16,)), tf_keras.layers.Dropout(0.3),
                                     tf_keras.layers.Dense(4, activation="softmax")])
            distill(m, teacher, x, y, x[:32], y[:32], Task(True, 4, "probs"), DistillConfig(epochs=1, seed=7),
                    progress=False)
            weights.append(m.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_no_candidate_splits_a_layer_where_the_split_saves_too_little(tiny: tuple[Any, Any]) -> None:
    """The absolute-saving rule holds for the search's own ranks too: fc2 (96 x 96) saves 9216 - 192 r
    parameters (and MACs) at rank r, so with min_saving 4000 no candidate may give it a rank above 27."""
    _, info, _ = run_search(tiny, lambda macs: 0.0, max_trials=1, min_saving=4000)
    ranks = [c["ranks"].get("fc2") for c in info["candidates"]]
    split = [r[0] for r in ranks if r]
    assert split and all(9216 - 192 * r >= 4000 for r in split), ranks
