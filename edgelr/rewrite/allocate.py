"""Model-wide, latency-aware rank allocation (``allocate="latency"``).

A per-layer policy (``params:0.25`` ...) gives every layer the same share, whether or not cutting that
layer's MACs buys speed. On XNNPACK's int8 kernels an expanding 1x1 conv (64 -> 256 channels through rank 16)
loses 3.2x of its MACs but only ~2x of its time, because every element it writes is requantized
(:func:`edgelr.rewrite.cost.latency_estimate`), while a 3x3 conv on a 7x7 map gains about what it loses.

:func:`allocate_ranks` keeps the TOTALS the per-layer policy ranks reach over the participating layers and
re-chooses every layer's ranks (or leaves the layer whole) for the least estimated latency:

    minimise  sum_l T_l(r_l)   subject to   sum_l P_l(r_l) <= P,   sum_l loss_l(r_l) <= E

``T_l`` is :func:`~edgelr.rewrite.cost.latency_estimate` of the layer or its chain, ``P_l`` its parameters,
``loss_l = -log(1 - e_l)`` with ``e_l`` the rewriter's spectral error proxy (the squared relative error of
a truncated SVD; for Tucker-2 ``1 - (1 - t_in)(1 - t_out)`` from the energy each channel-mode unfolding
discards). ``-log`` of the kept energy adds up along a chain of layers and grows without bound as a layer
loses everything, so no layer is cut to nothing to pay for the others. ``P``, ``E`` are the totals at
the policy's ranks. A second pass then spends what is left of the parameter budget on less loss at that
latency. So the result is never larger, never slower by the estimate, and never worse by the summed loss
than the per-layer allocation.

Both passes are Lagrangian relaxations, the classic bit-allocation method: for multipliers ``(a, b)`` each
layer independently takes the option minimising ``objective + a * cost1 + b * cost2``; a grid over
``(a, b)`` keeps the feasible assignment with the best objective. When none is feasible, the policy
ranks are kept.

With a device table (``plan.measured``, ``edgelr profile``) ``T_l`` is the latency measured on the
device (ms, interpolated between the profiled ranks) instead of the estimate, and a chain that is not
faster than its layer on that device is no option.

Options per layer: left as is, or ranks on a ladder of the target's rank multiple (at most ~64 steps
per rank), each reducing params and MACs by ``min_reduction``, meeting ``min_efficiency`` when set and the
absolute-saving rule (``plan.min_saving``, :func:`edgelr.rewrite.plan.saving_reason`).
Layers whose rewriter has no error proxy or no latency model (CP, recurrent) keep their policy ranks.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from edgelr.rewrite.cost import latency_estimate
from edgelr.rewrite.plan import Allocation, FactorizationPlan, LayerPlan, rule_reason, saving_reason
from edgelr.rewrite.registry import Ranks

MAX_STEPS = 64
_PAD = 1e30
_MULTIPLIERS = np.concatenate([[0.0], np.logspace(-3, 3, 49)])


@dataclass
class Option:
    """One choice for one layer: ``ranks`` None means the layer stays as is; ``error`` is the error proxy,
    ``latency`` :func:`~edgelr.rewrite.cost.latency_estimate`."""

    ranks: Ranks | None
    error: float
    params: int
    macs: int
    latency: float


def rank_ladder(full: int, multiple: int) -> list[int]:
    """Ranks tried for one mode: multiples of ``multiple`` (coarsened to at most ``MAX_STEPS``) and ``full``."""
    multiple = max(1, int(multiple))
    step = multiple * max(1, math.ceil(full / (multiple * MAX_STEPS)))
    return list(range(step, full, step)) + [full]


def _option(plan: FactorizationPlan, lp: LayerPlan, ranks: Ranks | None) -> Option:
    """Layer ``lp`` left as is (``ranks`` None) or rewritten at ``ranks``: error proxy, params, est. latency."""
    rw = lp.rewriter
    if ranks is None:
        params, macs, error = lp.cost_before[0], lp.cost_before[1], 0.0
    else:
        (params, macs), error = rw.cost(lp.layer, ranks), float(rw.error_proxy(lp.decomposition, ranks))
    latency = plan.latency(lp.path, ranks)
    return Option(None if ranks is None else tuple(int(r) for r in ranks), error, int(params), int(macs),
                  float(latency if latency is not None else latency_estimate(macs, 0, plan.output_cost)))


def layer_options(plan: FactorizationPlan, path: str, min_reduction: float | None,
                  min_efficiency: float | None) -> list[Option] | None:
    """Every admissible option of one planned layer (first: left as is), or None when it cannot take part.
    An option is admissible when it passes the plan's rules (:func:`edgelr.rewrite.plan.rule_reason`)."""
    lp = plan.layers[path]
    rw = lp.rewriter
    if rw is None or lp.decomposition is None or lp.ranks is None:
        return None
    if rw.outputs(lp.layer, None) is None or rw.error_proxy(lp.decomposition, lp.full_ranks) is None:
        return None
    whole = _option(plan, lp, None)
    options = [whole]
    for ranks in itertools.product(*(rank_ladder(f, plan.multiple) for f in lp.full_ranks)):
        opt = _option(plan, lp, ranks)
        if plan.measured is not None and opt.latency >= whole.latency:
            continue  # measured on the device: this chain does not pay there
        est_speedup = whole.latency / max(opt.latency, 1e-9 if plan.measured is not None else 1.0)
        if not rule_reason(lp.cost_before, (opt.params, opt.macs), est_speedup, min_reduction, min_efficiency,
                           plan.output_cost) and not saving_reason(lp.layer, lp.cost_before, (opt.params, opt.macs),
                                                                   est_speedup, plan.min_saving):
            options.append(opt)
    return _pareto(options)


