"""What ``edgelr inspect`` shows: a per-layer table of a model with parameters, MACs and the low-rank
methods that apply, how low-rank each factorizable layer is, totals and a model-level verdict. Works on the
tf_keras model :func:`edgelr.load_model` returns.

How low-rank a layer is (:func:`lowrank_rows`): the layer's weights as one matrix ``W`` (``n_in x n_out``,
Keras layout: a Dense kernel; a conv kernel unfolded to ``(kh*kw*c_in, c_out)``, the im2col view; a separable
conv's pointwise kernel; an LSTM/GRU's input and recurrent kernels stacked; an Embedding table), and the
smallest rank ``r`` whose best rank-``r`` approximation has a relative error of at most 1 % and 5 %:
``sqrt(sum_{h > r} s_h^2 / sum_h s_h^2) <= e``. Without data, ``s`` are the singular values of ``W`` (weight
error). With data (``calibration``), of ``W`` whitened by the second moment of the layer's input on those
inputs (:func:`edgelr.factorize.layer_spectrum`): the error is then the relative error of the layer's output
on the calibration inputs (data-aware; Dense, convs and separable convs; other layers stay weights-only).

The verdict (:func:`verdict`): every factorizable layer is split by an SVD of ``W`` at the rank its verdict
error needs (``r (n_in + n_out)`` weights instead of ``n_in n_out``, MACs in the same ratio), where that saves
anything: 5 % OUTPUT error for the data-aware layers, 30 % WEIGHT error for the others (:data:`VERDICT_ERROR`).
The share of the MODEL's parameters and MACs this removes is the potential gain ``g`` (the larger of the two):

- ``g < 20 %``: "little to gain: this model is already compact";
- ``20 % <= g < 50 %``: "some gain";
- ``g >= 50 %``: "worth compressing".

Why two error levels: a weight direction with little input energy costs little output, so weight error
overstates what a split costs; trained layers rarely reach 5 % weight error below full rank (the digits demo
CNN, which compresses 3-4x within a point after fine-tuning, needs 63 of 64 ranks in every layer for it).
Measured (``reports/robust_ranks.md``): at these levels the digits CNN's gain is 68 % (output, data-aware) /
26 % (weights) while the compact mini-Xception's is 0 % / 2 %.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LOW_RANK_ERRORS = (0.01, 0.05)
"""Relative errors at which ``inspect`` reports the rank a layer needs."""
VERDICT_ERROR = {"output": 0.05, "weights": 0.3}
"""The per-layer relative error at which the verdict counts what factorization could save, by error kind."""
VERDICT_LITTLE, VERDICT_WORTH = 0.2, 0.5
"""Potential-gain thresholds of the verdict (shares of the model's parameters or MACs)."""


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


def _layer_matrix(layer: Any) -> tuple[np.ndarray, Any] | None:
    """``(W, statistic)``: the layer's weights as one ``(n_in, n_out)`` matrix and the
    :class:`edgelr.rewrite.calibration.InputStatistic` of its input that makes ``W``'s spectrum data-aware
    (None: weights only); None for layers without such a matrix."""
    from edgelr.rewrite.calibration import InputStatistic

    name = type(layer).__name__
    if name == "TimeDistributed" and type(layer.layer).__name__ == "Dense":
        return np.asarray(layer.layer.kernel.numpy(), np.float64), InputStatistic("features")
    if name == "Dense":
        return np.asarray(layer.kernel.numpy(), np.float64), InputStatistic("features")
    if name in ("SeparableConv1D", "SeparableConv2D"):
        kernel = np.asarray(layer.pointwise_kernel.numpy(), np.float64)
        stat = None
        if name == "SeparableConv2D":
            from edgelr.rewrite import get_rewriter

            rewriter = get_rewriter(layer, "auto")
            stat = rewriter.input_statistic(layer) if hasattr(rewriter, "input_statistic") else None
        return kernel.reshape(-1, kernel.shape[-1]), stat
    if name in ("Conv1D", "Conv2D"):
        kernel = np.asarray(layer.kernel.numpy(), np.float64)
        grouped = int(getattr(layer, "groups", 1)) != 1 or layer.data_format != "channels_last"
        return kernel.reshape(-1, kernel.shape[-1]), None if grouped else InputStatistic.conv_patches(layer)
    if name in ("LSTM", "GRU", "SimpleRNN"):
        cell = layer.cell
        return np.vstack([cell.kernel.numpy(), cell.recurrent_kernel.numpy()]).astype(np.float64), None
    if name == "Embedding":
        return np.asarray(layer.embeddings.numpy(), np.float64), None
    return None


def rank_for_error(singular_values: np.ndarray, error: float) -> int:
    """Smallest rank ``r`` with ``sqrt(sum_{h>r} s_h^2 / sum s_h^2) <= error`` (0 for an all-zero spectrum)."""
    from edgelr.factorize import energy_rank

    return energy_rank(singular_values, 1.0 - float(error) ** 2)


def lowrank_rows(model: Any, calibration: Any = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """How low-rank each factorizable layer of ``model`` is (module docstring), by qualified layer name.

    Parameters
    ----------
    model : tf_keras.Model
    calibration : numpy.ndarray, optional
        A batch of model inputs (a few hundred): the ranks are then for the relative OUTPUT error of each
        layer on them (data-aware) where the layer allows it.
    progress : bool
        A progress bar on stderr while the calibration statistics are collected.

    Returns
    -------
    dict
        Layer -> ``{"shape": (n_in, n_out), "full_rank", "rank_1pct", "rank_5pct", "error": "output" or
        "weights", "rank_verdict", "params_verdict", "macs_verdict"}``; the last three: the rank for the
        layer's :data:`VERDICT_ERROR` and the layer's cost with its matrix split there by an SVD (its cost as
        is when that does not save anything).
    """
    from edgelr.factorize import layer_spectrum
    from edgelr.rewrite import applicable_methods, layer_cost, walk_layers

    layers = {path: layer for path, layer in walk_layers(model) if applicable_methods(layer)}
    matrices = {path: m for path, layer in layers.items() if (m := _layer_matrix(layer)) is not None}
    stats: dict[str, np.ndarray] = {}
    if calibration is not None:
        from edgelr.rewrite.calibration import collect_statistics

        stats = collect_statistics(model, {p: (layers[p], st) for p, (_, st) in matrices.items() if st is not None},
                                   calibration, progress=progress)
    out: dict[str, dict[str, Any]] = {}
    for path, (w, _) in matrices.items():
        cov = stats.get(path)
        s = layer_spectrum(w, cov).singular_values
        n_in, n_out = w.shape
        ranks = [rank_for_error(s, e) for e in LOW_RANK_ERRORS]
        kind = "output" if cov is not None else "weights"
        r_verdict = rank_for_error(s, VERDICT_ERROR[kind])
        params, macs = layer_cost(layers[path])
        share = min(1.0, r_verdict * (n_in + n_out) / float(n_in * n_out))
        out[path] = {"shape": [int(n_in), int(n_out)], "full_rank": int(min(w.shape)), "rank_1pct": ranks[0],
                     "rank_5pct": ranks[-1], "error": kind, "rank_verdict": r_verdict,
                     "params_verdict": int(params - round(w.size * (1.0 - share))),
                     "macs_verdict": int(round(macs - macs * (w.size / max(params, 1)) * (1.0 - share)))}
    return out


def verdict(total_params: int, total_macs: int, lowrank: dict[str, dict[str, Any]],
            rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The model-level verdict from :func:`lowrank_rows` (rule in the module docstring): ``text``,
    ``params_gain``/``macs_gain`` (shares of the model that splitting every layer at its verdict rank removes)."""
    by_name = {r["layer"]: r for r in rows}
    saved_p = sum(by_name[p]["params"] - v["params_verdict"] for p, v in lowrank.items() if p in by_name)
    saved_m = sum(by_name[p]["macs"] - v["macs_verdict"] for p, v in lowrank.items() if p in by_name)
    gp = saved_p / total_params if total_params else 0.0
    gm = saved_m / total_macs if total_macs else 0.0
    g = max(gp, gm)
    kinds = {v["error"] for v in lowrank.values()}
    out_e, w_e = f"{VERDICT_ERROR['output']:.0%} relative output error", f"{VERDICT_ERROR['weights']:.0%} relative weight error"
    error = out_e if kinds == {"output"} else (w_e if kinds <= {"weights"} else f"{out_e} (data-aware layers), {w_e} (others)")
    detail = (f"split at {error} per layer, low-rank factorization could remove "
              f"{gp:.0%} of the parameters and {gm:.0%} of the MACs")
    if g < VERDICT_LITTLE:
        head = "little to gain: this model is already compact"
    elif g < VERDICT_WORTH:
        head = "some gain"
    else:
        head = "worth compressing"
    return {"text": f"{head} ({detail})", "params_gain": round(gp, 4), "macs_gain": round(gm, 4),
            "rule": f"gain < {VERDICT_LITTLE:.0%}: little to gain; < {VERDICT_WORTH:.0%}: some gain; else worth "
                    f"compressing (gain = the larger share of params or MACs removed with every layer split at "
                    f"{VERDICT_ERROR['output']:.0%} output error, or {VERDICT_ERROR['weights']:.0%} weight error without data)"}


def inspect_model(model: Any, load_info: Any = None, calibration: Any = None, progress: bool = False) -> dict[str, Any]:
    """Everything ``edgelr inspect`` reports, as plain data (JSON-ready).

    ``load_info`` is what :func:`edgelr.models.load.load_model_with_info` returned (format, writer);
    ``calibration`` a batch of model inputs for data-aware ranks (:func:`lowrank_rows`).
    """
    from edgelr.models.load import model_info

    meta = model_info(model, load_info)
    rows = layer_rows(model)
    lowrank = lowrank_rows(model, calibration, progress=progress)
    for r in rows:
        lr = lowrank.get(r["layer"])
        r.update({k: (lr or {}).get(k) for k in ("full_rank", "rank_1pct", "rank_5pct", "error")})
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
        "verdict": verdict(int(meta["params"]), int(sum(r["macs"] for r in rows)), lowrank, rows),
    }
