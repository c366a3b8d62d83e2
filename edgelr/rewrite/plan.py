"""A rank plan: what :func:`edgelr.rewrite.plan_factorization` decided for each layer, and the rules it keeps.

:class:`FactorizationPlan` holds one :class:`LayerPlan` per factorizable layer (its rewriter, its full
decomposition, the policy ranks) and, with ``allocate="latency"``, the :class:`Allocation` that re-chose
them model-wide (:mod:`edgelr.rewrite.allocate`). :func:`rule_reason` is the one test both the per-layer
policy and the allocation apply to a rewrite: enough reduction (``min_reduction``), enough estimated
speed-up for it (``min_efficiency``). :func:`saving_reason` is the absolute-saving rule (``min_saving``): a
split that saves too little in absolute terms, or a conv on <= 3 input channels that does not pay by the
latency estimate, leaves the layer whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgelr.errors import FactorizeError
from edgelr.rewrite.cost import latency_estimate
from edgelr.rewrite.registry import Cost, Ranks, Rewriter


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
    stats : numpy.ndarray or None
        The input second moment the rewriter asked for (:meth:`~edgelr.rewrite.registry.Rewriter.input_statistic`),
        collected on the calibration inputs: the decomposition is data-aware. None: weights only.
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
    stats: Any = None

    def cost(self, ranks: Ranks) -> Cost:
        """``(params, macs)`` of this layer's rewrite at ``ranks`` (no materialization)."""
        if self.rewriter is None:
            raise FactorizeError(f"layer '{self.path}' has no rewriter ({self.reason}); it cannot be rewritten")
        return self.rewriter.cost(self.layer, self.rewriter.check_ranks(self.layer, ranks))


@dataclass
class Allocation:
    """The result of :func:`edgelr.rewrite.allocate.allocate_ranks` (``plan.allocation``).

    Attributes
    ----------
    ranks : dict
        Qualified layer name -> chosen ranks, or None for a layer left as is (participating layers only).
    budget, used : (params, latency)
        The policy ranks' totals over the participating layers, and the allocation's.
    loss_policy, loss : float
        Summed loss (``-log`` of each layer's kept weight energy, from its error proxy) at the policy ranks
        and at the allocation.
    improved : bool
        False when the policy's own ranks were kept (no feasible assignment was faster or, as fast, lost less).
    """

    ranks: dict[str, Ranks | None]
    budget: tuple[int, float]
    used: tuple[int, float]
    loss_policy: float
    loss: float
    improved: bool