def _pareto(options: list[Option]) -> list[Option]:
    """Drop options another option beats or equals on error, params and latency (keeps 'as is')."""
    order = sorted(options[1:], key=lambda o: (o.error, o.params, o.latency))
    kept: list[Option] = []
    for o in order:
        if not any(k.params <= o.params and k.latency <= o.latency for k in kept):
            kept.append(o)
    return [options[0]] + kept


def _loss(error: float) -> float:
    """``-log`` of the kept energy share: additive over the layers of a chain, and steep near total loss."""
    return -math.log(max(1.0 - float(error), 1e-6))


def _policy_option(plan: FactorizationPlan, path: str) -> Option:
    """The option the per-layer policy chose (its ranks, or 'as is' when the plan skipped the layer)."""
    lp = plan.layers[path]
    return _option(plan, lp, None if lp.skipped else lp.ranks)


def _lagrangian(objective: np.ndarray, scale: float, costs: list[tuple[np.ndarray, float]],
                start: np.ndarray | None = None) -> np.ndarray | None:
    """Option index per layer (row) minimising ``objective.sum()`` with each ``cost.sum() <= budget``.

    The best feasible point of a grid of two Lagrange multipliers (one per cost, on costs and objective
    divided by their totals at the policy ranks: ``scale`` and the budgets) and the feasible ``start`` are
    each improved by :func:`_polish`; the better one is returned, so the result is never worse than
    ``start``. None when neither exists."""
    rows = np.arange(objective.shape[0])
    (c1, b1), (c2, b2) = costs
    if scale <= 0:  # e.g. zero loss at full-rank policy ranks: fall back to the largest real entry
        real = objective[objective < _PAD]
        scale = float(np.abs(real).max()) if real.size else 1.0
    base, n1, n2 = objective / max(scale, 1e-12), c1 / max(b1, 1e-12), c2 / max(b2, 1e-12)
    best: tuple[float, np.ndarray] | None = None
    for a in _MULTIPLIERS:
        for b in _MULTIPLIERS:
            pick = np.argmin(base + a * n1 + b * n2, axis=1)
            if c1[rows, pick].sum() > b1 * (1 + 1e-9) or c2[rows, pick].sum() > b2 * (1 + 1e-9):
                continue
            total = float(objective[rows, pick].sum())
            if best is None or total < best[0]:
                best = (total, pick)
    found = [] if best is None else [_polish(best[1], objective, costs)]
    if start is not None and all(c[rows, start].sum() <= b * (1 + 1e-9) for c, b in costs):
        found.append(_polish(start, objective, costs))
    return min(found, key=lambda pick: float(objective[rows, pick].sum())) if found else None


def _polish(pick: np.ndarray, objective: np.ndarray, costs: list[tuple[np.ndarray, float]],
            max_sweeps: int = 50) -> np.ndarray:
    """Coordinate descent from a Lagrangian solution: switch one layer at a time to the feasible option
    that improves the objective most (the relaxation only reaches points on the convex hull, leaving slack)."""
    pick = pick.copy()
    rows = np.arange(objective.shape[0])
    totals = [float(c[rows, pick].sum()) for c, _ in costs]
    for _ in range(max_sweeps):
        changed = False
        for i in rows:
            cur = int(pick[i])
            feasible = np.ones(objective.shape[1], dtype=bool)
            for (c, budget), total in zip(costs, totals):
                feasible &= total - c[i, cur] + c[i] <= budget * (1 + 1e-9)
            gain = np.where(feasible, objective[i, cur] - objective[i], -np.inf)
            j = int(np.argmax(gain))
            if gain[j] > 1e-12 * max(abs(float(objective[i, cur])), 1.0):
                for k, (c, _) in enumerate(costs):
                    totals[k] += float(c[i, j] - c[i, cur])
                pick[i] = j
                changed = True
        if not changed:
            break
    return pick


