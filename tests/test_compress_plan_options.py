"""Every plan option reaches the rank plan on both paths: the plain one and the accuracy search."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from edgelr.compress.options import CompressOptions, resolve_plan_options
from edgelr.compress.pipeline import _factorize
from edgelr.rewrite.options import PlanOptions
from edgelr.targets import get_target

CHOSEN = {"method": "tucker2", "rank_policy": "energy:0.9", "layer_policies": "conv2d=rank:4",
          "include": ("conv*",), "skip": ("dense_1",), "min_reduction": 0.25, "min_efficiency": 0.5,
          "allocate": "latency"}


class _Stop(Exception):
    pass


def _recorder(seen: list[dict[str, Any]]) -> Any:
    def record(model: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise _Stop

    return record


def test_resolve_copies_every_option_and_applies_target_defaults() -> None:
    tgt = get_target("host")
    plan = resolve_plan_options(CompressOptions(**CHOSEN), tgt)
    assert {k: getattr(plan, k) for k in CHOSEN} == CHOSEN and plan.target is tgt
    default = resolve_plan_options(CompressOptions(), tgt)
    assert (default.method, default.rank_policy) == (tgt.method, tgt.rank_policy)
    assert set(plan.kwargs()) == {f.name for f in dataclasses.fields(PlanOptions)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.allocate = "layer"  # type: ignore[misc]


def test_plain_path_passes_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgelr.rewrite

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(edgelr.rewrite, "factorize_model", _recorder(seen))
    plan = resolve_plan_options(CompressOptions(**CHOSEN), get_target("host"))
    with pytest.raises(_Stop):
        _factorize(object(), plan, False)
    assert {k: seen[0][k] for k in CHOSEN} == CHOSEN


def test_search_passes_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search plans with the run's own options (min_reduction too: its policy candidate is what a run
    without a budget builds; the sweep sets ranks itself); allocate and min_efficiency reach it."""
    import edgelr.rewrite
    from edgelr.compress.search import search_and_run

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(edgelr.rewrite, "plan_factorization", _recorder(seen))
    opts = CompressOptions(**CHOSEN, max_accuracy_drop=1.0, progress=False)
    runner = SimpleNamespace(opts=opts, data=None, task=None, original=object())
    with pytest.raises(_Stop):
        search_and_run(runner, resolve_plan_options(opts, get_target("host")), lambda msg: None)
    assert {k: seen[0][k] for k in CHOSEN} == CHOSEN
    assert seen[0]["allocate"] == "latency" and seen[0]["min_efficiency"] == 0.5


def test_plan_options_is_the_one_resolution() -> None:
    """Target defaults are applied by one function; resolving resolved options changes nothing."""
    from edgelr.errors import FactorizeError
    from edgelr.rewrite.options import plan_options

    tgt = get_target("host")
    opts = plan_options("host")
    assert opts.target == tgt and (opts.method, opts.rank_policy) == (tgt.method, tgt.rank_policy)
    assert plan_options(**opts.kwargs()) == opts
    defaults = CompressOptions()
    assert resolve_plan_options(defaults, tgt) == plan_options(tgt, min_reduction=defaults.min_reduction,
                                                               min_saving=defaults.min_saving)
    bare = plan_options()
    assert bare.target is None and (bare.method, bare.rank_policy) == ("auto", "vbmf")
    with pytest.raises(FactorizeError, match="method: got 'svd3'"):
        plan_options(method="svd3")


def test_public_api_resolves_through_plan_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """``edgelr.factorize_model`` -> ``plan_factorization`` hands every plan option to ``plan_options``."""
    import edgelr
    import edgelr.rewrite.model as model_module

    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        raise _Stop

    monkeypatch.setattr(model_module, "check_model", lambda model: None)
    monkeypatch.setattr(model_module, "plan_options", record)
    with pytest.raises(_Stop):
        edgelr.factorize_model(object(), target="host", progress=False, **CHOSEN)
    args, kwargs = seen[0]
    assert args == ("host",) and {k: kwargs[k] for k in CHOSEN} == CHOSEN
    assert set(kwargs) == {f.name for f in dataclasses.fields(PlanOptions)} - {"target"}  # every plan option
