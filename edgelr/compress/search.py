"""Accuracy-aware rank search (``--max-accuracy-drop X``): the most compressed model whose validated
``.tflite`` stays within the budget.

1. **One decomposition per layer** (:func:`edgelr.rewrite.plan_factorization`, with the run's own plan
   options, so the plan's policy ranks are exactly what a run without a budget would build), re-materialized
   at every candidate rank (SVD truncation / HOSVD core truncation, ``exact=False``).
2. **The search signal** (:func:`search_inputs`, :func:`edgelr.compress.evaluate.fidelity`): how far a
   factorized (not yet fine-tuned) model is from the original, on the validation inputs topped up with a
   seeded draw of *training inputs* to ``search_subset`` samples. Labels are not used: for a classifier the
   signal is the % of inputs where its top-1 class differs from the original's (``val_drop``; an upper bound
   of its accuracy drop on the same inputs), else the mean squared difference of the outputs. With few
   labels (a 7-sample validation split scored every candidate 100 %) this still tells candidates apart, and
   unlabeled inputs are as good as labelled ones for it.
3. **Per-layer sensitivity**: for each factorizable layer and each kept share of its MACs in
   :data:`RATIOS`, only that layer is compressed and the signal is measured.
4. **Candidates**, each built once and measured (the candidates table / accuracy-vs-MACs plot):
   the target's rank policy as the run would apply it (``policy ...``, plus ``--layer-policy`` overrides);
   greedy configurations (for a per-layer tolerance ``t``, every layer takes its smallest share whose
   signal is ``<= t``, ``t`` swept over the measured values); uniform ladders (every layer at the same share
   of its MACs, :data:`LADDER`, and of its parameters).
5. **Trials** (fine-tune with distillation, QAT, int8 conversion, validation of the ``.tflite`` on the test
   split against the float original), at most ``max_trials``, chosen by :func:`next_trial`:

   - first the policy candidate (what the run gives without a budget);
   - then, while a trial met the budget, candidates at least 5 % more compressed than the best one met;
     while none did (backing off), any untried candidate;
   - skipping a candidate *predicted to fail*: one that is no less compressed than a failed trial (within
     5 %) and whose signal is no better;
   - in that pool, first the candidates whose signal is within the budget (most compressed first), then
     those within the recoverable slack ``max(4 X, X + 3)`` (distillation recovers most of it; most
     compressed first), then (only when nothing met the budget yet) the rest by signal, best first.

   The result is the **least-MACs trial that met the budget**, so it is never less compressed than any
   tried candidate whose ``.tflite`` met it, nor than the policy candidate when that met it. If none met
   it, the trial with the smallest drop is returned and the result says the budget was not met.

Same seed, same result: every trial starts from the run's seed (:func:`edgelr.compress.attempt.set_seeds`,
Python ``random``, NumPy and TensorFlow) with TensorFlow's op determinism on during the run (see
:func:`edgelr.compress.attempt.deterministic`), the search inputs and int8 calibration samples are seeded
draws, and validation runs LiteRT on one thread. What is left is outside edgelr: a different TensorFlow,
oneDNN or XNNPACK build, or a CPU with other vector instructions, sums in another order and can change
the last bits of a fine-tuned weight, and through it a borderline prediction.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import numpy as np

from edgelr.compress.attempt import Attempt, AttemptRunner
from edgelr.compress.evaluate import fidelity, fidelity_drop, predict
from edgelr.rewrite.options import PlanOptions
from edgelr.rewrite.plan import FactorizationPlan, LayerPlan

RATIOS: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
"""Kept share of a layer's MACs (params for layers without MACs) tried in the sensitivity sweep."""

LADDER: tuple[float, ...] = (0.0625, 0.09375, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.5, 0.625, 0.75)
"""Kept shares of the uniform candidates (every layer at the same share of its MACs, and of its params)."""

MIN_GAIN = 0.05
"""A trial after a met budget must save at least this share more MACs than the best met; a candidate within
this share of a failed trial's MACs and no better signal is predicted to fail."""


def _round_up(r: int, multiple: int, full: int) -> int:
    if multiple > 1:
        r = int(math.ceil(r / multiple) * multiple)
    return max(1, min(full, r))


