"""A params/MACs budget on an LSTM is spent on the recurrent kernel first; a narrow input kernel stays
whole unless the recurrent kernel alone cannot meet the budget."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def lstm_model():  # type: ignore[no-untyped-def]
    from edgelr.tfcompat import keras2

    k = keras2()
    k.utils.set_random_seed(0)
    return k.Sequential([k.layers.Input((29, 12), batch_size=1), k.layers.LSTM(128, name="lstm"),
                         k.layers.Dense(9)])


@pytest.mark.parametrize("share, expected", [(0.5, (12, 40)), (0.35, (12, 24)), (0.1, (8, 8))])
def test_params_budget_prefers_the_recurrent_kernel(lstm_model, share: float, expected: tuple) -> None:  # type: ignore[no-untyped-def]
    import edgelr

    _, rep = edgelr.factorize_model(lstm_model, method="svd-recurrent", rank_policy=f"params:{share}",
                                    target="rpi4", progress=False)
    row = rep.set_index("layer").loc["lstm"]
    assert tuple(row["ranks"]) == expected
    assert row["params_before"] == 4 * 128 * (12 + 128 + 1)  # LSTM: 4 gates x units x (D + units + bias)
    if share >= 0.35:
        assert row["params_after"] <= share * 72192
