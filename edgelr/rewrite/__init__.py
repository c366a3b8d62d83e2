"""Low-rank rewrite of tf_keras models: one module per layer kind, one registry, one whole-model rewrite.

Public API:

- :func:`factorize_model` ``(model, ...) -> (new_model, report)``: plan + build in one call.
- :func:`plan_factorization` / :func:`build_factorized`: decompose each layer once, then materialize at
  any ranks (accuracy-aware rank search).
- :func:`plan_options`: the one resolution of the plan options (the target's defaults) every path uses.
- :func:`layer_cost` ``(layer) -> (params, macs)`` and :func:`applicable_methods` ``(layer) -> list[str]``.
- :func:`register_rewriter`: how a layer rewriter joins (see :mod:`edgelr.rewrite.registry`).

Modules: :mod:`~edgelr.rewrite.registry` (rewriters), :mod:`~edgelr.rewrite.options` (plan options),
:mod:`~edgelr.rewrite.plan` (plan data and rules), :mod:`~edgelr.rewrite.model` (plan and build),
:mod:`~edgelr.rewrite.allocate` (model-wide ranks), :mod:`~edgelr.rewrite.rebuild` (config surgery),
:mod:`~edgelr.rewrite.cost` (params, MACs, latency estimate), one module per layer kind.

Importing this package does not import TensorFlow.
"""

from __future__ import annotations

from typing import Any

from edgelr.rewrite.cost import layer_cost, model_cost
from edgelr.rewrite.model import REPORT_COLUMNS, build_factorized, layer_kind, plan_factorization
from edgelr.rewrite.options import PlanOptions, check_layer_policies, plan_options
from edgelr.rewrite.plan import FactorizationPlan, LayerPlan
from edgelr.rewrite.rebuild import rebuild_with, walk_layers
from edgelr.rewrite.registry import applicable_methods, get_rewriter, methods, register_rewriter, rewriters

# The rewriters edgelr ships. This line is the one place rewriter modules are imported, so their
# @register_rewriter decorators run exactly here: adding a rewriter is one module plus its name below.
from edgelr.rewrite import conv, dense, embedding, recurrent, recurrent3d, separable  # noqa: E402,F401  isort: skip

__all__ = [
    "REPORT_COLUMNS",
    "FactorizationPlan",
    "LayerPlan",
    "PlanOptions",
    "applicable_methods",
    "build_factorized",
    "check_layer_policies",
    "factorize_model",
    "get_rewriter",
    "layer_cost",
    "layer_kind",
    "methods",
    "model_cost",
    "plan_factorization",
    "plan_options",
    "rebuild_with",
    "register_rewriter",
    "rewriters",
    "walk_layers",
]


def factorize_model(
    model: Any,
    method: str | None = None,
    rank_policy: Any = None,
    target: Any = None,
    include: Any = None,
    skip: Any = None,
    min_reduction: float | None = 0.1,
    progress: bool = True,
    rank_floor: int | None = None,
    recurrent_unroll: bool | None = None,
    layer_policies: Any = None,
    min_efficiency: float | None = None,
    allocate: str = "layer",
    calibration: Any = None,
    latency_table: Any = None,
    min_saving: int | None = None,
) -> tuple[Any, Any]:
    """Replace a model's Dense/Conv/Separable/Embedding/LSTM/GRU layers by low-rank stock-layer chains.

    Parameters
    ----------
    model : tf_keras.Model
        Built Sequential or Functional model; never modified.
    method : str, optional
        ``auto`` or a registered method (:func:`methods`: ``svd``, ``svd-recurrent``, ``tucker2``, ``cp``,
        ``spatial-svd``); default the target's method, else ``auto`` (:func:`plan_options`).
    rank_policy : str, optional
        ``vbmf`` | ``energy:F`` | ``params:F`` | ``macs:F`` | ``rank:N``; default the target's, else ``vbmf``.
    target : str or edgelr.targets.Target, optional
        Ranks are rounded up to its ``rank_multiple``.
    include, skip : list of str, optional
        fnmatch patterns on layer names (see :func:`plan_factorization`).
    min_reduction : float or None
        A layer is left as is unless params and MACs both drop by this share (default 10%).
    progress : bool
        Progress bars on stderr.
    rank_floor : int, optional
        Lowest rank ``vbmf`` may choose (default 8).
    recurrent_unroll : bool, optional
        Set ``unroll`` on rewritten LSTM/GRU layers (True: what int8 TFLite of the low-rank cells needs).
    layer_policies : mapping of str -> str, optional
        Per-layer rank policies, fnmatch pattern on the layer name -> policy spec (e.g.
        ``{"fc1": "params:0.2"}``); the first matching pattern wins, other layers follow ``rank_policy``.
    min_efficiency : float, optional
        Leave a layer as is when its estimated speed-up is below this share of its MAC reduction
        (output-bound layers; see :func:`plan_factorization`). Default None: off.
    allocate : str
        ``layer`` (default): each layer meets the rank policy on its own. ``latency``: the policy ranks set
        the total params and weight loss, and ranks are re-chosen model-wide for the least estimated
        latency within both (see :func:`plan_factorization`).
    calibration : numpy.ndarray or list of numpy.ndarray, optional
        A batch of model inputs (a few hundred, e.g. ``x_train[:256]``): data-aware factorization. Each layer's
        decomposition then minimises the error of its OUTPUT on these inputs instead of the weight error, and the
        rank policies read the data-aware spectrum (see :func:`plan_factorization`). None: weights only.
    latency_table : edgelr.rewrite.cost.MeasuredLatency, optional
        Latencies measured on the device (``edgelr profile``) instead of the estimate (see
        :func:`plan_factorization`).
    min_saving : int, optional
        Absolute-saving rule: leave a layer whole when it saves fewer than this many parameters and MACs, or
        it is a conv on <= 3 input channels that does not pay by the latency estimate (see
        :func:`plan_factorization`). None (default): off.

    Returns
    -------
    new_model : tf_keras.Model
        Uncompiled; layers renamed ``<layer>/<part>`` where replaced.
    report : pandas.DataFrame
        One row per factorizable layer: layer, kind, method, policy (the rank policy used for the row),
        ranks (tuple), params_before, params_after, macs_before, macs_after (per example), est_speedup
        (estimated latency speed-up of the rewrite, :func:`edgelr.rewrite.cost.latency_estimate` with the
        target's output cost; 1.0 when skipped, NaN for recurrent layers), rel_error (relative Frobenius
        error of the weights; with ``calibration``, for data-aware layers, the relative error of the layer's
        pre-bias output on the calibration inputs - for Tucker-2 under pooled channel statistics), skipped
        (bool), reason.

    Raises
    ------
    FactorizeError
        Bad method, policy, pattern or rank; an include naming a layer no method applies to; a bad
        ``layer_policies`` spec or a pattern of it that matches no factorizable layer.
    """
    plan = plan_factorization(model, method=method, rank_policy=rank_policy, target=target, include=include,
                              skip=skip, min_reduction=min_reduction, progress=progress, rank_floor=rank_floor,
                              recurrent_unroll=recurrent_unroll, layer_policies=layer_policies,
                              min_efficiency=min_efficiency, allocate=allocate, calibration=calibration, latency_table=latency_table,
                              min_saving=min_saving)
    return build_factorized(model, plan)