def ranks_for_share(lp: LayerPlan, share: float, multiple: int, by: str = "macs") -> tuple[int, ...] | None:
    """The largest ranks (full ranks scaled together, rounded up to ``multiple``) whose MACs (``by="macs"``;
    params when the layer has no MACs, or ``by="params"``) are at most ``share`` of the original layer's;
    None when even rank 1 is too big."""
    full = tuple(int(f) for f in lp.full_ranks)
    top = max(full)
    p0, m0 = lp.cost_before
    idx = 1 if m0 > 0 and by == "macs" else 0
    budget = share * (m0 if idx == 1 else p0)
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


def search_inputs(x_val: np.ndarray, x_train: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, int]:
    """The inputs the search signal is measured on: the first ``n`` validation inputs, topped up to ``n``
    with a seeded draw of training inputs (in their original order) when the validation split is smaller.

    Returns
    -------
    (ndarray of shape (m, *input_shape), int)
        The inputs (``m = min(n, len(x_val) + len(x_train))``) and how many of them are training inputs.
    """
    x_val = np.asarray(x_val[:n], np.float32)
    extra = min(max(0, n - len(x_val)), len(x_train))
    if extra == 0:
        return x_val, 0
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x_train), size=extra, replace=False))
    return np.concatenate([x_val, np.asarray(x_train[idx], np.float32)]), extra


def next_trial(candidates: list[dict[str, Any]], budget: float, slack: float, key: str = "macs"
               ) -> dict[str, Any] | None:
    """The next candidate to fine-tune, convert and validate (module docstring, step 5), or None to stop.

    Parameters
    ----------
    candidates : list of dict
        Each with ``macs``, ``val_drop`` (the search signal), ``tried`` and, when tried, ``tflite_drop``.
    budget : float
        Allowed drop of the validated ``.tflite``, points.
    slack : float
        Largest signal still worth a trial.
    key : str
        What "more compressed" means: ``macs``, or ``latency_ms`` (predicted from the device's latency table;
        :func:`latency_objective`).
    """
    tried = [c for c in candidates if c["tried"]]
    met = [c for c in tried if c["tflite_drop"] is not None and c["tflite_drop"] <= budget]
    failed = [c for c in tried if c not in met]
    best = min((c[key] for c in met), default=None)

    def predicted_to_fail(c: dict[str, Any]) -> bool:
        return any(f[key] >= (1.0 - MIN_GAIN) * c[key] and f["val_drop"] <= c["val_drop"] for f in failed)

    pool = [c for c in candidates if not c["tried"] and not predicted_to_fail(c)
            and (best is None or c[key] <= (1.0 - MIN_GAIN) * best)]
    for limit in (budget, slack):
        tier = [c for c in pool if c["val_drop"] <= limit]
        if tier:
            return min(tier, key=lambda c: (c[key], c["val_drop"]))
    if best is None and pool:
        return min(pool, key=lambda c: (c["val_drop"], -c[key]))
    return None


