"""Robust ranks: weakened EVBMF (as MUSCO) with its floors, and the absolute-saving rule of the plan."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgelr.errors import FactorizeError, UsageError
from edgelr.factorize import RankPolicy, evbmf_rank, parse_rank_policy, select_matrix_rank, weaken_rank


def planted(rng: np.random.Generator, m: int, n: int, rank: int) -> np.ndarray:
    signal = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) * 2.0
    return signal + rng.standard_normal((m, n))


def test_weaken_rank_is_musco_formula() -> None:
    # floor(R - f (R - r_vbmf)): f = 0 the full rank, f = 1 the EVBMF rank, r_vbmf = 0 keeps R
    assert weaken_rank(16, 8, 0.0) == 16
    assert weaken_rank(16, 8, 1.0) == 8
    assert weaken_rank(16, 8, 0.5) == 12
    assert weaken_rank(60, 12, 0.8) == 21  # floor(21.6)
    assert weaken_rank(60, 0, 0.8) == 60
    with pytest.raises(FactorizeError, match="weakening factor: got 1.5"):
        weaken_rank(16, 8, 1.5)


def test_vbmf_policy_spec_carries_the_weakening_factor() -> None:
    assert parse_rank_policy("vbmf") == RankPolicy("vbmf", None)
    assert parse_rank_policy("vbmf").weakening == 0.8
    assert parse_rank_policy("vbmf:0.5") == RankPolicy("vbmf", 0.5) and str(parse_rank_policy("vbmf:0.5")) == "vbmf:0.5"
    assert str(parse_rank_policy("VBMF:1")) == "vbmf:1"
    with pytest.raises(FactorizeError, match="vbmf:W needs a weakening factor"):
        parse_rank_policy("vbmf:1.2")


def test_default_vbmf_keeps_more_than_plain_evbmf_and_the_floors_hold() -> None:
    rng = np.random.default_rng(3)
    y = planted(rng, 60, 150, 12)
    cost, full = (lambda r: (r * 210, r * 210)), (9000, 9000)
    assert evbmf_rank(y) == 12
    assert select_matrix_rank(y, "vbmf:1", cost=cost, full_cost=full) == 12
    assert select_matrix_rank(y, "vbmf", cost=cost, full_cost=full) == 21  # floor(60 - 0.8 * 48)
    assert select_matrix_rank(y, "vbmf:0", cost=cost, full_cost=full) == 60
    assert select_matrix_rank(y, "vbmf:1", cost=cost, full_cost=full, floor=30) == 30  # absolute floor
    # weakened ranks never go below (1 - f) R: a share-of-full floor, whatever EVBMF says
    for f in (0.25, 0.5, 0.9):
        assert select_matrix_rank(y, f"vbmf:{f}", cost=cost, full_cost=full, floor=1) >= int((1 - f) * 60)


# ---- the absolute-saving rule -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_cnn(tf_keras: Any) -> Any:
    """28x28x1 -> conv1 (8 filters on ONE input channel: 72 weights) -> conv2 (32) -> tiny dense -> head."""
    k = tf_keras
    k.utils.set_random_seed(0)
    inp = k.Input((28, 28, 1))
    x = k.layers.Conv2D(8, 3, use_bias=False, name="conv1")(inp)
    x = k.layers.Conv2D(32, 3, strides=2, name="conv2")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    x = k.layers.Dense(24, name="small")(x)          # 32*24+24 = 792 params: can never save 1024
    return k.Model(inp, k.layers.Dense(10, name="head")(x))


def test_first_conv_and_tiny_layer_stay_whole_and_the_report_says_why(small_cnn: Any) -> None:
    import edgelr

    # rank 4: conv1 becomes 1x1 1->1 (folded), 3x3 1->4, 1x1 4->8: fewer MACs, more elements written
    _, rep = edgelr.factorize_model(small_cnn, rank_policy="rank:4", min_reduction=None, min_saving=1024,
                                    progress=False)
    rows = rep.set_index("layer")
    assert rows.loc["conv1", "skipped"] and "1 input channel(s)" in rows.loc["conv1", "reason"]
    assert "pays by the latency estimate" in rows.loc["conv1", "reason"]
    assert rows.loc["small", "skipped"] and "fewer than min_saving=1,024" in rows.loc["small", "reason"]
    assert not rows.loc["conv2", "skipped"]  # 8 -> 32 channels 3x3 on 13x13: saves thousands of MACs
    # the same call without the rule splits the first conv: the rule, not the policy, kept it whole
    _, off = edgelr.factorize_model(small_cnn, rank_policy="rank:4", min_reduction=None, progress=False)
    assert not off.set_index("layer").loc["conv1", "skipped"]


def test_search_candidates_and_latency_allocation_obey_the_rule(small_cnn: Any) -> None:
    from edgelr.rewrite import plan_factorization
    from edgelr.rewrite.allocate import layer_options

    plan = plan_factorization(small_cnn, rank_policy="rank:8", min_reduction=None, min_saving=1024, progress=False)
    assert "small" not in plan.candidates() and "at any ranks" in plan.never_pays("small")
    # conv1 at ranks (1, 1) folds to 3x3 1->1 + 1x1 1->8: x1.24 by the estimate, so a search may try it
    assert {"conv1", "conv2"} <= set(plan.candidates()) and plan.never_pays("conv1") == ""
    assert "fewer than min_saving" in plan.saving_reason("conv2", (8, 32)) and plan.saving_reason("conv2", (1, 1)) == ""
    opts = layer_options(plan, "small", None, None)
    assert opts is not None and [o.ranks for o in opts] == [None]  # only "as is"
    loose = plan_factorization(small_cnn, rank_policy="rank:8", min_reduction=None, progress=False)
    assert {"conv1", "small"} <= set(loose.candidates())


def test_compress_options_carry_min_saving_once() -> None:
    from edgelr.compress.options import check_options, resolve_plan_options
    from edgelr.rewrite.plan import DEFAULT_MIN_SAVING
    from edgelr.targets import get_target

    opts = check_options({})
    assert opts.min_saving == DEFAULT_MIN_SAVING == 1024
    assert resolve_plan_options(opts, get_target("rpi4")).min_saving == 1024
    assert resolve_plan_options(check_options({"min_saving": 0}), get_target("rpi4")).kwargs()["min_saving"] == 0
    with pytest.raises(UsageError, match="--min-saving: min_saving: got -5"):
        check_options({"min_saving": -5})


def test_min_saving_takes_any_whole_number_and_refuses_the_rest() -> None:
    import numpy as np

    from edgelr.errors import FactorizeError
    from edgelr.rewrite.options import check_min_saving

    assert check_min_saving(np.int64(1024)) == 1024 and check_min_saving(512.0) == 512 and check_min_saving(None) is None
    for bad in (True, -1, 1.5, "1024", float("nan")):
        with pytest.raises(FactorizeError, match="min_saving"):
            check_min_saving(bad)
