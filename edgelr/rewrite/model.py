"""Whole-model low-rank rewrite: plan once, materialize at any ranks.

:func:`plan_factorization` walks a tf_keras model (Sequential or Functional, nested models included),
picks a rewriter per layer (method ``auto`` or a named one), decomposes each layer's weights ONCE and
chooses ranks by a rank policy (one for the whole model, or per layer with ``layer_policies``).
:func:`build_factorized` rebuilds the model from its config with the chosen layers replaced by stock-layer
chains; a rank search calls it many times with other ranks
(SVD truncation and the HOSVD start of Tucker-2 are reused; CP decompositions are cached per rank).
With ``calibration`` (a batch of model inputs) the plan first runs the model once over it to collect each
layer's input statistics (:mod:`edgelr.rewrite.calibration`) and every data-aware rewriter decomposes to
minimise the layer's output error (:mod:`edgelr.factorize.whiten`).
:func:`factorize_model` is both in one call.

The caller's model is never modified: the new model is built from ``model.get_config()`` and the
weights are copied (:mod:`edgelr.rewrite.rebuild`). Options are resolved by
:func:`edgelr.rewrite.options.plan_options`; the plan's data and rules live in :mod:`edgelr.rewrite.plan`.
Layers are addressed by their qualified name: ``conv3`` at the top level,
``inner/conv3`` inside a nested model ``inner``. Replacement layers are named ``<layer>/<part>``
(``conv3/tucker_in``, ``conv3/tucker_core``, ``conv3/tucker_out``; tf_keras accepts '/' in layer names and
saves/loads them in ``.keras`` and ``.h5``). A rewritten LSTM/GRU keeps its own name after its projection
``<layer>/svd_in``. The new model is not compiled.
"""

from __future__ import annotations

import fnmatch
import sys
from typing import Any, Mapping

from edgelr.errors import FactorizeError
from edgelr.rewrite.cost import layer_cost, output_cost_for
from edgelr.rewrite.options import parse_layer_policies, plan_options
from edgelr.rewrite.plan import FactorizationPlan, LayerPlan, fmt_ranks, rule_reason, saving_reason
from edgelr.rewrite.rebuild import check_model, rebuild_with, walk_layers
from edgelr.rewrite.registry import Ranks, Rewrite, applicable_methods, fallback_of, get_rewriter, supported_layers

REPORT_COLUMNS = ["layer", "kind", "method", "policy", "ranks", "params_before", "params_after", "macs_before",
                  "macs_after", "est_speedup", "rel_error", "skipped", "reason"]
DEFAULT_RANK_FLOOR = 8


def layer_kind(layer: Any) -> str:
    """A short label: ``Dense``, ``Conv2D 3x3``, ``TimeDistributed(Dense)``, ``LSTM``..."""
    name = type(layer).__name__
    if name == "TimeDistributed":
        return f"TimeDistributed({type(layer.layer).__name__})"
    size = getattr(layer, "kernel_size", None)
    if size is not None:
        return f"{name} {'x'.join(str(int(k)) for k in size)}"
    return name


