"""The options that decide a rank plan, and the one function that resolves them: :func:`plan_options`.

Every way to a plan goes through :func:`plan_options`, which applies the target's defaults (method, rank
policy; the target's name looked up once) and checks the options that need no model. ``edgelr compress``
calls it once per run (:func:`edgelr.compress.options.resolve_plan_options`) and hands the frozen
:class:`PlanOptions` to the plain path and the accuracy search alike; :func:`edgelr.rewrite.plan_factorization`
(and so the public :func:`edgelr.factorize_model`) calls it on its keyword arguments. Resolving resolved
options returns them unchanged, so nothing is decided twice or in two ways.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from edgelr.errors import FactorizeError
from edgelr.rewrite.registry import methods
from edgelr.targets import Target, get_target

ALLOCATIONS = ("layer", "latency")
DEFAULT_METHOD = "auto"
DEFAULT_RANK_POLICY = "vbmf"


@dataclass(frozen=True)
class PlanOptions:
    """Everything :func:`edgelr.rewrite.plan_factorization` needs, with the target's defaults applied.

    Built by :func:`plan_options` only. ``target`` is a :class:`edgelr.targets.Target` (or None: rank
    multiple 1, int8 output cost); ``method`` is ``auto`` or a registered method; ``rank_policy`` a policy
    spec (or :class:`edgelr.factorize.RankPolicy`). The other fields are as given (see
    :func:`edgelr.rewrite.plan_factorization`); ``layer_policies``, ``include`` and ``skip`` are checked
    against the model when the plan is made. ``calibration`` is a batch of model inputs (None: weights only):
    the plan then collects each layer's input statistics on it and factorizes data-aware
    (:mod:`edgelr.factorize.whiten`). ``latency_table`` is a
    :class:`edgelr.rewrite.cost.MeasuredLatency` measured on the device (``edgelr profile``) or None (the
    estimate).
    """

    target: Target | None
    method: str
    rank_policy: Any
    layer_policies: Any = None
    include: Any = None
    skip: Any = None
    min_reduction: float | None = 0.1
    min_efficiency: float | None = None
    allocate: str = "layer"
    calibration: Any = None
    latency_table: Any = None
    min_saving: int | None = None

    def kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``plan_factorization``/``factorize_model`` (``overrides`` replace fields)."""
        opts = replace(self, **overrides) if overrides else self
        return {"target": opts.target, "method": opts.method, "rank_policy": opts.rank_policy,
                "layer_policies": opts.layer_policies, "include": opts.include, "skip": opts.skip,
                "min_reduction": opts.min_reduction, "min_efficiency": opts.min_efficiency,
                "allocate": opts.allocate, "calibration": opts.calibration, "latency_table": opts.latency_table,
                "min_saving": opts.min_saving}


def plan_options(target: str | Target | None = None, *, method: str | None = None, rank_policy: Any = None,
                 layer_policies: Any = None, include: Any = None, skip: Any = None,
                 min_reduction: float | None = 0.1, min_efficiency: float | None = None,
                 allocate: str = "layer", calibration: Any = None, latency_table: Any = None,
                 min_saving: int | None = None) -> PlanOptions:
    """Resolve the plan options: the target by name, its method and rank policy where none is given.

    Parameters
    ----------
    target : str or edgelr.targets.Target, optional
        A target name (looked up in the built-in and ``EDGELR_TARGETS`` profiles) or a profile.
    method : str, optional
        ``auto`` or one of :func:`edgelr.rewrite.methods`; default the target's, else ``auto``.
    rank_policy : str or RankPolicy, optional
        Default the target's, else ``vbmf``.
    layer_policies, include, skip, min_reduction, min_efficiency, allocate, latency_table, min_saving
        As :func:`edgelr.rewrite.plan_factorization` takes them.
    calibration : numpy.ndarray or list of numpy.ndarray, optional
        A batch of model inputs for data-aware factorization (checked against the model when the plan is made).

    Raises
    ------
    FactorizeError
        A target that is neither a name nor a profile; an unknown method; a bad rank policy spec,
        ``min_reduction``, ``min_efficiency`` or ``allocate``.
    TargetError
        An unknown target name.
    """
    tgt = _target(target)
    method = method if method is not None else (tgt.method if tgt is not None else DEFAULT_METHOD)
    check_method(method)
    if rank_policy is None:
        rank_policy = tgt.rank_policy if tgt is not None else DEFAULT_RANK_POLICY
    if isinstance(rank_policy, str):
        from edgelr.factorize import parse_rank_policy

        parse_rank_policy(rank_policy)
    if min_reduction is not None and not 0.0 <= float(min_reduction) < 1.0:
        raise FactorizeError(f"min_reduction: got {min_reduction!r}; expected a share in [0, 1) or None")
    try:
        min_efficiency = check_min_efficiency(min_efficiency)
    except FactorizeError as exc:
        raise FactorizeError(f"min_efficiency: {exc}") from None
    return PlanOptions(target=tgt, method=method, rank_policy=rank_policy, layer_policies=layer_policies,
                       include=include, skip=skip, min_reduction=min_reduction, min_efficiency=min_efficiency,
                       allocate=check_allocate(allocate), calibration=calibration, latency_table=latency_table,
                       min_saving=check_min_saving(min_saving))


