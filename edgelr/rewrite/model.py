"""Whole-model low-rank rewrite: plan once, materialize at any ranks.

:func:`plan_factorization` walks a tf_keras model (Sequential or Functional, nested models included),
picks a rewriter per layer (method ``auto`` or a named one), decomposes each layer's weights ONCE and
chooses ranks by a rank policy (one for the whole model, or per layer with ``layer_policies``).
:func:`build_factorized` rebuilds the model from its config with the chosen layers replaced by stock-layer
chains; a rank search calls it many times with other ranks
(SVD truncation and the HOSVD start of Tucker-2 are reused; CP decompositions are cached per rank).
:func:`factorize_model` is both in one call.

The caller's model is never modified: the new model is built from ``model.get_config()`` and the
weights are copied. Layers are addressed by their qualified name: ``conv3`` at the top level,
``inner/conv3`` inside a nested model ``inner``. Replacement layers are named ``<layer>/<part>``
(``conv3/tucker_in``, ``conv3/tucker_core``, ``conv3/tucker_out``; tf_keras accepts '/' in layer names and
saves/loads them in ``.keras`` and ``.h5``). A rewritten LSTM/GRU keeps its own name after its projection
``<layer>/svd_in``. The new model is not compiled.
"""

from __future__ import annotations

import copy
import fnmatch
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from edgelr.errors import FactorizeError
from edgelr.rewrite.cost import latency_estimate, layer_cost, output_cost_for
from edgelr.rewrite.registry import (
    Cost, Ranks, Rewrite, Rewriter, applicable_methods, fallback_of, get_rewriter, methods, supported_layers,
)

REPORT_COLUMNS = ["layer", "kind", "method", "policy", "ranks", "params_before", "params_after", "macs_before",
                  "macs_after", "est_speedup", "rel_error", "skipped", "reason"]
DEFAULT_RANK_FLOOR = 8
_MODEL_CLASSES = {"Functional", "Sequential", "Model"}
ALLOCATIONS = ("layer", "latency")


@dataclass
class LayerPlan:
    """What the plan knows about one factorizable layer.

    Attributes
    ----------
    path : str
        Qualified layer name (``inner/conv3`` for a layer of nested model ``inner``).
    layer : tf_keras layer
        The caller's layer (read only).
    kind : str
        Human label (``Conv2D 3x3``, ``Dense``, ``LSTM``...).
    method : str
        Method of ``rewriter`` ('' when none applies).
    rewriter : Rewriter or None
    decomposition : object
        The rewriter's full decomposition (None when skipped before decomposing).
    full_ranks : tuple of int
        Ranks at which the rewrite is exact.
    cost_before : (int, int)
        ``(params, macs)`` of the original layer.
    ranks : tuple of int or None
        Ranks chosen by the rank policy (None when skipped before selection).
    cost_after : (int, int) or None
        ``(params, macs)`` of the rewrite at ``ranks``.
    skipped : bool
        True when the plan leaves this layer as is; ``reason`` says why.
    policy : str
        The rank policy that chose ``ranks`` (the global one or a ``layer_policies`` override; '' when
        the layer was skipped before rank selection).
    est_speedup : float or None
        Estimated latency of the layer over that of its rewrite at ``ranks``
        (:func:`edgelr.rewrite.cost.latency_estimate`); None without an estimate (recurrent layers).
    """

    path: str
    layer: Any
    kind: str
    method: str
    rewriter: Rewriter | None
    decomposition: Any = None
    full_ranks: Ranks = ()
    cost_before: Cost = (0, 0)
    ranks: Ranks | None = None
    cost_after: Cost | None = None
    skipped: bool = False
    reason: str = ""
    policy: str = ""
    est_speedup: float | None = None

    def cost(self, ranks: Ranks) -> Cost:
        """``(params, macs)`` of this layer's rewrite at ``ranks`` (no materialization)."""
        if self.rewriter is None:
            raise FactorizeError(f"layer '{self.path}' has no rewriter ({self.reason}); it cannot be rewritten")
        return self.rewriter.cost(self.layer, self.rewriter.check_ranks(self.layer, ranks))


