"""Accuracy-aware per-layer rank search (``--max-accuracy-drop X``).

After AIMET's greedy compression-ratio selection, made cheap:

1. **One decomposition per layer** (:func:`edgelr.rewrite.plan_factorization`), re-materialized at every
   candidate rank (SVD truncation / HOSVD core truncation, ``exact=False``).
2. **Per-layer sensitivity**: for each factorizable layer and each kept share of its MACs in
   :data:`RATIOS`, only that layer is compressed and the model is scored on a validation subset.
3. **Greedy configurations**: for a per-layer tolerance ``t``, every layer takes its smallest share whose
   drop is ``<= t``; sweeping ``t`` over the measured drops gives a family of configurations from mild to
   aggressive. Uniform configurations (every layer at the same share) and the rank policy's own choice are
   added (per-layer ``layer_policies`` overrides only shape that last one: the sweep sets every layer's
   ranks itself). Each is built once and scored on the subset (the candidates table / accuracy-vs-MACs plot).
4. **One fine-tune** of the chosen configuration: the most compressed candidate whose un-fine-tuned drop is
   within the recoverable slack ``max(4 X, X + 3)`` points (distillation recovers most of it), then QAT,
   int8 conversion and validation on the test split against the float original.
5. **Back off** when the validated ``.tflite`` misses the budget: the next candidate with a smaller
   un-fine-tuned drop and at least 5 % more MACs, up to ``max_trials`` attempts. If none meets the budget
   the attempt with the smallest drop is returned and the result says the budget was not met.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import numpy as np

from edgelr.compress.attempt import Attempt, AttemptRunner
from edgelr.compress.evaluate import drop, predict, score
from edgelr.rewrite.options import PlanOptions
from edgelr.rewrite.plan import FactorizationPlan, LayerPlan

RATIOS: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
"""Kept share of a layer's MACs (params for layers without MACs) tried in the sensitivity sweep."""


def _round_up(r: int, multiple: int, full: int) -> int:
    if multiple > 1:
        r = int(math.ceil(r / multiple) * multiple)
    return max(1, min(full, r))


def ranks_for_share(lp: LayerPlan, share: float, multiple: int) -> tuple[int, ...] | None:
    """The largest ranks (full ranks scaled together, rounded up to ``multiple``) whose MACs (params when
    the layer has no MACs) are at most ``share`` of the original layer's; None when even rank 1 is too big."""
    full = tuple(int(f) for f in lp.full_ranks)
    top = max(full)
    p0, m0 = lp.cost_before
    idx = 1 if m0 > 0 else 0
    budget = share * (m0 if m0 > 0 else p0)
    best = None
    seen: set[tuple[int, ...]] = set()
    for k in range(1, top + 1):
        ranks = tuple(_round_up(int(math.ceil(f * k / top)), multiple, f) for f in full)
        if ranks in seen:
            continue
        seen.add(ranks)
        if lp.cost(ranks)[idx] <= budget:
            best = ranks
        elif best is not None:
            break
    return best


def _config_cost(plan: FactorizationPlan, config: dict[str, tuple[int, ...] | None],
                 base: tuple[int, int]) -> tuple[int, int]:
    params, macs = base
    for path, ranks in config.items():
        if ranks is None:
            continue
        lp = plan.layers[path]
        p1, m1 = lp.cost(ranks)
        params += p1 - lp.cost_before[0]
        macs += m1 - lp.cost_before[1]
    return params, macs


