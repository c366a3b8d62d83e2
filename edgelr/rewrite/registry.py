"""The registry of layer rewriters: which low-rank methods apply to a layer, and who rewrites it.

A rewriter (one per layer kind and method) answers :meth:`Rewriter.supports` and turns one layer plus a
decomposition at given ranks into a chain of stock Keras layers and their weights.

Adding a rewriter is one new module and one import line:

1. ``edgelr/rewrite/<kind>.py`` with a :class:`Rewriter` subclass under :func:`register_rewriter`::

       @register_rewriter("svd", priority=0)
       class DepthwiseSVD(SingleSVDRewriter):
           layers = ("DepthwiseConv2D",)     # named in messages ("supported: ...")

           def supports(self, layer): ...

2. its name on the import line of ``edgelr/rewrite/__init__.py``, the one place rewriter modules are
   imported (registration happens there, never as a side effect of another import).

Everything else reads the registry: the ``--method`` choices of ``edgelr compress`` (:func:`methods`),
``edgelr inspect``'s method column and ``method="auto"`` (:func:`applicable_methods`,
:func:`get_rewriter`), the method check and messages of :func:`edgelr.rewrite.plan_factorization`
(:func:`methods`, :func:`supported_layers`, :func:`fallback_of`).

``priority`` matters only where rewriters support the same layer: the higher one is preferred (listed first
by :func:`applicable_methods`, taken by ``auto``). The built-in ones that overlap: k x k Conv2D
``tucker2`` 30 > ``cp`` 20 > ``spatial-svd`` 10; Conv1D ``tucker2`` 30 > ``svd`` 0; LSTM/GRU ``svd`` 10 >
``svd-recurrent`` 0. Equal priorities keep the import order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import numpy as np

from edgelr.errors import FactorizeError

Ranks = tuple[int, ...]
Cost = tuple[int, int]


@dataclass
class NewLayer:
    """One layer of a replacement chain: an unbuilt stock Keras layer and the weights to give it.

    Attributes
    ----------
    layer : tf_keras.layers.Layer
        Unbuilt layer, already named (``<original>/<suffix>``).
    weights : list of numpy.ndarray
        In ``layer.get_weights()`` order.
    extra_inputs : bool
        This element also receives the original layer's extra call inputs (an RNN's initial state).
    """

    layer: Any
    weights: list[np.ndarray]
    extra_inputs: bool = False


@dataclass
class Rewrite:
    """A materialized rewrite of one layer: the chain that replaces it and how good it is."""

    chain: list[NewLayer]
    ranks: Ranks
    params: int
    macs: int
    rel_error: float
    extra: dict[str, Any] = field(default_factory=dict)


class Rewriter:
    """Base class: one (layer kind, method) pair.

    Subclasses set ``layers`` and implement every method below; :func:`register_rewriter` sets ``method``,
    ``priority`` and ``fallback``. ``decompose`` is called once per layer; ``materialize`` may be called many
    times on its result with different ranks (rank search), so it must be cheap where the math allows (SVD
    truncation, HOSVD core truncation).
    """

    layers: tuple[str, ...] = ()
    """The layers this rewriter takes, as messages name them (``("Dense", "TimeDistributed(Dense)")``)."""
    method: str = ""
    priority: int = 0
    fallback: str | None = None

    def supports(self, layer: Any) -> bool:
        """True when this rewriter can rewrite ``layer`` (cheap: looks at type and config only)."""
        raise NotImplementedError

    def full_ranks(self, layer: Any) -> Ranks:
        """The ranks at which the rewrite reproduces the layer exactly (the largest meaningful ranks)."""
        raise NotImplementedError

    def cost(self, layer: Any, ranks: Ranks) -> Cost:
        """``(params, macs)`` of the replacement chain at ``ranks`` (MACs per example, as ``layer_cost``)."""
        raise NotImplementedError

    def outputs(self, layer: Any, ranks: Ranks | None) -> int | None:
        """Activation elements written per example by the replacement chain at ``ranks`` (by the original
        layer when ``ranks`` is None), for :func:`edgelr.rewrite.cost.latency_estimate`; None when this
        rewriter has no such model (recurrent layers)."""
        return None

    def error_proxy(self, decomposition: Any, ranks: Ranks) -> float | None:
        """Cheap estimate of the squared relative weight error at ``ranks`` from the full decomposition's
        spectra (model-wide rank allocation, :mod:`edgelr.rewrite.allocate`); None when there is none."""
        return None

    def input_statistic(self, layer: Any) -> Any:
        """The second moment of ``layer``'s input that makes :meth:`decompose` data-aware (an
        :class:`edgelr.rewrite.calibration.InputStatistic`), or None: this rewriter minimises the weight error
        only (the default)."""
        return None

    def decompose(self, layer: Any, stats: np.ndarray | None = None) -> Any:
        """A full-rank decomposition of the layer's weights, reusable across ranks. ``stats`` (only for a
        rewriter whose :meth:`input_statistic` is not None): the ``(d, d)`` second moment it asked for, collected
        on calibration inputs; the decomposition then minimises the layer's output error and its spectra are
        the data-aware ones (:mod:`edgelr.factorize.whiten`)."""
        raise NotImplementedError

    def select_ranks(self, layer: Any, decomposition: Any, policy: Any, multiple: int, floor: int) -> Ranks:
        """Ranks chosen by a rank policy (``edgelr.factorize.RankPolicy``)."""
        raise NotImplementedError

    def materialize(self, layer: Any, decomposition: Any, ranks: Ranks, *, exact: bool = True) -> Rewrite:
        """The replacement chain at ``ranks``; ``exact=False`` allows a cheaper, slightly worse fit (search)."""
        raise NotImplementedError

    def check_ranks(self, layer: Any, ranks: Any) -> Ranks:
        """``ranks`` as a tuple of ints within ``1..full``; raises :class:`FactorizeError` otherwise."""
        full = self.full_ranks(layer)
        if isinstance(ranks, (int, np.integer)):
            ranks = (int(ranks),) * len(full)
        try:
            ranks = tuple(int(r) for r in ranks)
        except (TypeError, ValueError):
            raise FactorizeError(f"layer '{layer.name}': rank {ranks!r} is not an int or a tuple of ints; "
                                 f"pass e.g. {full}") from None
        if len(ranks) != len(full):
            raise FactorizeError(f"layer '{layer.name}' ({self.method}) takes {len(full)} rank(s), got {ranks}; "
                                 f"pass a tuple like {full}")
        for r, f in zip(ranks, full):
            if not 1 <= r <= f:
                raise FactorizeError(f"layer '{layer.name}' ({self.method}): rank {r} is outside 1..{f}; "
                                     f"pass ranks between 1 and the full ranks {full}")
        return ranks


_REGISTRY: list[Rewriter] = []
_R = TypeVar("_R", bound=type[Rewriter])


def register_rewriter(method: str, *, priority: int = 0, fallback: str | None = None) -> Callable[[_R], _R]:
    """Class decorator: register one instance of the decorated :class:`Rewriter` under ``method``.

    Parameters
    ----------
    method : str
        The method name users pass (``--method``); several rewriters (one per layer kind) may share it.
    priority : int
        Among the rewriters that support the same layer, the higher is preferred (``auto``); see the
        module docstring.
    fallback : str, optional
        A method tried for the layers ``method`` does not apply to (``svd-recurrent`` -> ``svd``).
    """
    if not isinstance(method, str) or not method or method == "auto":
        raise ValueError(f"register_rewriter: got method {method!r}; expected a non-empty name other than 'auto'")

    def deco(cls: _R) -> _R:
        if not cls.layers:
            raise ValueError(f"rewriter {cls.__name__} names no layers; set layers = ('Dense', ...)")
        cls.method, cls.priority, cls.fallback = method, int(priority), fallback
        _REGISTRY.append(cls())
        _REGISTRY.sort(key=lambda r: -r.priority)  # stable: equal priorities keep the import order
        return cls

    return deco


def rewriters() -> list[Rewriter]:
    """All registered rewriters, preferred first."""
    return list(_REGISTRY)


def methods() -> tuple[str, ...]:
    """Every registered method name once, preferred first (``auto``, which picks per layer, is not one)."""
    return tuple(dict.fromkeys(r.method for r in _REGISTRY))


def supported_layers() -> list[str]:
    """The layers some rewriter takes, as messages name them, sorted."""
    return sorted({name for r in _REGISTRY for name in r.layers})


def fallback_of(method: str) -> str | None:
    """The method tried for layers ``method`` does not apply to, or None."""
    return next((r.fallback for r in _REGISTRY if r.method == method and r.fallback), None)


def applicable_methods(layer: Any) -> list[str]:
    """Low-rank methods that apply to ``layer``, preferred first (``[]`` when none).

    Examples: Dense -> ``['svd']``; k x k Conv2D -> ``['tucker2', 'cp', 'spatial-svd']``;
    1x1 Conv2D -> ``['svd']``; LSTM -> ``['svd', 'svd-recurrent']``.
    """
    return [r.method for r in rewriters() if r.supports(layer)]


def get_rewriter(layer: Any, method: str) -> Rewriter | None:
    """The rewriter for ``layer`` and ``method`` (``auto`` = first applicable), or None."""
    for r in rewriters():
        if (method == "auto" or r.method == method) and r.supports(layer):
            return r
    return None


def child_name(layer: Any, suffix: str) -> str:
    """Name of a replacement layer: ``<original>/<suffix>`` (tf_keras accepts '/' in layer names)."""
    return f"{layer.name}/{suffix}"


def derived_config(layer: Any, name: str, **overrides: Any) -> dict[str, Any]:
    """``layer.get_config()`` renamed to ``name`` with ``overrides`` applied (initializers kept).

    ``batch_input_shape`` / ``input_dim`` are dropped: the chain's first element receives them from the
    model rewrite when needed.
    """
    config = dict(layer.get_config())
    for key in ("batch_input_shape", "input_dim", "input_shape"):
        config.pop(key, None)
    config["name"] = name
    config.update(overrides)
    return config