@dataclass
class FactorizationPlan:
    """The per-layer decompositions and policy ranks of one model (see :func:`plan_factorization`).

    ``layers`` maps qualified layer names to :class:`LayerPlan`, in model order; ``selected`` are the ranks a
    plain :func:`build_factorized` call uses (layers the plan skips are absent). ``rank_policy`` is the
    global policy, ``layer_policies`` the per-layer overrides (pattern -> policy, first match wins).
    """

    model: Any
    layers: dict[str, LayerPlan]
    method: str
    rank_policy: str
    multiple: int
    floor: int
    min_reduction: float | None
    progress: bool = False
    recurrent_unroll: bool | None = None
    selected: dict[str, Ranks] = field(default_factory=dict)
    layer_policies: dict[str, str] = field(default_factory=dict)
    output_cost: float = 16.0
    allocation: Any = None

    def est_speedup(self, path: str, ranks: Ranks) -> float | None:
        """Estimated latency speed-up of layer ``path`` rewritten at ``ranks`` (None: no estimate)."""
        lp = self.layers[path]
        if lp.rewriter is None:
            return None
        before, after = lp.rewriter.outputs(lp.layer, None), lp.rewriter.outputs(lp.layer, ranks)
        if before is None or after is None:
            return None
        cost = lp.rewriter.cost(lp.layer, ranks)
        return (latency_estimate(lp.cost_before[1], before, self.output_cost)
                / max(latency_estimate(cost[1], after, self.output_cost), 1.0))

    def candidates(self) -> list[str]:
        """Qualified names of the layers that can be rewritten (have a rewriter and a decomposition)."""
        return [p for p, lp in self.layers.items() if lp.rewriter is not None and lp.decomposition is not None]


def _is_config_model(layer: Any) -> bool:
    return type(layer).__name__ in {"Functional", "Sequential"}