def _matches(path: str, name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _patterns(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise FactorizeError(f"{what}: got {value!r}; expected a pattern or a list of fnmatch patterns") from None
    if not all(isinstance(p, str) for p in items):
        raise FactorizeError(f"{what}: got {value!r}; every pattern must be a string such as 'conv*'")
    return items


def plan_factorization(
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
    layer_policies: Mapping[str, str] | None = None,
    min_efficiency: float | None = None,
    allocate: str = "layer",
    calibration: Any = None,
    latency_table: Any = None,
    min_saving: int | None = None,
) -> FactorizationPlan:
    """Decompose every selected layer once and choose its ranks by ``rank_policy``.

    Parameters
    ----------
    model : tf_keras.Model
        Built Sequential or Functional model (read only).
    method : str, optional
        ``auto`` (each layer's preferred method) or a registered method (:func:`edgelr.rewrite.methods`:
        ``svd``, ``svd-recurrent``, ``tucker2``, ``cp``, ``spatial-svd``); layers the method does not apply to
        are left as is, or get its fallback method (``svd-recurrent`` falls back to ``svd`` for
        non-recurrent layers). Default: the target's method, else ``auto``. Defaults are applied by
        :func:`edgelr.rewrite.options.plan_options`, as on every path to a plan.
    rank_policy : str or RankPolicy, optional
        ``vbmf``, ``energy:F``, ``params:F``, ``macs:F`` or ``rank:N``. Default: the target's, else ``vbmf``.
    target : str or edgelr.targets.Target, optional
        Ranks are rounded up to its ``rank_multiple``.
    include, skip : list of str, optional
        fnmatch patterns on layer names (bare or qualified). With ``include`` only matching layers are
        considered; a pattern that matches no layer, or names (without wildcards) a layer no method
        applies to, raises :class:`FactorizeError`. ``skip`` wins over ``include``.
    min_reduction : float or None
        Leave a layer as is unless its params and its MACs both drop by at least this share (layers
        without MACs, e.g. Embedding: params only). None: never leave a layer for this reason.
    progress : bool
        tqdm progress on stderr.
    rank_floor : int, optional
        Lowest rank the ``vbmf`` policy may choose (default 8, capped at the full rank).
    recurrent_unroll : bool, optional
        Set ``unroll`` on rewritten LSTM/GRU layers (None keeps the layer's own setting). ``True`` (short,
        fixed sequence length) is what full-integer int8 TFLite conversion of the low-rank cells needs.
    layer_policies : mapping of str -> str, optional
        Per-layer rank policies: fnmatch pattern on the layer name (bare or qualified, as for ``include``)
        -> policy spec, e.g. ``{"fc1": "params:0.2"}`` for a big classifier layer while the convs follow
        ``rank_policy="macs:0.45"``. The first matching pattern (in mapping order) wins; layers no pattern
        matches follow ``rank_policy``. Every spec is checked up front; a pattern that matches no
        factorizable layer raises :class:`FactorizeError`.
    min_efficiency : float, optional
        Latency-aware skip: leave a layer as is when its estimated speed-up (MACs plus the target's
        ``output_cost`` per activation element written, :func:`edgelr.rewrite.cost.latency_estimate`) is
        below ``min_efficiency`` times its MAC reduction. Such layers are output-bound (e.g. a 1x1 conv
        that expands 64 -> 256 channels through rank 16: its MACs fall 3.2x, its int8 time ~2x), so their
        factorization costs accuracy for little speed. None (default): off. Layers without an estimate
        (recurrent) are never skipped for this reason.
    allocate : str
        ``layer`` (default): every layer meets its rank policy on its own. ``latency``: the policy ranks
        only set the budget, their total parameters and total weight loss (``-log`` kept energy) over the
        factorizable layers; ranks are then re-chosen model-wide (a layer may also be left as is) for the
        least estimated latency within both totals, then the least loss at that latency
        (:mod:`edgelr.rewrite.allocate`). Layers whose cuts buy little latency keep more rank, those where
        they buy much give more up, and Tucker-2 ranks are searched in both modes (e.g. ``r_in = C_in``,
        which folds the input factor away): no larger, no slower by the estimate, no more loss. Layers
        without an error proxy or latency model (CP, recurrent) keep their policy ranks. The ``policy``
        column reads ``<policy> (latency)`` for the layers allocated this way.
    calibration : numpy.ndarray or list of numpy.ndarray, optional
        A batch of model inputs (a few hundred). The model runs once over it (in batches) and each layer whose
        rewriter is data-aware (SVD of Dense, of 1x1/Conv1D kernels and of separable pointwise kernels,
        spatial SVD, Tucker-2; not CP, Embedding, recurrent) gets its input second moment; its decomposition
        then minimises the error of the layer's output on these inputs, and its rank policy, error proxy and
        ``rel_error`` read the data-aware spectrum. A batch that does not fit the model raises
        :class:`FactorizeError`. None (default): weights only.
    latency_table : edgelr.rewrite.cost.MeasuredLatency, optional
        Per-layer latencies measured on the device (``edgelr profile``, :func:`edgelr.profile.profile_model`):
        they replace the estimate in ``est_speedup``, ``min_efficiency`` and the latency allocation, and a
        layer whose chain at its ranks is not faster than the layer on that device is left as is.
    min_saving : int, optional
        The absolute-saving rule (:func:`edgelr.rewrite.plan.saving_reason`): leave a layer whole when its split
        saves fewer than ``min_saving`` parameters AND fewer than ``min_saving`` MACs per example, and a conv on
        <= 3 input channels unless its estimated speed-up reaches x1.2; the ``reason`` column says which. A rank
        search never tries a layer no ranks could pass (``plan.candidates()``). None (default): off;
        ``edgelr compress`` uses 1024 (``--min-saving``, :data:`edgelr.rewrite.plan.DEFAULT_MIN_SAVING`).

    Returns
    -------
    FactorizationPlan

    Raises
    ------
    FactorizeError
        Bad method, policy, pattern or ``min_reduction``; a bad ``layer_policies`` spec (named by its
        pattern) or pattern that matches no factorizable layer.
    """
    from edgelr.factorize import parse_rank_policy

    check_model(model)
    opts = plan_options(target, method=method, rank_policy=rank_policy, layer_policies=layer_policies,
                        include=include, skip=skip, min_reduction=min_reduction, min_efficiency=min_efficiency,
                        allocate=allocate, calibration=calibration, latency_table=latency_table,
                        min_saving=min_saving)
    policy = parse_rank_policy(opts.rank_policy) if isinstance(opts.rank_policy, str) else opts.rank_policy
    overrides = parse_layer_policies(opts.layer_policies)
    multiple = int(opts.target.rank_multiple) if opts.target is not None else 1
    floor = DEFAULT_RANK_FLOOR if rank_floor is None else int(rank_floor)
    includes, skips = _patterns(opts.include, "include"), _patterns(opts.skip, "skip")

    all_layers = list(walk_layers(model))
    for pattern in includes:
        hits = [(path, layer) for path, layer in all_layers if _matches(path, layer.name, [pattern])]
        if not hits:
            raise FactorizeError(f"include pattern '{pattern}' matches no layer of model '{model.name}'; "
                                 f"layers: {', '.join(p for p, _ in all_layers)}")
        if not any(ch in pattern for ch in "*?["):
            for path, layer in hits:
                if not applicable_methods(layer):
                    raise FactorizeError(
                        f"layer '{path}' ({layer_kind(layer)}) named in include cannot be factorized; supported: "
                        f"{', '.join(supported_layers())}")

    plans: dict[str, LayerPlan] = {}
    todo: list[LayerPlan] = []
    for path, layer in all_layers:
        applicable = applicable_methods(layer)
        if not applicable:
            continue
        rewriter = None
        for m in (opts.method, fallback_of(opts.method)):
            rewriter = get_rewriter(layer, m) if m else None
            if rewriter is not None:
                break
        lp = LayerPlan(path, layer, layer_kind(layer), rewriter.method if rewriter else "", rewriter,
                       cost_before=layer_cost(layer))
        plans[path] = lp
        if includes and not _matches(path, layer.name, includes):
            lp.skipped, lp.reason = True, "not matched by include"
        elif skips and _matches(path, layer.name, skips):
            lp.skipped, lp.reason = True, "matched by skip"
        elif rewriter is None:
            lp.skipped, lp.reason = True, f"method {opts.method} does not apply; applicable: {', '.join(applicable)}"
        else:
            todo.append(lp)
    for pattern, _ in overrides:
        if not any(_matches(path, lp.layer.name, [pattern]) for path, lp in plans.items()):
            raise FactorizeError(f"layer_policies pattern '{pattern}' matches no factorizable layer of model "
                                 f"'{model.name}'; factorizable layers: {', '.join(plans) or 'none'}")
    chosen_policy = {lp.path: next((pol for pattern, pol in overrides
                                    if _matches(lp.path, lp.layer.name, [pattern])), policy) for lp in todo}
    for lp in todo:
        lp.policy = str(chosen_policy[lp.path])

    plan = FactorizationPlan(model, plans, opts.method, str(policy), multiple, floor, opts.min_reduction,
                             progress, recurrent_unroll, layer_policies={p: str(pol) for p, pol in overrides},
                             output_cost=output_cost_for(opts.target), measured=opts.latency_table,
                             min_saving=opts.min_saving)
    if opts.calibration is not None:
        _calibrate(model, todo, opts.calibration, progress)
    from tqdm import tqdm

    for lp in tqdm(todo, desc="decompose", unit="layer", file=sys.stderr, disable=not progress, leave=False):
        assert lp.rewriter is not None
        lp.full_ranks = lp.rewriter.full_ranks(lp.layer)
        lp.decomposition = _decompose(lp)
        lp.ranks = tuple(int(r) for r in lp.rewriter.select_ranks(lp.layer, lp.decomposition,
                                                                   chosen_policy[lp.path], multiple, floor))
        lp.cost_after = lp.rewriter.cost(lp.layer, lp.ranks)
        lp.est_speedup = plan.est_speedup(lp.path, lp.ranks)
        reason = rule_reason(lp.cost_before, lp.cost_after, lp.est_speedup, opts.min_reduction,
                             opts.min_efficiency, plan.output_cost)
        if not reason and plan.measured is not None and lp.est_speedup is not None and lp.est_speedup <= 1.0:
            reason = f"measured on {plan.measured.device or 'the device'}: x{lp.est_speedup:.2f}, the chain does not pay"
        reason = reason or saving_reason(lp.layer, lp.cost_before, lp.cost_after, lp.est_speedup, opts.min_saving)
        if reason:
            lp.skipped, lp.reason = True, f"ranks {fmt_ranks(lp.ranks)}: {reason}"
        else:
            plan.selected[lp.path] = lp.ranks
    if opts.allocate == "latency":
        _allocate_model_wide(plan, [lp.path for lp in todo], opts.min_reduction, opts.min_efficiency)
    return plan


def _calibrate(model: Any, todo: list[LayerPlan], calibration: Any, progress: bool) -> None:
    """``lp.stats`` of the data-aware layers of ``todo``, from one pass of ``model`` over ``calibration``."""
    from edgelr.rewrite.calibration import collect_statistics

    requests = {}
    for lp in todo:
        assert lp.rewriter is not None
        stat = lp.rewriter.input_statistic(lp.layer)
        if stat is not None:
            requests[lp.path] = (lp.layer, stat)
    stats = collect_statistics(model, requests, calibration, progress=progress)
    for lp in todo:
        lp.stats = stats.get(lp.path)


def _decompose(lp: LayerPlan) -> Any:
    """The layer's full decomposition: data-aware when the plan collected its input statistics."""
    assert lp.rewriter is not None
    return lp.rewriter.decompose(lp.layer) if lp.stats is None else lp.rewriter.decompose(lp.layer, lp.stats)


def _allocate_model_wide(plan: FactorizationPlan, paths: list[str], min_reduction: float | None,
                         min_efficiency: float | None) -> None:
    """Replace the policy ranks of ``paths`` by :func:`edgelr.rewrite.allocate.allocate_ranks`' choice."""
    from edgelr.rewrite.allocate import allocate_ranks

    alloc = allocate_ranks(plan, paths, min_reduction, min_efficiency)
    plan.allocation = alloc
    for path, ranks in alloc.ranks.items():
        lp = plan.layers[path]
        lp.policy = f"{lp.policy} (latency)"
        if ranks is None:
            plan.selected.pop(path, None)
            if not lp.skipped:
                lp.skipped = True
                lp.reason = (f"left as is by the latency allocation (policy ranks {fmt_ranks(lp.ranks)} would cut "
                             f"its estimated latency x{lp.est_speedup or 1.0:.2f} for MACs "
                             f"x{lp.cost_before[1] / max(lp.cost_after[1], 1):.2f})")
            continue
        lp.ranks = ranks
        lp.cost_after = lp.rewriter.cost(lp.layer, ranks)
        lp.est_speedup = plan.est_speedup(path, ranks)
        lp.skipped, lp.reason = False, ""
        plan.selected[path] = ranks


def _report_row(lp: LayerPlan, rewrite: Rewrite | None, skipped: bool, reason: str, policy: str,
                est: float | None = None) -> dict[str, Any]:
    params0, macs0 = lp.cost_before
    if rewrite is None:
        return dict(layer=lp.path, kind=lp.kind, method=lp.method, policy=policy, ranks=lp.ranks,
                    params_before=params0, params_after=params0, macs_before=macs0, macs_after=macs0,
                    est_speedup=1.0, rel_error=0.0, skipped=True, reason=reason)
    return dict(layer=lp.path, kind=lp.kind, method=lp.method, policy=policy, ranks=rewrite.ranks,
                params_before=params0,
                params_after=rewrite.params, macs_before=macs0, macs_after=rewrite.macs,
                est_speedup=float("nan") if est is None else float(est),
                rel_error=float(rewrite.rel_error), skipped=skipped, reason=reason)


def build_factorized(model: Any, plan: FactorizationPlan, ranks: Mapping[str, Any] | None = None, *,
                     exact: bool = True, progress: bool | None = None) -> tuple[Any, Any]:
    """Materialize ``plan`` at the policy ranks, or at ``ranks`` for the layers it names.

    Parameters
    ----------
    model : tf_keras.Model
        The model the plan was made for (read only).
    plan : FactorizationPlan
        From :func:`plan_factorization`.
    ranks : mapping, optional
        Qualified layer name -> rank (int, applied to every rank of the layer) or tuple of ranks, or None to
        leave that layer as is. These layers are rewritten even when the plan skipped them for too small a
        reduction. Without it, the plan's selected ranks are used. A name the plan cannot rewrite or a rank
        out of range raises :class:`FactorizeError`.
    exact : bool
        False: cheaper decompositions for a rank search (plain HOSVD for Tucker-2 instead of HOOI sweeps).
    progress : bool, optional
        Default: the plan's setting.

    Returns
    -------
    (tf_keras.Model, pandas.DataFrame)
        The new model and one report row per planned layer (columns ``REPORT_COLUMNS``); ``policy`` is the
        rank policy that chose the row's ranks ('' when ``ranks`` gave them or the layer was skipped before
        rank selection).
    """
    import pandas as pd
    from tqdm import tqdm

    if plan.model is not model:
        raise FactorizeError("plan: it was made for another model; call plan_factorization(model) for this one")
    chosen: dict[str, Ranks | None] = dict(plan.selected)
    forced: set[str] = set()
    for path, value in (ranks or {}).items():
        lp = plan.layers.get(path)
        if lp is None or lp.rewriter is None:
            known = ", ".join(plan.candidates()) or "none"
            raise FactorizeError(f"ranks: layer '{path}' is not a factorizable layer of this plan; known: {known}")
        if value is None:
            chosen[path] = None
            continue
        if lp.decomposition is None:
            lp.full_ranks = lp.rewriter.full_ranks(lp.layer)
            lp.decomposition = _decompose(lp)
        chosen[path] = lp.rewriter.check_ranks(lp.layer, value)
        forced.add(path)

    rewrites: dict[str, Rewrite] = {}
    rows = []
    show = plan.progress if progress is None else progress
    for path, lp in tqdm(plan.layers.items(), desc="rewrite", unit="layer", file=sys.stderr, disable=not show,
                         leave=False):
        r = chosen.get(path)
        if r is None:
            reason = lp.reason if lp.skipped and path not in (ranks or {}) else (lp.reason or "left as is by ranks")
            rows.append(_report_row(lp, None, True, reason, "" if path in (ranks or {}) else lp.policy))
            continue
        assert lp.rewriter is not None
        rw = lp.rewriter.materialize(lp.layer, lp.decomposition, r, exact=exact)
        if plan.recurrent_unroll is not None:
            for new in rw.chain:
                if hasattr(new.layer, "unroll") and hasattr(new.layer, "cell"):
                    new.layer.unroll = bool(plan.recurrent_unroll)
        rewrites[path] = rw
        rows.append(_report_row(lp, rw, False, "ranks given" if path in forced else "",
                                "" if path in forced else lp.policy, plan.est_speedup(path, rw.ranks)))
    new_model = rebuild_with(model, rewrites)
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    return new_model, report
