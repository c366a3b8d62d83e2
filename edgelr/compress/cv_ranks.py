"""Rank selection by k-fold cross-validation, for small data sets.

With a few hundred labelled samples a single validation split is too small to tell rank configurations
apart (issue 14: 7 validation samples, every candidate scored 100 %). Instead, for every candidate rank
configuration (a rank policy), the factorized model is fine-tuned on k-1 folds of the training split and
scored on the held-out fold, k times; the choice is the *most compressed* candidate whose mean score is
within one standard error of the best mean (the one-standard-error rule of Breiman et al. 1984 / Hastie,
Tibshirani & Friedman, ch. 7.10): :func:`one_se_choice` (pure) and :func:`select_policy_by_cv` (models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgelr.errors import UsageError

DEFAULT_LADDER = ("params:0.5", "params:0.25", "params:0.125")
"""Candidates added to the run's rank policy when ``cv_policies`` is not given."""


@dataclass(frozen=True)
class CVChoice:
    """The result of :func:`one_se_choice`.

    Attributes
    ----------
    choice : str
        The chosen candidate.
    best : str
        The candidate with the best mean score.
    means, ses : dict of str -> float
        Mean and standard error (``std(ddof=1) / sqrt(k)``) of each candidate's fold scores.
    threshold : float
        ``best mean -/+ its standard error``: candidates on the right side of it are eligible.
    costs : dict of str -> float
        The candidates' costs (lower = more compressed).
    """

    choice: str
    best: str
    means: dict[str, float]
    ses: dict[str, float]
    threshold: float
    costs: dict[str, float]


def one_se_choice(scores: Mapping[str, Sequence[float]], costs: Mapping[str, float],
                  higher_is_better: bool = True) -> CVChoice:
    """The most compressed candidate within one standard error of the best mean score.

    Parameters
    ----------
    scores : mapping of str -> sequence of float
        Each candidate's scores on the k held-out folds (k >= 2, the same k for all).
    costs : mapping of str -> float
        Each candidate's cost (MACs or params; lower = more compressed).
    higher_is_better : bool
        True for accuracy, False for a loss.

    Returns
    -------
    CVChoice
        Ties in cost go to the better mean.
    """
    if not scores:
        raise UsageError("cross-validation: no candidates")
    missing = sorted(set(scores) - set(costs))
    if missing:
        raise UsageError(f"cross-validation: no cost for candidate(s) {missing}")
    sign = 1.0 if higher_is_better else -1.0
    means, ses = {}, {}
    for label, vals in scores.items():
        arr = np.asarray(vals, dtype=np.float64)
        if arr.size < 2:
            raise UsageError(f"cross-validation: candidate {label!r} has {arr.size} fold score(s); expected >= 2")
        means[label] = float(arr.mean())
        ses[label] = float(arr.std(ddof=1) / np.sqrt(arr.size))
    best = max(means, key=lambda lab: sign * means[lab])
    threshold = means[best] - sign * ses[best]
    eligible = [lab for lab in means if sign * means[lab] >= sign * threshold - 1e-12]
    choice = min(eligible, key=lambda lab: (costs[lab], -sign * means[lab]))
    return CVChoice(choice, best, means, ses, float(threshold), {k: float(v) for k, v in costs.items()})


def kfold_indices(n: int, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, held-out) index pairs of a seeded shuffle of ``range(n)`` (sorted within each part)."""
    if k < 2 or n < k:
        raise UsageError(f"cross-validation: {n} training samples cannot make {k} folds; use 2 <= k <= {n}")
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    return [(np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i])), np.sort(folds[i]))
            for i in range(k)]


def select_policy_by_cv(runner: Any, plan_options: Any, policies: Sequence[str], k: int, epochs: int,
                        log: Callable[[str], None]) -> tuple[str, CVChoice]:
    """The rank policy among ``policies`` chosen by k-fold cross-validation of the run's training split.

    For each policy the original is factorized once (``plan_options`` with that policy); for each fold the
    factorized model restarts from those weights, is fine-tuned by distillation on the other k-1 folds
    (``epochs`` epochs, the run's settings; early stopping on the run's validation split) and scored on the
    held-out fold. Cost = the factorized model's MACs.

    Parameters
    ----------
    runner : edgelr.compress.attempt.AttemptRunner
    plan_options : edgelr.rewrite.options.PlanOptions
    """
    from edgelr.compress.distill import distill
    from edgelr.compress.evaluate import evaluate
    from edgelr.rewrite import factorize_model
    from edgelr.rewrite.cost import model_cost

    data, task, opts = runner.data, runner.task, runner.opts
    folds = kfold_indices(len(runner.x_fit), k, opts.seed)
    scores: dict[str, list[float]] = {}
    costs: dict[str, float] = {}
    for policy in dict.fromkeys(policies):
        model, _ = factorize_model(runner.original, progress=False, **plan_options.kwargs(rank_policy=policy))
        start = model.get_weights()
        costs[policy] = float(model_cost(model)[1])
        scores[policy] = []
        for i, (train, held) in enumerate(folds):
            model.set_weights(start)
            distill(model, runner.teacher[train], runner.x_fit[train], runner.y_fit[train], data.x_val, data.y_val,
                    task, runner.distill_config(epochs), progress=opts.progress, desc=f"cv {policy} fold {i + 1}/{k}")
            scores[policy].append(evaluate(model, runner.x_fit[held], runner.y_fit[held], task))
        log(f"cross-validation: {policy}: {task.metric} {np.mean(scores[policy]):.4g} over {k} folds "
            f"({costs[policy]:.3g} MACs)")
    result = one_se_choice(scores, costs, task.higher_is_better)
    log(f"cross-validation: best mean {result.best}; chose {result.choice} (most compressed within one "
        f"standard error, {task.metric} >= {result.threshold:.4g})")
    return result.choice, result