def search_and_run(runner: AttemptRunner, plan_options: PlanOptions,
                   log: Callable[[str], None]) -> tuple[Attempt, dict[str, Any]]:
    """Run the search (module docstring), each attempt through ``runner``; ``log`` reports progress.

    Returns
    -------
    (Attempt, dict)
        The chosen attempt and the search record: ``budget``, ``budget_met``, ``sensitivity`` rows
        (layer, share, ranks, macs, val_score, val_drop), ``candidates`` rows (label, ranks, params, macs,
        macs_x, val_score, val_drop, tried, tflite_score, tflite_drop), ``trials``.
    """
    from tqdm import tqdm

    from edgelr.rewrite.cost import model_cost
    from edgelr.rewrite import build_factorized, plan_factorization

    o, d, task, model = runner.opts, runner.data, runner.task, runner.original
    budget = float(o.max_accuracy_drop)
    log(f"rank search: budget {budget:g} points; decomposing every layer once")
    plan = plan_factorization(model, progress=o.progress, **plan_options.kwargs(min_reduction=None))
    paths = plan.candidates()
    xs, ys = d.x_val[:o.search_subset], d.y_val[:o.search_subset]
    base_score = score(predict(model, xs), ys, task)
    base_cost = model_cost(model)

    def evaluate(config: dict[str, Any]) -> tuple[Any, Any, float]:
        ranks = {p: config.get(p) for p in paths}
        new, factor_report = build_factorized(model, plan, ranks, exact=False, progress=False)
        return new, factor_report, score(predict(new, xs), ys, task)

    shares: dict[str, list[tuple[float, tuple[int, ...]]]] = {}
    for p in paths:
        opts_p = []
        for s in RATIOS:
            r = ranks_for_share(plan.layers[p], s, plan.multiple)
            if r is not None and all(r != q for _, q in opts_p):
                opts_p.append((s, r))
        shares[p] = opts_p
    sensitivity: list[dict[str, Any]] = []
    total = sum(len(v) for v in shares.values())
    drops: dict[str, list[tuple[float, tuple[int, ...], float]]] = {p: [] for p in paths}
    with tqdm(total=total, desc="sensitivity", unit="eval", file=sys.stderr, disable=not o.progress,
              leave=False) as bar:
        for p in paths:
            for s, r in shares[p]:
                _, _, sc = evaluate({p: r})
                dr = drop(base_score, sc, task)
                drops[p].append((s, r, dr))
                sensitivity.append({"layer": p, "share": s, "ranks": list(r),
                                    "macs": plan.layers[p].cost(r)[1], "val_score": sc, "val_drop": dr})
                bar.update(1)

    # greedy configurations over per-layer tolerances
    tolerances = sorted({max(0.0, dr) for rows in drops.values() for _, _, dr in rows})
    if len(tolerances) > 10:
        tolerances = [tolerances[int(i)] for i in np.linspace(0, len(tolerances) - 1, 10)]
    configs: list[tuple[str, dict[str, Any]]] = []
    keys: set[tuple[Any, ...]] = set()
    for t in tolerances:
        cfg: dict[str, Any] = {}
        for p in paths:
            ok = [(s, r) for s, r, dr in drops[p] if dr <= t]
            cfg[p] = min(ok)[1] if ok else None
        key = tuple(cfg[p] for p in paths)
        if key not in keys and any(v is not None for v in key):
            keys.add(key)
            configs.append((f"t={t:.2f}", cfg))
    for share in RATIOS:  # uniform configurations fill the gaps between greedy ones (smoother back-off)
        cfg = {p: next((r for s, r, _ in drops[p] if s == share), None) for p in paths}
        key = tuple(cfg[p] for p in paths)
        if key not in keys and any(v is not None for v in key):
            keys.add(key)
            configs.append((f"uniform {share:g}", cfg))
    if plan.selected:
        cfg = {p: plan.selected.get(p) for p in paths}
        key = tuple(cfg[p] for p in paths)
        if key not in keys:
            keys.add(key)
            overrides = "".join(f", {k}={v}" for k, v in plan.layer_policies.items())
            configs.append((f"policy {plan.rank_policy}{overrides}", cfg))
    candidates: list[dict[str, Any]] = []
    for label, cfg in tqdm(configs, desc="candidates", unit="config", file=sys.stderr, disable=not o.progress,
                           leave=False):
        params, macs = _config_cost(plan, cfg, base_cost)
        _, _, sc = evaluate(cfg)
        candidates.append({"label": label, "ranks": {p: (list(r) if r else None) for p, r in cfg.items()},
                           "params": int(params), "macs": int(macs), "macs_x": base_cost[1] / max(macs, 1),
                           "val_score": sc, "val_drop": drop(base_score, sc, task), "tried": False,
                           "tflite_score": None, "tflite_drop": None, "_cfg": cfg})
    candidates.sort(key=lambda c: c["macs"])

    slack = max(4.0 * budget, budget + 3.0)
    order = [c for c in candidates if c["val_drop"] <= slack] or candidates[-1:]
    trials: list[Attempt] = []
    current = order[0] if order else None
    while current is not None and len(trials) < max(1, o.max_trials):
        current["tried"] = True
        new, factor_report = build_factorized(model, plan, {p: current["_cfg"].get(p) for p in paths}, exact=True,
                                              progress=False)
        attempt = runner.run(new, factor_report, current["label"])
        tfl = attempt.validation.accuracy if task.classifier else attempt.validation.loss
        current["tflite_score"], current["tflite_drop"] = tfl, attempt.tflite_drop
        trials.append(attempt)
        log(f"rank search: candidate {current['label']} ({current['macs_x']:.2f}x fewer MACs): "
                f"{runner.quantization} tflite drop {attempt.tflite_drop:.2f} points (budget {budget:g})")
        if attempt.tflite_drop <= budget:
            break
        nxt = [c for c in candidates if not c["tried"] and c["macs"] >= 1.05 * current["macs"]
               and c["val_drop"] <= current["val_drop"]]
        current = nxt[0] if nxt else None
        if current is not None:
            log(f"rank search: over budget, backing off to {current['label']}")
    if not trials:  # no factorizable layer: fall back to the plan's policy ranks (keeps the model as is)
        new, factor_report = build_factorized(model, plan, progress=False)
        trials.append(runner.run(new, factor_report, "unfactorized"))
    met = [a for a in trials if a.tflite_drop <= budget]
    chosen = met[0] if met else min(trials, key=lambda a: a.tflite_drop)
    for c in candidates:
        c.pop("_cfg", None)
    info = {"budget": budget, "budget_met": bool(met), "slack": slack, "subset": len(xs),
            "original_subset_score": base_score, "ratios": list(RATIOS), "sensitivity": sensitivity,
            "candidates": candidates, "chosen": chosen.label,
            "trials": [{"label": a.label, "macs": a.macs, "params": a.params, "tflite_drop": a.tflite_drop}
                       for a in trials]}
    return chosen, info


def plot_candidates(info: dict[str, Any], path: Any, summary: dict[str, Any] | None = None) -> bool:
    """Accuracy (score) vs MACs of the search candidates as a PNG; False if matplotlib is unavailable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return False
    cands = info.get("candidates") or []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if cands:
        ax.plot([c["macs"] for c in cands], [c["val_score"] for c in cands], "o-", color="tab:blue",
                label="factorized, before fine-tune (val subset)")
        tried = [c for c in cands if c.get("tflite_score") is not None]
        if tried:
            ax.plot([c["macs"] for c in tried], [c["tflite_score"] for c in tried], "s", color="tab:red",
                    label="fine-tuned, quantized .tflite (test)")
    if summary:
        orig = summary["original"]
        ax.plot([orig["macs"]], [orig["score"]], "*", color="black", markersize=12, label="original (test)")
        if summary.get("metric") == "accuracy":
            ax.axhline(orig["score"] - info["budget"], color="gray", linestyle="--", label="budget")
    ax.set_xlabel("MACs per example")
    ax.set_ylabel("accuracy (%)" if (summary or {}).get("metric", "accuracy") == "accuracy" else "mse")
    ax.set_title("edgelr compress: accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return True
