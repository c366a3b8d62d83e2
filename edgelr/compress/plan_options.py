"""The options that decide a rank plan, resolved once against the target and shared by every path."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class PlanOptions:
    """Everything :func:`edgelr.rewrite.plan_factorization` needs, with the target's defaults applied.

    Built once by :func:`resolve_plan_options` in :func:`edgelr.compress.compress` and handed to both the
    plain path and the accuracy search, so neither can drop an option.
    """

    target: Any
    method: str
    rank_policy: str
    layer_policies: Any = None
    include: Any = None
    skip: Any = None
    min_reduction: float | None = None
    min_efficiency: float | None = None
    allocate: str = "layer"

    def kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``plan_factorization``/``factorize_model`` (``overrides`` replace fields)."""
        opts = replace(self, **overrides) if overrides else self
        return {"target": opts.target, "method": opts.method, "rank_policy": opts.rank_policy,
                "layer_policies": opts.layer_policies, "include": opts.include, "skip": opts.skip,
                "min_reduction": opts.min_reduction, "min_efficiency": opts.min_efficiency,
                "allocate": opts.allocate}


def resolve_plan_options(opts: Any, target: Any) -> PlanOptions:
    """Apply the target's method and rank-policy defaults to the compress options ``opts``."""
    return PlanOptions(target=target, method=opts.method or target.method,
                       rank_policy=opts.rank_policy or target.rank_policy, layer_policies=opts.layer_policies,
                       include=opts.include, skip=opts.skip, min_reduction=opts.min_reduction,
                       min_efficiency=opts.min_efficiency, allocate=opts.allocate)
