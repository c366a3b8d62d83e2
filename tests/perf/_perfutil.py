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


def bisect_policy(model: Any, target_x: float, kind: str, *, steps: int = 8, cache: dict[float, float] | None = None,
                  **factorize_kwargs: Any) -> tuple[str, float]:
    """A ``kind:F`` rank policy (``kind`` = ``macs`` or ``params``; bisection on F, 4 decimals) whose
    whole-model reduction of that cost is closest to ``target_x``; returns ``(policy, reduction)``.

    ``cache`` maps F -> reduction (share it across targets); ``factorize_kwargs`` go to
    :func:`edgelr.factorize_model` (target, method, layer_policies, ...).
    """
    from edgelr.rewrite import factorize_model
    from edgelr.rewrite.cost import model_cost

    index = {"params": 0, "macs": 1}[kind]
    full = model_cost(model)[index]
    cache = {} if cache is None else cache

    def reduction(f: float) -> float:
        if f not in cache:
            fact, _ = factorize_model(model, rank_policy=f"{kind}:{f:.4f}", progress=False, **factorize_kwargs)
            cache[f] = full / model_cost(fact)[index]
        return cache[f]

    lo, hi = 0.02, 1.0
    best, best_err = (f"{kind}:1", 1.0), float("inf")
    for _ in range(steps):
        f = round((lo + hi) / 2, 4)
        x = reduction(f)
        if abs(x - target_x) < best_err:
            best, best_err = (f"{kind}:{f:.4f}", x), abs(x - target_x)
        if x < target_x:
            hi = f
        else:
            lo = f
    return best


def write_report(path: Any, lines: list[str]) -> None:
    """Write ``lines`` to ``path`` atomically (a reader never sees half a report) and say so on stdout."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(fh.name, path)
    print(f"wrote {path}")