def _target(target: str | Target | None) -> Target | None:
    if target is None:
        return None
    if isinstance(target, str):
        return get_target(target)
    if not hasattr(target, "rank_multiple"):
        raise FactorizeError(f"target: got {target!r}; expected a target name or an edgelr.targets.Target")
    return target


def check_method(value: Any) -> str:
    """``value`` if it is ``auto`` or a registered method; :class:`FactorizeError` naming the choices otherwise."""
    if value != DEFAULT_METHOD and value not in methods():
        raise FactorizeError(f"method: got {value!r}; expected one of {[DEFAULT_METHOD, *methods()]}")
    return str(value)


def check_min_saving(value: Any) -> int | None:
    """``value`` as an int >= 0 (parameters or MACs a split must save, :func:`edgelr.rewrite.plan.saving_reason`),
    or None (the rule off); :class:`FactorizeError` naming the value otherwise."""
    if value is None:
        return None
    import numbers

    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0
            or float(value) != int(value)):
        raise FactorizeError(f"min_saving: got {value!r}; expected a whole number of parameters/MACs >= 0 "
                             "(e.g. 1024) or None (off)")
    return int(value)


def check_allocate(value: Any) -> str:
    """``value`` if it is one of ``ALLOCATIONS`` (``layer``, ``latency``); :class:`FactorizeError` otherwise."""
    if value not in ALLOCATIONS:
        raise FactorizeError(f"allocate: got {value!r}; expected one of {list(ALLOCATIONS)}")
    return str(value)


def check_min_efficiency(value: Any) -> float | None:
    """``value`` as a float in ``(0, 1]``, or None (off).

    Raises
    ------
    FactorizeError
        Anything else (the message names the value and the accepted range).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise FactorizeError(f"got {value!r}; expected a share in (0, 1] (e.g. 0.8) or None")
    return float(value)


def check_layer_policies(layer_policies: Any) -> dict[str, str]:
    """Check per-layer rank policies and return them normalised (pattern -> policy spec, order kept).

    Parameters
    ----------
    layer_policies : mapping of str -> str, or None
        fnmatch pattern on the layer name (bare or qualified) -> rank policy spec (``vbmf``, ``energy:F``,
        ``params:F``, ``macs:F``, ``rank:N``) or :class:`edgelr.factorize.RankPolicy`.

    Returns
    -------
    dict of str -> str
        Empty for None; specs in canonical form (``params:0.2``).

    Raises
    ------
    FactorizeError
        Not a mapping, an empty or non-string pattern, or a bad policy spec (the message names the pattern).
    """
    return {pattern: str(policy) for pattern, policy in parse_layer_policies(layer_policies)}


def parse_layer_policies(value: Any) -> list[tuple[str, Any]]:
    """``(pattern, RankPolicy)`` pairs of a ``layer_policies`` mapping, in its order (``[]`` for None);
    raises as :func:`check_layer_policies`."""
    from edgelr.factorize import RankPolicy, parse_rank_policy

    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise FactorizeError(f"layer_policies: got {value!r}; expected a mapping of layer-name pattern -> rank "
                             "policy, e.g. {'fc1': 'params:0.2'}")
    out = []
    for pattern, spec in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise FactorizeError(f"layer_policies: got pattern {pattern!r}; expected a non-empty fnmatch pattern "
                                 "such as 'fc*'")
        if isinstance(spec, RankPolicy):
            out.append((pattern, spec))
            continue
        try:
            out.append((pattern, parse_rank_policy(spec)))
        except FactorizeError as exc:
            raise FactorizeError(f"layer_policies['{pattern}']: {exc}") from None
    return out
