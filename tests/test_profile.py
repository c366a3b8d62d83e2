"""edgelr profile: per-layer latency tables measured on the local device (real LiteRT, real micro-models).

One tiny model (a 3x3 conv and a Dense), two sessions of three inferences: the table is built in batches,
an interrupted run keeps the finished batch, the next run measures only the rest, a third run measures
nothing, ``max_time_s`` stops between batches; the plan then reads measured latencies and leaves a layer
whole when its chain does not pay on the device.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edgelr.errors import Interrupted
from edgelr.rewrite.cost import MeasuredLatency, _interpolate, layer_signature
from tests.local_device import write_local_inventory

FAST = dict(sessions=2, runs=3, warmup=1)


@pytest.fixture(scope="module")
def tiny(tf_keras: Any) -> Any:
    k = tf_keras
    inp = k.Input((8, 8, 8))
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inp)
    x = k.layers.Flatten()(x)
    return k.Model(inp, k.layers.Dense(10, name="fc")(x), name="tiny")


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("profile_dev")
    return str(write_local_inventory(d / "inventory.toml"))


def _rows(cache: Path) -> int:
    with sqlite3.connect(cache) as db:
        return int(db.execute("SELECT COUNT(*) FROM latency").fetchone()[0])


def test_table_is_cached_resumable_and_bounded(tiny: Any, inventory: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import edgelr.profile as prof

    monkeypatch.setattr(prof, "BATCH", 2)  # one batch per layer: conv (+ the whole model), then fc
    cache = tmp_path / "latency.sqlite"
    said: list[str] = []

    def stop_at_second_batch(msg: str) -> None:
        said.append(msg)
        if msg.startswith("profile: batch 2/2"):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="finished batches are kept"):
        prof.profile_model(tiny, "testbox", inventory=inventory, cache=cache, progress=stop_at_second_batch, **FAST)
    first = _rows(cache)
    # conv: as is + ranks 8x8, 8x16 (rank multiple 8, full ranks 8x16) + the whole model + the probe model
    assert first == 5

    said.clear()
    res = prof.profile_model(tiny, "testbox", inventory=inventory, cache=cache, progress=said.append, **FAST)
    assert res.complete and res.missing == 0
    assert any("(3 cached)" in m for m in said), said  # only fc was measured
    assert _rows(cache) == first + 3  # fc as is + ranks 8, 10
    assert all(r["ms"] > 0 and r["sessions"] == 2 for r in res.rows)
    assert res.table.model_ms > 0 and res.probe_ms > 0
    assert res.table.calibration in {"two-point", "proportional", "none (no usable probe)"}
    assert res.table.context_scale > 0
    conv_sig = layer_signature(tiny.get_layer("conv"), "tucker2")
    assert set(res.table.entries[conv_sig]) == {None, (8, 8), (8, 16)}

    said.clear()
    again = prof.profile_model(tiny, "testbox", inventory=inventory, cache=cache, progress=said.append, **FAST)
    assert not any("measuring" in m for m in said)  # everything from the cache
    assert again.table.entries == res.table.entries and _rows(cache) == first + 3

    # another thread count is another table; --max-time stops after the first batch, the rest stays missing
    bounded = prof.profile_model(tiny, "testbox", inventory=inventory, cache=cache, threads=2, max_time_s=0.01,
                                 include_model=False, **FAST)
    assert not bounded.complete and bounded.missing == 3
    assert _rows(cache) == first + 3 + 3


def test_plan_uses_measured_latency_and_keeps_slow_chains_whole(tiny: Any) -> None:
    from edgelr.rewrite import plan_factorization

    conv, fc = tiny.get_layer("conv"), tiny.get_layer("fc")
    table = MeasuredLatency({layer_signature(conv, "tucker2"): {None: 1.0, (8, 8): 0.5, (8, 16): 0.8},
                             layer_signature(fc, "svd"): {None: 0.2, (8,): 0.3, (10,): 0.35}}, device="box",
                            model_ms=1.5)
    plan = plan_factorization(tiny, rank_policy="rank:8", target="host", min_reduction=None, progress=False,
                              latency_table=table)
    assert plan.layers["conv"].est_speedup == pytest.approx(2.0)
    assert not plan.layers["conv"].skipped
    assert plan.layers["fc"].skipped and "does not pay" in plan.layers["fc"].reason
    from edgelr.rewrite.allocate import model_latency

    # the measured whole model minus conv as is plus conv at 8x8: 1.5 - 1.0 + 0.5
    assert model_latency(plan, {"conv": (8, 8)}) == pytest.approx(1.0)
    # a layer inside the model twice as slow as alone: the change counts twice
    table.context_scale = 2.0
    assert model_latency(plan, {"conv": (8, 8)}) == pytest.approx(0.5)


@pytest.mark.parametrize("t0, t1, s0, s1, scale, how", [
    (10.0, 7.0, 4.0, 2.0, 1.5, "two-point"),            # T = 4 + 1.5 S
    (10.0, 2.0, 4.0, 2.0, 2.5, "proportional"),         # the fit (s = 4) would leave a negative remainder
    (10.0, 11.0, 4.0, 2.0, 2.5, "proportional"),        # the probe slower although its layers are faster
    (10.0, 7.0, 4.0, 3.9, 1.0, "none (no usable probe)"),  # the probe hardly changes the layers
    (10.0, float("nan"), 4.0, 2.0, 1.0, "none (no usable probe)"),
])
def test_context_scale_from_the_model_and_the_probe(t0: float, t1: float, s0: float, s1: float, scale: float,
                                                    how: str) -> None:
    table = MeasuredLatency({}, model_ms=t0)
    assert table.calibrate(t0, t1, s0, s1) == pytest.approx(scale)
    assert table.context_scale == pytest.approx(scale) and table.calibration == how


def test_interpolation_is_bilinear_between_profiled_ranks() -> None:
    grid = {(8, 8): 1.0, (8, 16): 2.0, (16, 8): 3.0, (16, 16): 4.0}
    assert _interpolate(grid, (12, 12)) == pytest.approx(2.5)
    assert _interpolate(grid, (8, 12)) == pytest.approx(1.5)
    assert _interpolate(grid, (32, 4)) == pytest.approx(3.0)  # clamped to the ladder
    assert _interpolate({(8,): 1.0, (16,): 3.0}, (12,)) == pytest.approx(2.0)


def test_search_goes_for_measured_latency(tiny: Any) -> None:
    from types import SimpleNamespace

    from edgelr.compress.search import latency_objective, next_trial
    from edgelr.rewrite import plan_factorization

    conv, fc = tiny.get_layer("conv"), tiny.get_layer("fc")
    table = MeasuredLatency({layer_signature(conv, "tucker2"): {None: 1.0, (8, 8): 0.4, (8, 16): 0.9},
                             layer_signature(fc, "svd"): {None: 0.2, (8,): 0.1, (10,): 0.15}}, model_ms=1.5)
    plan = plan_factorization(tiny, rank_policy="rank:8", target="host", min_reduction=None, progress=False,
                              latency_table=table)
    # the candidate with the fewest MACs is not the fastest on this (made-up) device
    cands = [{"label": "conv 8x16", "kind": "uniform", "macs": 10, "val_drop": 0.5, "tried": False,
              "tflite_drop": None, "_cfg": {"conv": (8, 16)}},
             {"label": "conv 8x8", "kind": "uniform", "macs": 20, "val_drop": 0.8, "tried": False,
              "tflite_drop": None, "_cfg": {"conv": (8, 8)}},
             {"label": "fc 8", "kind": "uniform", "macs": 30, "val_drop": 0.1, "tried": False,
              "tflite_drop": None, "_cfg": {"fc": (8,)}}]
    opts = SimpleNamespace(max_latency_ms=None, min_speedup=None)
    key, pool = latency_objective(plan, cands, opts, lambda _m: None)
    assert key == "latency_ms" and [c["latency_ms"] for c in cands] == pytest.approx([1.4, 0.9, 1.4])
    assert next_trial(pool, 1.0, 4.0, key)["label"] == "conv 8x8"
    assert next_trial(cands, 1.0, 4.0)["label"] == "conv 8x16"  # without the table: fewest MACs
    # --min-speedup 1.2 over the measured 1.5 ms: only conv 8x8 (0.9 ms) is within 1.25 ms
    key, pool = latency_objective(plan, cands, SimpleNamespace(max_latency_ms=None, min_speedup=1.2), lambda _m: None)
    assert key == "val_drop" and [c["label"] for c in pool] == ["conv 8x8"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_profile_through_the_benchmark_model_tool(tf_keras: Any, tmp_path: Path) -> None:
    """A device measured by LiteRT's ``benchmark_model`` (a Pi with the C++ tool, a phone): one process per
    micro-model and session through the bench, the tool's version keys the table. The stand-in tool really
    runs LiteRT (tests/fake_benchmark_model.py, real mode) and prints whole microseconds like the tool, so the
    model is big enough to take some (a 3x3 conv of 0.66 M MACs)."""
    import edgelr.profile as prof
    from tests.fake_benchmark_model import write_launcher

    k = tf_keras
    inp = k.Input((12, 12, 16))
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv")(inp)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inp, k.layers.Dense(10, name="fc")(x), name="bm")

    tool = write_launcher(tmp_path / "benchmark_model.sh")
    inv = tmp_path / "inventory.toml"
    inv.write_text(f'[devices.bmbox]\ntransport = "local"\ntarget = "host"\nworkdir = "{tmp_path / "dev"}"\n'
                   f'benchmark_binary = "{tmp_path / "dev" / "benchmark_model"}"\n'
                   f'benchmark_binary_local = "{tool}"\n')
    res = prof.profile_model(model, "bmbox", inventory=str(inv), cache=tmp_path / "t.sqlite", progress=lambda _m: None,
                             **FAST)
    assert res.complete and res.missing == 0
    assert "benchmark_model" in res.runtime
    conv = [r for r in res.rows if r["layer"] == "conv"]
    assert len(conv) == 1 + 8 and all(r["sessions"] == 2 for r in res.rows)   # as is + the 2 x 4 Tucker-2 grid
    assert all(r["ms"] > 0 for r in conv) and res.table.model_ms > 0 and res.probe_ms > 0