def walk_layers(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(qualified name, layer)`` of every non-model layer, descending into nested Functional/Sequential models."""
    for layer in model.layers:
        path = prefix + layer.name
        if _is_config_model(layer):
            yield from walk_layers(layer, path + "/")
        else:
            yield path, layer


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


def _resolve_target(target: Any) -> Any:
    if target is None:
        return None
    if isinstance(target, str):
        from edgelr.targets import get_target

        return get_target(target)
    if not hasattr(target, "rank_multiple"):
        raise FactorizeError(f"target: got {target!r}; expected a target name or an edgelr.targets.Target")
    return target


def _check_model(model: Any) -> None:
    if not _is_config_model(model):
        raise FactorizeError(
            f"model: got a {type(model).__name__}; expected a tf_keras Sequential or Functional model "
            f"(subclassed models have no config to rebuild from: rebuild it with the functional API)")
    if not model.built or not model.inputs:
        raise FactorizeError(f"model '{model.name}' is not built; give it an Input or call model.build(shape)")


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
    return {pattern: str(policy) for pattern, policy in _layer_policies(layer_policies)}


def _layer_policies(value: Any) -> list[tuple[str, Any]]:
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


def _reduction_reason(before: Cost, after: Cost, min_reduction: float | None) -> str:
    """'' when the rewrite saves enough, else why not. MACs are judged only when the layer has any."""
    if min_reduction is None:
        return ""
    limit = 1.0 - float(min_reduction)
    (p0, m0), (p1, m1) = before, after
    bad = []
    if p0 > 0 and p1 > limit * p0:
        bad.append(f"params {p1 / p0:.0%}")
    if m0 > 0 and m1 > limit * m0:
        bad.append(f"MACs {m1 / m0:.0%}")
    if bad:
        return f"{' and '.join(bad)} of the original; needs <= {limit:.0%} (min_reduction={min_reduction:g})"
    return ""


def rule_reason(before: Cost, after: Cost, est_speedup: float | None, min_reduction: float | None,
                min_efficiency: float | None, output_cost: float) -> str:
    """Why a rewrite from ``before`` to ``after`` (params, MACs) breaks the plan's rules ('' when it does not):
    too small a reduction (``min_reduction``), or an estimated speed-up below ``min_efficiency`` x its MAC
    reduction. Shared by the per-layer policy and the model-wide allocation."""
    reason = _reduction_reason(before, after, min_reduction)
    if reason or min_efficiency is None or est_speedup is None or after[1] <= 0:
        return reason
    macs_x = before[1] / after[1]
    if est_speedup < min_efficiency * macs_x:
        return (f"estimated speed-up x{est_speedup:.2f} is below {min_efficiency:g} x its MAC reduction "
                f"x{macs_x:.2f} (output-bound at {output_cost:g} MAC-equivalents per output element; "
                f"min_efficiency={min_efficiency:g})")
    return ""


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
        non-recurrent layers). Default: the target's method, else ``auto``.
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
        without an error proxy or latency model (CP, recurrent) keep their policy ranks. The ``policy`` column reads ``<policy> (latency)``
        for the layers allocated this way.

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

    _check_model(model)
    tgt = _resolve_target(target)
    method = method if method is not None else (tgt.method if tgt is not None else "auto")
    if method != "auto" and method not in methods():
        raise FactorizeError(f"method: got {method!r}; expected one of {['auto', *methods()]}")
    policy_spec = rank_policy if rank_policy is not None else (tgt.rank_policy if tgt is not None else "vbmf")
    policy = parse_rank_policy(policy_spec) if isinstance(policy_spec, str) else policy_spec
    overrides = _layer_policies(layer_policies)
    multiple = int(tgt.rank_multiple) if tgt is not None else 1
    floor = DEFAULT_RANK_FLOOR if rank_floor is None else int(rank_floor)
    if min_reduction is not None and not 0.0 <= float(min_reduction) < 1.0:
        raise FactorizeError(f"min_reduction: got {min_reduction!r}; expected a share in [0, 1) or None")
    try:
        min_efficiency = check_min_efficiency(min_efficiency)
    except FactorizeError as exc:
        raise FactorizeError(f"min_efficiency: {exc}") from None
    allocate = check_allocate(allocate)
    includes, skips = _patterns(include, "include"), _patterns(skip, "skip")

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
        for m in (method, fallback_of(method)):
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
            lp.skipped, lp.reason = True, f"method {method} does not apply; applicable: {', '.join(applicable)}"
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

    plan = FactorizationPlan(model, plans, method, str(policy), multiple, floor, min_reduction, progress,
                             recurrent_unroll, layer_policies={p: str(pol) for p, pol in overrides},
                             output_cost=output_cost_for(tgt))
    from tqdm import tqdm

    for lp in tqdm(todo, desc="decompose", unit="layer", file=sys.stderr, disable=not progress, leave=False):
        assert lp.rewriter is not None
        lp.full_ranks = lp.rewriter.full_ranks(lp.layer)
        lp.decomposition = lp.rewriter.decompose(lp.layer)
        lp.ranks = tuple(int(r) for r in lp.rewriter.select_ranks(lp.layer, lp.decomposition,
                                                                   chosen_policy[lp.path], multiple, floor))
        lp.cost_after = lp.rewriter.cost(lp.layer, lp.ranks)
        lp.est_speedup = plan.est_speedup(lp.path, lp.ranks)
        reason = rule_reason(lp.cost_before, lp.cost_after, lp.est_speedup, min_reduction, min_efficiency,
                             plan.output_cost)
        if reason:
            lp.skipped, lp.reason = True, f"ranks {_fmt(lp.ranks)}: {reason}"
        else:
            plan.selected[lp.path] = lp.ranks
    if allocate == "latency":
        _allocate_model_wide(plan, [lp.path for lp in todo], min_reduction, min_efficiency)
    return plan


def check_allocate(value: Any) -> str:
    """``value`` if it is one of ``ALLOCATIONS`` (``layer``, ``latency``); :class:`FactorizeError` otherwise."""
    if value not in ALLOCATIONS:
        raise FactorizeError(f"allocate: got {value!r}; expected one of {list(ALLOCATIONS)}")
    return str(value)


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
                lp.reason = (f"left as is by the latency allocation (policy ranks {_fmt(lp.ranks)} would cut "
                             f"its estimated latency x{lp.est_speedup or 1.0:.2f} for MACs "
                             f"x{lp.cost_before[1] / max(lp.cost_after[1], 1):.2f})")
            continue
        lp.ranks = ranks
        lp.cost_after = lp.rewriter.cost(lp.layer, ranks)
        lp.est_speedup = plan.est_speedup(path, ranks)
        lp.skipped, lp.reason = False, ""
        plan.selected[path] = ranks


def _fmt(ranks: Ranks | None) -> str:
    return "" if ranks is None else "x".join(str(r) for r in ranks)


# ----------------------------------------------------------------------------------------------- rebuild


def _serialize(layer: Any) -> dict[str, Any]:
    from edgelr.tfcompat import keras2

    return dict(keras2().layers.serialize(layer))


def _rewrite_sequential(config: dict[str, Any], rewrites: Mapping[str, Rewrite], prefix: str,
                        nested: dict[str, Any]) -> dict[str, Any]:
    new_layers = []
    for entry in config["layers"]:
        name = entry["config"].get("name")
        path = prefix + str(name)
        if entry["class_name"] in _MODEL_CLASSES and path in nested:
            entry = dict(entry, config=_rewrite_config(nested[path], entry["config"], rewrites, path + "/", nested))
            new_layers.append(entry)
        elif path in rewrites:
            for j, new in enumerate(rewrites[path].chain):
                item = _serialize(new.layer)
                if j == 0 and "batch_input_shape" in entry["config"]:
                    item["config"]["batch_input_shape"] = entry["config"]["batch_input_shape"]
                new_layers.append(item)
        else:
            new_layers.append(entry)
    return dict(config, layers=new_layers)


def _rewrite_functional(config: dict[str, Any], rewrites: Mapping[str, Rewrite], prefix: str,
                        nested: dict[str, Any]) -> dict[str, Any]:
    renamed: dict[str, str] = {}
    new_layers = []
    for entry in config["layers"]:
        path = prefix + entry["name"]
        if entry["class_name"] in _MODEL_CLASSES and path in nested:
            new_layers.append(dict(entry, config=_rewrite_config(nested[path], entry["config"], rewrites,
                                                                 path + "/", nested)))
            continue
        if path not in rewrites:
            new_layers.append(entry)
            continue
        chain = rewrites[path].chain
        nodes = entry["inbound_nodes"]
        if any(len(node) > 1 for node in nodes) and not any(n.extra_inputs for n in chain):
            raise FactorizeError(f"layer '{path}' is called with several inputs; it cannot be replaced by a "
                                 f"chain of layers. Leave it out with skip=['{entry['name']}']")
        previous = None
        for j, new in enumerate(chain):
            item = _serialize(new.layer)
            item["name"] = new.layer.name
            inbound = []
            for k, node in enumerate(nodes):
                head = [node[0]] if previous is None else [[previous, k, 0, {}]]
                inbound.append(head + (list(node[1:]) if new.extra_inputs else []))
            item["inbound_nodes"] = inbound
            new_layers.append(item)
            previous = new.layer.name
        renamed[entry["name"]] = chain[-1].layer.name

    def fix(ref: Any) -> Any:
        if isinstance(ref, list) and ref and isinstance(ref[0], str) and ref[0] in renamed:
            return [renamed[ref[0]]] + list(ref[1:])
        if isinstance(ref, list):
            return [fix(r) for r in ref]
        return ref

    for item in new_layers:
        if "inbound_nodes" in item:
            item["inbound_nodes"] = fix(item["inbound_nodes"])
    return dict(config, layers=new_layers, output_layers=fix(config["output_layers"]))


def _rewrite_config(model: Any, config: dict[str, Any], rewrites: Mapping[str, Rewrite], prefix: str,
                    nested: dict[str, Any]) -> dict[str, Any]:
    if type(model).__name__ == "Sequential":
        return _rewrite_sequential(config, rewrites, prefix, nested)
    return _rewrite_functional(config, rewrites, prefix, nested)


def _nested_models(model: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for layer in model.layers:
        if _is_config_model(layer):
            found[prefix + layer.name] = layer
            found.update(_nested_models(layer, prefix + layer.name + "/"))
    return found


def _custom_objects(model: Any) -> dict[str, Any]:
    objects: dict[str, Any] = {}

    def add(layer: Any) -> None:
        objects[type(layer).__name__] = type(layer)
        for attr in ("layer", "cell", "forward_layer", "backward_layer"):
            inner = getattr(layer, attr, None)
            if inner is not None and hasattr(inner, "get_config"):
                add(inner)
        for sub in getattr(layer, "layers", []) or []:
            add(sub)

    add(model)
    return objects


def _set_weights(layer: Any, weights: list[Any], path: str) -> None:
    try:
        layer.set_weights(weights)
    except ValueError as exc:
        raise FactorizeError(f"layer '{path}': weights do not fit the rebuilt layer ({exc})") from None


def rebuild_with(model: Any, rewrites: Mapping[str, Rewrite]) -> Any:
    """A new model: ``model``'s config with each ``rewrites[path]`` chain in place of that layer.

    Parameters
    ----------
    model : tf_keras.Model
        Sequential or Functional (read only).
    rewrites : mapping of qualified layer name -> Rewrite

    Returns
    -------
    tf_keras.Model
        Same class as ``model``, weights copied (unchanged layers) or set from the chains.
    """
    from edgelr.tfcompat import keras2

    keras = keras2()
    _check_model(model)
    nested = _nested_models(model)
    config = _rewrite_config(model, copy.deepcopy(model.get_config()), rewrites, "", nested)
    with keras.utils.custom_object_scope(_custom_objects(model)):
        new_model = type(model).from_config(config)

    originals = dict(walk_layers(model))
    chain_weights = {}
    for path, rw in rewrites.items():
        if path not in originals:
            raise FactorizeError(f"rewrites: '{path}' is not a layer of model '{model.name}'")
        prefix = path[: len(path) - len(originals[path].name)]
        for new in rw.chain:
            chain_weights[prefix + new.layer.name] = new.weights
    for path, layer in walk_layers(new_model):
        if path in chain_weights:
            _set_weights(layer, chain_weights[path], path)
        elif path in originals and originals[path].weights:
            _set_weights(layer, originals[path].get_weights(), path)
    return new_model


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
            lp.decomposition = lp.rewriter.decompose(lp.layer)
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