@dataclass
class FactorizationPlan:
    """The per-layer decompositions and policy ranks of one model (see :func:`edgelr.rewrite.plan_factorization`).

    ``layers`` maps qualified layer names to :class:`LayerPlan`, in model order; ``selected`` are the ranks a
    plain :func:`edgelr.rewrite.build_factorized` call uses (layers the plan skips are absent). ``rank_policy`` is the
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
    allocation: Allocation | None = None
    min_saving: int | None = None
    """The absolute-saving rule of the plan (:func:`saving_reason`; None: off)."""
    measured: Any = None
    """A :class:`edgelr.rewrite.cost.MeasuredLatency` (``edgelr profile``): latencies measured on the device
    replace the estimate in :meth:`latency`, :meth:`est_speedup` and the allocation."""

    def latency(self, path: str, ranks: Ranks | None) -> float | None:
        """Latency of layer ``path`` as is (``ranks`` None) or rewritten at ``ranks``: measured ms from
        ``measured`` when the plan has a device table, else the estimate in MAC-equivalents
        (:func:`edgelr.rewrite.cost.latency_estimate`); None without a latency model (recurrent layers)."""
        lp = self.layers[path]
        if lp.rewriter is None:
            return None
        outputs = lp.rewriter.outputs(lp.layer, ranks)
        if outputs is None:
            return None
        macs = lp.cost_before[1] if ranks is None else lp.rewriter.cost(lp.layer, ranks)[1]
        est = latency_estimate(macs, outputs, self.output_cost)
        if self.measured is None:
            return est
        return self.measured.latency_ms(lp.layer, lp.rewriter.method, ranks, est)

    def est_speedup(self, path: str, ranks: Ranks) -> float | None:
        """Latency speed-up of layer ``path`` rewritten at ``ranks``, measured or estimated (:meth:`latency`;
        None: no latency model)."""
        before, after = self.latency(path, None), self.latency(path, ranks)
        if before is None or after is None:
            return None
        return before / max(after, 1e-9 if self.measured is not None else 1.0)

    def candidates(self) -> list[str]:
        """Qualified names of the layers that can be rewritten (have a rewriter and a decomposition), less those
        the absolute-saving rule keeps whole at any ranks (:meth:`never_pays`; a rank search never tries them)."""
        return [p for p, lp in self.layers.items()
                if lp.rewriter is not None and lp.decomposition is not None and not self.never_pays(p)]

    def never_pays(self, path: str) -> str:
        """Why layer ``path`` stays whole at ANY ranks under ``min_saving`` ('' when some ranks may pass): the
        rule judged at the smallest ranks (all 1), which save the most and are the fastest by the estimate."""
        lp = self.layers[path]
        if self.min_saving is None or lp.rewriter is None:
            return ""
        reason = self.saving_reason(path, tuple(1 for _ in lp.full_ranks or lp.rewriter.full_ranks(lp.layer)))
        return f"at any ranks: {reason}" if reason else ""

    def saving_reason(self, path: str, ranks: Ranks) -> str:
        """Why the plan's absolute-saving rule keeps layer ``path`` whole at ``ranks`` ('' when the split may be
        made; :func:`saving_reason`); for callers that choose ranks themselves (a rank search)."""
        lp = self.layers[path]
        if self.min_saving is None or lp.rewriter is None:
            return ""
        return saving_reason(lp.layer, lp.cost_before, lp.rewriter.cost(lp.layer, tuple(ranks)),
                             self.est_speedup(path, tuple(ranks)), self.min_saving)


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


DEFAULT_MIN_SAVING = 1024
"""``min_saving`` of ``edgelr compress``: a split must save at least this many parameters or MACs (per example).
A split adds an op and an activation tensor; an op costs ~1-3 us on a Cortex-A72 (~10^4 int8 MACs), so a layer
that saves fewer than ~10^3 of both is not worth its accuracy loss. Library calls default to None (off)."""
SMALL_INPUT_CHANNELS = 3
"""A conv reading at most this many channels (an image's first conv) is split only when it pays by the estimate."""
SMALL_INPUT_MIN_SPEEDUP = 1.2
"""The estimated latency speed-up such a conv's split must reach (:func:`saving_reason`)."""


def input_channels(layer: Any) -> int | None:
    """Input channels of a conv layer (Conv*, SeparableConv*, DepthwiseConv*), None for other layers."""
    if getattr(layer, "kernel_size", None) is None:
        return None
    try:
        shape = layer.input_shape
    except (AttributeError, RuntimeError):
        return None
    if isinstance(shape, list):
        shape = shape[0]
    axis = 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1
    channels = shape[axis]
    return None if channels is None else int(channels)


def saving_reason(layer: Any, before: Cost, after: Cost, est_speedup: float | None, min_saving: int | None) -> str:
    """The absolute-saving rule: why splitting ``layer`` from ``before`` to ``after`` (params, MACs) is not worth
    it ('' when it is, or when ``min_saving`` is None).

    A conv with at most ``SMALL_INPUT_CHANNELS`` input channels (a first conv on an image: its kernel is tiny,
    its output large) stays whole unless its estimated speed-up reaches ``SMALL_INPUT_MIN_SPEEDUP``; any layer
    stays whole when it saves fewer than ``min_saving`` parameters AND fewer than ``min_saving`` MACs per
    example (a split that saves either at scale is kept: many MACs is speed, many parameters is size)."""
    if min_saving is None:
        return ""
    channels = input_channels(layer)
    if channels is not None and channels <= SMALL_INPUT_CHANNELS and (
            est_speedup is None or est_speedup < SMALL_INPUT_MIN_SPEEDUP):
        est = "no latency estimate" if est_speedup is None else f"estimated speed-up x{est_speedup:.2f}"
        return (f"a conv on {channels} input channel(s) is split only when it pays by the latency estimate "
                f"(>= x{SMALL_INPUT_MIN_SPEEDUP:g}); {est}")
    saved_params, saved_macs = before[0] - after[0], before[1] - after[1]
    if saved_params < min_saving and saved_macs < min_saving:
        return (f"saves {max(saved_params, 0):,} parameters and {max(saved_macs, 0):,} MACs, fewer than "
                f"min_saving={min_saving:,} of either")
    return ""


def fmt_ranks(ranks: Ranks | None) -> str:
    """``16x8`` ('' for None)."""
    return "" if ranks is None else "x".join(str(r) for r in ranks)