def allocate_ranks(plan: FactorizationPlan, paths: list[str], min_reduction: float | None = None,
                   min_efficiency: float | None = None) -> Allocation:
    """Re-choose the ranks of ``paths`` (planned layers): fastest by the estimate within the policy's totals.

    Two stages, both :func:`_lagrangian`: (1) the least estimated latency with total parameters and total
    loss (``-log`` kept energy, :func:`_loss`) no larger than at the policy ranks; (2) at that latency, the
    least loss within the same parameter total. When neither stage finds a feasible assignment the policy
    ranks are kept (``improved`` False).

    Parameters
    ----------
    plan : FactorizationPlan
        With policy ranks set (``LayerPlan.ranks``) and ``skipped`` as the per-layer rules decided.
    paths : list of str
        Layers that may take part; those without an error proxy or latency model are left out.
    min_reduction, min_efficiency
        The plan's rules; every option must meet them (see :func:`plan_factorization`).

    Returns
    -------
    Allocation
        (:class:`edgelr.rewrite.plan.Allocation`, kept by the plan as ``plan.allocation``)
    """
    table: dict[str, list[Option]] = {}
    for path in paths:
        opts = layer_options(plan, path, min_reduction, min_efficiency)
        if opts is not None:
            table[path] = opts
    names = list(table)
    policy = {p: _policy_option(plan, p) for p in names}
    for p in names:  # the policy's own choice is always an option (the start of the search)
        if not any(o.ranks == policy[p].ranks for o in table[p]):
            table[p].append(policy[p])
    budget_p = float(sum(o.params for o in policy.values()))
    budget_t = float(sum(o.latency for o in policy.values()))
    loss_policy = float(sum(_loss(o.error) for o in policy.values()))
    keep = Allocation({p: policy[p].ranks for p in names}, (int(budget_p), budget_t), (int(budget_p), budget_t),
                      loss_policy, loss_policy, False)
    if not names:
        return keep
    width = max(len(v) for v in table.values())
    loss, par, lat = (np.full((len(names), width), _PAD) for _ in range(3))  # padding: never picked
    start = np.zeros(len(names), dtype=int)
    for i, p in enumerate(names):
        for j, o in enumerate(table[p]):
            loss[i, j], par[i, j], lat[i, j] = _loss(o.error), o.params, o.latency
            if o.ranks == policy[p].ranks:
                start[i] = j
    pick = _lagrangian(lat, budget_t, [(par, budget_p), (loss, loss_policy)], start)
    if pick is None:  # pragma: no cover - the start (policy ranks) is always feasible
        return keep
    rows = np.arange(len(names))
    # stage 2 starts from stage 1's pick, which is feasible there: never more loss than it
    pick = _lagrangian(loss, loss_policy, [(par, budget_p), (lat, float(lat[rows, pick].sum()))], pick)
    chosen = {p: table[p][int(pick[i])].ranks for i, p in enumerate(names)}
    return Allocation(chosen, (int(budget_p), budget_t), (int(par[rows, pick].sum()), float(lat[rows, pick].sum())),
                      loss_policy, float(loss[rows, pick].sum()), any(chosen[p] != policy[p].ranks for p in names))


def model_latency(plan: FactorizationPlan, ranks: dict[str, Ranks | None]) -> float:
    """Latency of the plan's model with the layers of ``ranks`` rewritten (path -> ranks, None = as is; layers
    not named stay as is).

    With a device table (``plan.measured``) in ms: the whole model as measured (``model_ms``) plus each
    layer's change (entry at its ranks minus entry as is) times the table's ``context_scale`` (a layer inside
    the model vs alone, :meth:`edgelr.rewrite.cost.MeasuredLatency.calibrate`); NaN when the table has no
    whole-model measurement. Without one: the sum of the layers' estimates (MAC-equivalents; the layers
    without a latency model left out), comparable only between configurations."""
    total = 0.0
    scale = 1.0
    if plan.measured is not None:
        total = float(plan.measured.model_ms)
        scale = plan.measured.context_scale
    for path in plan.layers:
        before = plan.latency(path, None)
        if before is None:
            continue
        r = ranks.get(path)
        after = plan.latency(path, tuple(int(x) for x in r)) if r is not None else before
        total += scale * (after - before) if plan.measured is not None else after
    return total
