"""Micro-models: one layer of a model, alone, as a tiny ``.tflite`` (the layer as is, or its low-rank chain at
given ranks), converted with the target's quantization, so its latency can be measured on the device.

The layer keeps its configuration, input shape (batch 1) and weights; the chain is the rewriter's own
(:func:`edgelr.rewrite.plan_factorization` + :func:`edgelr.rewrite.build_factorized` on the one-layer model),
so what is measured is exactly what ``edgelr compress`` would put into the model. int8 calibration uses
random inputs: per-tensor scales change the values, not the kernels XNNPACK runs or their time.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgelr.rewrite.cost import io_shapes, layer_signature, ranks_key
from edgelr.rewrite.registry import Ranks

LEVELS: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)
"""Shares of each full rank profiled (rounded up to the target's rank multiple); Tucker-2 takes the grid of
both modes. Ranks between them are interpolated (:class:`edgelr.rewrite.cost.MeasuredLatency`)."""


@dataclass(frozen=True)
class MicroSpec:
    """One micro-model to measure: layer ``path`` of the model as is (``ranks`` None) or rewritten."""

    path: str
    signature: str
    method: str
    ranks: Ranks | None

    @property
    def key(self) -> str:
        """``<signature>/<ranks>``: unique per measured thing, across models."""
        return f"{self.signature}/{ranks_key(self.ranks)}"


def rank_levels(full: Ranks, multiple: int, levels: tuple[float, ...] = LEVELS) -> list[Ranks]:
    """The profiled ranks of a layer whose full ranks are ``full``: each level of each mode, rounded up to
    ``multiple``, every combination (a grid; the full ranks included)."""
    axes = []
    for f in full:
        vals = sorted({max(1, min(int(f), int(math.ceil(lv * f / max(multiple, 1)) * max(multiple, 1))))
                       for lv in levels})
        axes.append(vals)
    grid: list[Ranks] = [()]
    for ax in axes:
        grid = [g + (v,) for g in grid for v in ax]
    return grid


def profiled_layers(model: Any, method: str = "auto") -> list[tuple[str, Any, Any]]:
    """``(path, layer, rewriter)`` of every layer of ``model`` a rewriter of ``method`` (or its fallback) takes
    and models the latency of (recurrent layers have no latency model and are not profiled)."""
    from edgelr.rewrite import get_rewriter, walk_layers
    from edgelr.rewrite.registry import fallback_of

    out = []
    for path, layer in walk_layers(model):
        rw = next((r for m in (method, fallback_of(method)) if m for r in [get_rewriter(layer, m)] if r), None)
        if rw is not None and rw.outputs(layer, None) is not None:
            out.append((path, layer, rw))
    return out


def layer_specs(layers: list[tuple[str, Any, Any]], multiple: int, levels: tuple[float, ...] = LEVELS
                ) -> list[MicroSpec]:
    """The micro-models of ``layers`` (:func:`profiled_layers`): each layer as is plus its rank grid
    (:func:`rank_levels`). Layers with the same signature (ResNet's repeated blocks) appear once."""
    specs: list[MicroSpec] = []
    seen: set[str] = set()
    for path, layer, rw in layers:
        sig = layer_signature(layer, rw.method)
        if sig in seen:
            continue
        seen.add(sig)
        specs.append(MicroSpec(path, sig, rw.method, None))
        full = tuple(int(f) for f in rw.full_ranks(layer))
        specs += [MicroSpec(path, sig, rw.method, r) for r in rank_levels(full, multiple, levels)]
    return specs


def one_layer_model(layer: Any) -> Any:
    """A tf_keras model of ``layer`` alone (same class, configuration and weights; input batch 1)."""
    from edgelr.tfcompat import keras2

    k = keras2()
    in_shape = io_shapes(layer)[0]
    inp = k.Input(shape=tuple(1 if d is None else int(d) for d in in_shape[1:]), batch_size=1)
    clone = type(layer).from_config(layer.get_config())
    out = clone(inp)
    clone.set_weights(layer.get_weights())
    return k.Model(inp, out, name=f"micro_{layer.name.replace('/', '_')}")


@contextmanager
def quiet_native_stderr():  # type: ignore[no-untyped-def]
    """Silence what the TFLite converter's C++ code prints on fd 2 (a few lines per conversion, hundreds of
    conversions per profile) while it runs; Python-level messages are not affected."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def build_micro(specs: list[MicroSpec], layer: Any, quantization: str, io_dtype: str) -> dict[str, bytes]:
    """``.tflite`` contents of ``specs`` (all of ``layer``) keyed by :attr:`MicroSpec.key`."""
    from edgelr.compress.convert import convert
    from edgelr.rewrite import build_factorized, plan_factorization

    micro = one_layer_model(layer)
    rng = np.random.default_rng(0)
    shape = tuple(int(d) for d in micro.inputs[0].shape[1:])
    calib = rng.standard_normal((8, *shape)).astype(np.float32)
    sub = None
    out: dict[str, bytes] = {}
    for spec in specs:
        if spec.ranks is None:
            model = micro
        else:
            if sub is None:
                sub = plan_factorization(micro, method=spec.method, rank_policy="rank:1", min_reduction=None,
                                         progress=False)
            model = build_factorized(micro, sub, {next(iter(sub.layers)): spec.ranks}, exact=False,
                                     progress=False)[0]
        with quiet_native_stderr():
            out[spec.key] = convert(model, quantization, io_dtype=io_dtype, representative=calib).content
    return out