def search_and_run(runner: AttemptRunner, plan_options: PlanOptions,
                   log: Callable[[str], None]) -> tuple[Attempt, dict[str, Any]]:
    """Run the search (module docstring), each attempt through ``runner``; ``log`` reports progress.

    Returns
    -------
    (Attempt, dict)
        The chosen attempt and the search record: ``budget``, ``budget_met``, ``signal``, ``subset`` (search
        inputs, ``subset_from_train`` of them training inputs), ``sensitivity`` rows (layer, share, ranks,
        macs, val_score, val_drop), ``candidates`` rows (label, kind, ranks, params, macs, macs_x, val_score,
        val_drop, tried, trial, tflite_score, tflite_drop), ``trials`` in the order they ran, ``chosen``.
        ``val_score`` is the search signal: % top-1 agreement with the original (classifiers) or the mean
        squared difference from its outputs; ``val_drop`` is 100 - agreement (or that difference).
    """
    from tqdm import tqdm

    from edgelr.rewrite import build_factorized, plan_factorization
    from edgelr.rewrite.cost import model_cost

    opts, data, task, model = runner.opts, runner.data, runner.task, runner.original
    budget = float(opts.max_accuracy_drop) if opts.max_accuracy_drop is not None else math.inf
    log(f"rank search: budget {budget:g} points; decomposing every layer once")
    plan = plan_factorization(model, progress=opts.progress, **plan_options.kwargs())
    paths = plan.candidates()
    xs, from_train = search_inputs(data.x_val, data.x_train, opts.search_subset, opts.seed)
    reference = predict(model, xs)
    signal = ("top-1 agreement with the original (%)" if task.classifier
              else "mean squared difference from the original's outputs")
    log(f"rank search: signal = {signal} on {len(xs)} inputs ({len(xs) - from_train} validation, "
        f"{from_train} training; labels not used)")
    base_cost = model_cost(model)

    def measure(config: dict[str, Any]) -> tuple[float, float]:
        ranks = {p: config.get(p) for p in paths}
        new, _ = build_factorized(model, plan, ranks, exact=False, progress=False)
        out = predict(new, xs)
        return fidelity(out, reference, task), fidelity_drop(out, reference, task)

    def at_share(p: str, share: float, by: str = "macs") -> tuple[int, ...] | None:
        """Layer ``p``'s ranks at ``share``, or None (whole) where the plan's absolute-saving rule says the
        split does not pay at those ranks."""
        r = ranks_for_share(plan.layers[p], share, plan.multiple, by)
        return None if r is None or plan.saving_reason(p, r) else r

    shares: dict[str, list[tuple[float, tuple[int, ...]]]] = {}
    for p in paths:
        opts_p: list[tuple[float, tuple[int, ...]]] = []
        for s in RATIOS:
            r = at_share(p, s)
            if r is not None and all(r != q for _, q in opts_p):
                opts_p.append((s, r))
        shares[p] = opts_p
    sensitivity: list[dict[str, Any]] = []
    drops: dict[str, list[tuple[float, tuple[int, ...], float]]] = {p: [] for p in paths}
    with tqdm(total=sum(len(v) for v in shares.values()), desc="sensitivity", unit="eval", file=sys.stderr,
              disable=not opts.progress, leave=False) as bar:
        for p in paths:
            for s, r in shares[p]:
                sc, dr = measure({p: r})
                drops[p].append((s, r, dr))
                sensitivity.append({"layer": p, "share": s, "ranks": list(r),
                                    "macs": plan.layers[p].cost(r)[1], "val_score": sc, "val_drop": dr})
                bar.update(1)

    configs: list[tuple[str, str, dict[str, Any]]] = []
    keys: set[tuple[Any, ...]] = set()

    def add(label: str, kind: str, cfg: dict[str, Any]) -> None:
        key = tuple(cfg.get(p) for p in paths)
        if not any(v is not None for v in key):
            return
        if key not in keys:  # the same ranks reached twice: one candidate, the first label (policy first)
            keys.add(key)
            configs.append((label, kind, cfg))

    if plan.selected:
        overrides = "".join(f", {k}={v}" for k, v in plan.layer_policies.items())
        add(f"policy {plan.rank_policy}{overrides}", "policy", {p: plan.selected.get(p) for p in paths})
    tolerances = sorted({max(0.0, dr) for rows in drops.values() for _, _, dr in rows})
    if len(tolerances) > 10:
        tolerances = [tolerances[int(i)] for i in np.linspace(0, len(tolerances) - 1, 10)]
    for t in tolerances:
        cfg: dict[str, Any] = {}
        for p in paths:
            ok = [(s, r) for s, r, dr in drops[p] if dr <= t]
            cfg[p] = min(ok)[1] if ok else None
        add(f"t={t:.2f}", "greedy", cfg)
    for by in ("macs", "params"):
        for share in LADDER:
            add(f"uniform {by} {share:g}", "uniform",
                {p: at_share(p, share, by) for p in paths})

    candidates: list[dict[str, Any]] = []
    for label, kind, cfg in tqdm(configs, desc="candidates", unit="config", file=sys.stderr,
                                 disable=not opts.progress, leave=False):
        params, macs = _config_cost(plan, cfg, base_cost)
        sc, dr = measure(cfg)
        candidates.append({"label": label, "kind": kind, "ranks": {p: (list(r) if r else None) for p, r in cfg.items()},
                           "params": int(params), "macs": int(macs), "macs_x": base_cost[1] / max(macs, 1),
                           "val_score": sc, "val_drop": dr, "tried": False, "trial": None,
                           "tflite_score": None, "tflite_drop": None, "_cfg": cfg})
    candidates.sort(key=lambda c: (c["macs"], c["val_drop"]))
    slack = max(4.0 * budget, budget + 3.0)
    key, pool = latency_objective(plan, candidates, opts, log)  # MACs, or latency measured on the device

    trials: list[Attempt] = []
    current = next((c for c in pool if c["kind"] == "policy"), None) or next_trial(pool, budget, slack, key)
    while current is not None and len(trials) < max(1, opts.max_trials):
        current["tried"], current["trial"] = True, len(trials) + 1
        new, factor_report = build_factorized(model, plan, {p: current["_cfg"].get(p) for p in paths}, exact=True,
                                              progress=False)
        attempt = runner.run(new, factor_report, current["label"])
        current["tflite_score"] = attempt.validation.accuracy if task.classifier else attempt.validation.loss
        current["tflite_drop"] = attempt.tflite_drop
        trials.append(attempt)
        verdict = ("" if not np.isfinite(budget) else  # a latency limit only: no accuracy budget to judge by
                   f", {'within' if attempt.tflite_drop <= budget else 'over'} the budget of {budget:g}")
        log(f"rank search: trial {len(trials)} {current['label']} ({current['macs_x']:.2f}x fewer MACs, signal "
            f"{current['val_drop']:.2f}): {runner.quantization} tflite drop {attempt.tflite_drop:.2f} points"
            f"{verdict}")
        current = next_trial(pool, budget, slack, key)
        if current is not None and len(trials) < max(1, opts.max_trials):
            met = any(c["tried"] and c["tflite_drop"] <= budget for c in candidates)
            log(f"rank search: {'trying more compression' if met else 'backing off'}: {current['label']} "
                f"({current['macs_x']:.2f}x fewer MACs, signal {current['val_drop']:.2f})")
    if not trials:  # no factorizable layer: the plan's own ranks (keeps the model as is)
        new, factor_report = build_factorized(model, plan, progress=False)
        trials.append(runner.run(new, factor_report, "unfactorized"))
    met_trials = [a for a in trials if a.tflite_drop <= budget]
    rank = {c["label"]: c[key] for c in candidates if c["tried"]}
    chosen = (min(met_trials, key=lambda a: (rank.get(a.label, a.macs), a.tflite_drop)) if met_trials
              else min(trials, key=lambda a: a.tflite_drop))
    for c in candidates:
        c.pop("_cfg", None)
    info = {"budget": budget, "budget_met": bool(met_trials), "slack": slack, "signal": signal,
            "subset": len(xs), "subset_from_train": from_train, "ratios": list(RATIOS), "ladder": list(LADDER),
            "sensitivity": sensitivity, "candidates": candidates, "chosen": chosen.label,
            "trials": [{"label": a.label, "macs": a.macs, "params": a.params, "tflite_drop": a.tflite_drop}
                       for a in trials]}
    return chosen, info


