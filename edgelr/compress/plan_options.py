"""The rank-plan options of a compress run, resolved once against the target and shared by every path.

:class:`PlanOptions` and the one resolution of its defaults live in :mod:`edgelr.rewrite.options` (the
rewrite layer needs them and must not import compress); this module only picks the plan fields out of the
compress options.
"""
from __future__ import annotations

from typing import Any

from edgelr.rewrite.options import PlanOptions, plan_options

__all__ = ["PlanOptions", "resolve_plan_options"]


def resolve_plan_options(opts: Any, target: Any) -> PlanOptions:
    """The rank-plan options of a run: ``opts``' plan fields through :func:`edgelr.rewrite.plan_options`,
    which applies ``target``'s method and rank-policy defaults (the one place that does)."""
    return plan_options(target, method=opts.method, rank_policy=opts.rank_policy,
                        layer_policies=opts.layer_policies, include=opts.include, skip=opts.skip,
                        min_reduction=opts.min_reduction, min_efficiency=opts.min_efficiency,
                        allocate=opts.allocate)
