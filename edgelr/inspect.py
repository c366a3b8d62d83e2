"""What ``edgelr inspect`` shows: a per-layer table of a model with parameters, MACs and the low-rank
methods that apply, plus totals. Works on the tf_keras model :func:`edgelr.load_model` returns."""

from __future__ import annotations

from typing import Any


def _shape(layer: Any) -> str:
    try:
        shape = layer.output_shape
    except (AttributeError, RuntimeError):
        return "?"
    if isinstance(shape, list):
        return " ".join(_fmt_shape(s) for s in shape)
    return _fmt_shape(shape)


def _fmt_shape(shape: Any) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def layer_rows(model: Any, prefix: str = "") -> list[dict[str, Any]]:
    """One row per leaf layer (nested models are expanded with ``outer/inner`` names).

    Each row: layer, kind, output_shape, params, macs (per example), methods (low-rank methods that apply).
    """
    from edgelr.rewrite import applicable_methods, layer_cost

    rows: list[dict[str, Any]] = []
    for layer in model.layers:
        name = f"{prefix}{layer.name}"
        if hasattr(layer, "layers") and layer.__class__.__name__ in ("Functional", "Sequential", "Model"):
            rows.extend(layer_rows(layer, prefix=f"{name}/"))
            continue
        params, macs = layer_cost(layer)
        rows.append({
            "layer": name,
            "kind": layer.__class__.__name__,
            "output_shape": _shape(layer),
            "params": int(params),
            "macs": int(macs),
            "methods": list(applicable_methods(layer)),
        })
    return rows


def inspect_model(model: Any, load_info: Any = None) -> dict[str, Any]:
    """Everything ``edgelr inspect`` reports, as plain data (JSON-ready).

    ``load_info`` is what :func:`edgelr.models.load.load_model_with_info` returned (format, writer).
    """
    from edgelr.models.load import model_info

    meta = model_info(model, load_info)
    rows = layer_rows(model)
    factorizable = [r for r in rows if r["methods"]]
    return {
        **{k: meta[k] for k in ("name", "path", "format", "keras_version", "translated", "inputs", "outputs")},
        "layers": rows,
        "totals": {
            "layers": len(rows),
            "params": meta["params"],
            "trainable_params": meta["trainable_params"],
            "macs": int(sum(r["macs"] for r in rows)),
            "factorizable_layers": len(factorizable),
            "factorizable_macs": int(sum(r["macs"] for r in factorizable)),
            "factorizable_params": int(sum(r["params"] for r in factorizable)),
        },
    }