def latency_objective(plan: FactorizationPlan, candidates: list[dict[str, Any]], opts: Any,
                      log: Callable[[str], None]) -> tuple[str, list[dict[str, Any]]]:
    """The latency hook of the search: (what "more compressed" means for :func:`next_trial`, the candidates
    it may try).

    Without a device table: ``macs``, every candidate. With one (``compress --latency-device``; the plan's
    ``measured``) every candidate gets ``latency_ms``, its predicted latency on the device
    (:func:`edgelr.rewrite.allocate.model_latency`), and the search goes for the least latency within the
    accuracy budget. With ``max_latency_ms`` / ``min_speedup`` (over the measured original) only the candidates
    predicted within that latency may be tried, least signal (loss) first."""
    from edgelr.rewrite.allocate import model_latency

    if plan.measured is None:
        return "macs", candidates
    for c in candidates:
        c["latency_ms"] = model_latency(plan, c["_cfg"])
    base_ms = float(plan.measured.model_ms)
    limits = [v for v in (getattr(opts, "max_latency_ms", None),
                          base_ms / opts.min_speedup if getattr(opts, "min_speedup", None) else None) if v is not None]
    if not limits:
        log(f"rank search: least latency measured on {plan.measured.device or 'the device'} (original {base_ms:.4g} ms)")
        return "latency_ms", candidates
    limit = min(limits)
    within = [c for c in candidates if c["latency_ms"] <= limit] or sorted(candidates, key=lambda c: c["latency_ms"])[:1]
    log(f"rank search: {len(within)} of {len(candidates)} candidates predicted within {limit:.4g} ms on "
        f"{plan.measured.device or 'the device'} (original {base_ms:.4g} ms measured); least loss first")
    return "val_drop", within


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
                label=("factorized, before fine-tune: agreement with the original" if (summary or {}).get(
                    "metric", "accuracy") == "accuracy" else "factorized, before fine-tune: mse vs the original"))
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
