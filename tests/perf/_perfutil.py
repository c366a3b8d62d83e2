"""Helpers shared by the benchmark scripts in tests/perf (run as scripts, so this module is imported by
its bare name: ``from _perfutil import chain_model``)."""

from __future__ import annotations

from typing import Any


def chain_model(k2: Any, model: Any, names: list[str], batch_size: int | None = None) -> Any:
    """A tf_keras model of copies of ``model``'s layers ``names`` applied in order (one layer, or the chain
    that replaced it), with their weights, on the first layer's input shape."""
    inp = k2.Input(tuple(model.get_layer(names[0]).input_shape[1:]), batch_size=batch_size)
    h = inp
    for n in names:
        src = model.get_layer(n)
        new = src.__class__.from_config(src.get_config())
        h = new(h)
        new.set_weights(src.get_weights())
    return k2.Model(inp, h)


def target_with_multiple(name: str | None, rank_multiple: int | None) -> Any:
    """The target profile ``name`` (``host`` when only ``rank_multiple`` is given) with its rank multiple
    replaced; None when neither is given."""
    if not name and not rank_multiple:
        return None
    import dataclasses

    from edgelr.targets import get_target

    target = get_target(name or "host")
    return dataclasses.replace(target, rank_multiple=rank_multiple) if rank_multiple else target
