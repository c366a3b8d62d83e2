"""What a compress run produced (:class:`CompressResult`) and how its measurements become the summary,
the report and the one-line message (:func:`assemble`).

Scores are top-1 accuracy in % for classifiers (drops in points), else mean squared error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelr.compress.attempt import Attempt, RunSetup
from edgelr.compress.convert import ConversionResult
from edgelr.compress.evaluate import Task
from edgelr.compress.validate import XNNPACK_METHOD, TfliteValidation
from edgelr.rewrite.cost import model_cost


@dataclass
class CompressResult:
    """What :func:`compress` produced.

    Attributes
    ----------
    summary : dict
        Original vs compressed: accuracy (or mse), params, MACs, ``.tflite`` sizes, reductions, budget.
    report : dict
        Everything (written as ``report.json``).
    layers : pandas.DataFrame
        The per-layer table (``layers.csv``).
    model : tf_keras.Model
        The factorized, fine-tuned float model.
    tflite : bytes
        The compressed ``.tflite``.
    baseline_tflite : bytes
    out_dir : Path or None
    budget_met : bool or None
        None when no budget was given.
    message : str
        One line for the user (says when the budget was not met).
    """

    summary: dict[str, Any]
    report: dict[str, Any]
    layers: Any
    model: Any
    tflite: bytes
    baseline_tflite: bytes
    out_dir: Path | None
    budget_met: bool | None
    message: str

    @property
    def exit_code(self) -> int:
        return 1 if self.budget_met is False else 0


@dataclass(frozen=True)
class Baseline:
    """The original model, measured: float scores (validation, test) and its ``.tflite`` converted and
    validated like the compressed one (``baseline.tflite``)."""

    val: float
    test: float
    conversion: ConversionResult
    validation: TfliteValidation


@dataclass(frozen=True)
class RunRecord:
    """Everything a compress run measured, for :func:`assemble`.

    Attributes
    ----------
    setup : RunSetup
    baseline : Baseline
    attempt : Attempt
        The chosen attempt (the only one without a rank search).
    search : dict or None
        The rank search's record (:func:`edgelr.compress.search.search_and_run`); None without a budget.
    budget_met : bool or None
        None when no budget was given.
    seconds : float
        Wall time of the run so far.
    """

    setup: RunSetup
    baseline: Baseline
    attempt: Attempt
    search: dict[str, Any] | None
    budget_met: bool | None
    seconds: float


def assemble(record: RunRecord) -> CompressResult:
    """The result of a run: summary, report (``report.json``), layer table and the one-line message."""
    setup, base, attempt, budget_met = record.setup, record.baseline, record.attempt, record.budget_met
    task, tgt, quantization, opts = setup.task, setup.target, setup.quantization, setup.options
    base_conv, base_val = base.conversion, base.validation
    data = setup.data
    o_params, o_macs = model_cost(setup.original)
    tfl = attempt.validation.accuracy if task.classifier else attempt.validation.loss
    base_score = base_val.accuracy if task.classifier else base_val.loss
    layers = layers_table(setup.original, attempt)
    not_factorized = [{"layer": str(r["layer"]), "reason": str(r["reason"])}
                      for _, r in layers.iterrows() if bool(r["skipped"])]
    summary = {
        "model": setup.name, "target": tgt.name, "quantization": quantization, "io_dtype": attempt.conversion.io_dtype,
        "metric": task.metric,
        "original": {"score": base.test, "params": o_params, "macs": o_macs,
                     "tflite_bytes": base_conv.size_bytes, "tflite_score": base_score},
        "compressed": {"score_float": attempt.test_finetuned, "params": attempt.params, "macs": attempt.macs,
                       "tflite_bytes": attempt.conversion.size_bytes, "tflite_score": tfl},
        "reduction": {"params_x": o_params / max(attempt.params, 1), "macs_x": o_macs / max(attempt.macs, 1),
                      "tflite_size_x": base_conv.size_bytes / max(attempt.conversion.size_bytes, 1)},
        "drop_points": attempt.tflite_drop,
        "max_accuracy_drop": opts.max_accuracy_drop,
        "budget_met": budget_met,
        "seconds": record.seconds,
    }
    if not len(layers) or bool(layers["skipped"].all()):
        message = ("no layer could be factorized (every layer is kept; layers.csv says why); the model was "
                   f"fine-tuned and converted as is: {task.metric} {_fmt_score(task, base.test)} -> "
                   f"{_fmt_score(task, tfl)} ({quantization} tflite)")
        if budget_met is False:
            message += f"; accuracy budget NOT met ({attempt.tflite_drop:.2f} > {opts.max_accuracy_drop:g} points)"
    elif budget_met is False:
        message = (f"accuracy budget NOT met: the best configuration found loses {attempt.tflite_drop:.2f} points "
                   f"(budget {opts.max_accuracy_drop:g}) at {summary['reduction']['macs_x']:.2f}x fewer MACs; "
                   "it was written anyway")
    else:
        message = (f"done: {summary['reduction']['macs_x']:.2f}x fewer MACs, {summary['reduction']['params_x']:.2f}x "
                   f"fewer params, {task.metric} {_fmt_score(task, base.test)} -> "
                   f"{_fmt_score(task, tfl)} ({quantization} tflite)"
                   + (f", within the {opts.max_accuracy_drop:g}-point budget" if budget_met else ""))
    if attempt.validation.ops.custom_ops:
        message += (f"; WARNING: model.tflite uses non-builtin ops {attempt.validation.ops.custom_ops} that a stock "
                    "LiteRT runtime may not have")
    report = {
        "summary": summary,
        "target": tgt.to_dict(),
        "options": {k: v for k, v in vars(opts).items() if k != "progress"},
        "data": {"name": data.name, "sizes": data.sizes(), "num_classes": data.num_classes},
        "task": {"classifier": task.classifier, "output": task.output, "metric": task.metric},
        "original": {"val": base.val, "test": base.test, "params": o_params, "macs": o_macs},
        "factorized": {"label": attempt.label, "val_before_finetune": attempt.val_factorized,
                       "test_before_finetune": attempt.test_factorized, "val_after_finetune": attempt.val_finetuned,
                       "test_after_finetune": attempt.test_finetuned, "params": attempt.params, "macs": attempt.macs,
                       "layers_not_factorized": not_factorized},
        "finetune": {"history": attempt.finetune.history, "best_epoch": attempt.finetune.best_epoch,
                     "stopped_early": attempt.finetune.stopped_early, "seconds": attempt.finetune.seconds},
        "qat": {**attempt.qat.to_dict(), "finetune": None if attempt.qat_finetune is None else
                {"history": attempt.qat_finetune.history, "best_val": attempt.qat_finetune.best_val}},
        "tflite": {"quantization": quantization, "io_dtype": attempt.conversion.io_dtype,
                   "batch_size": attempt.conversion.batch_size,
                   "converted_in_child_process": attempt.conversion.isolated,
                   "notes": attempt.conversion.notes, "int8_path": attempt.int8_path,
                   "xnnpack_method": XNNPACK_METHOD, "validation": attempt.validation.to_dict()},
        "baseline_tflite": {"notes": base_conv.notes, "validation": base_val.to_dict()},
        "search": record.search,
        "message": message,
    }
    return CompressResult(summary=summary, report=report, layers=layers, model=attempt.model,
                          tflite=attempt.conversion.content, baseline_tflite=base_conv.content, out_dir=None,
                          budget_met=budget_met, message=message)


def _fmt_score(task: Task, v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f} %" if task.classifier else f"{v:.4g} (mse)"


def layers_table(original: Any, attempt: Attempt) -> Any:
    """One row per original layer with weights: the factorization report row (or why none applies) + QAT."""
    import pandas as pd

    from edgelr.rewrite import REPORT_COLUMNS, layer_cost, walk_layers

    rep = attempt.factor_report
    frame = rep.copy() if isinstance(rep, pd.DataFrame) else pd.DataFrame(rep or [], columns=REPORT_COLUMNS)
    known = set(frame["layer"].astype(str)) if "layer" in frame.columns else set()
    extra = []
    for path, layer in walk_layers(original):
        if path in known or not layer.weights or hasattr(layer, "layers"):
            continue
        p, m = layer_cost(layer)
        extra.append({"layer": path, "kind": type(layer).__name__, "method": "", "policy": "", "ranks": None,
                      "params_before": p, "params_after": p, "macs_before": m, "macs_after": m, "est_speedup": 1.0,
                      "rel_error": 0.0,
                      "skipped": True, "reason": f"no low-rank method applies to {type(layer).__name__}; kept"})
    if extra:
        order = {path: i for i, (path, _) in enumerate(walk_layers(original))}
        frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
        frame = frame.sort_values("layer", key=lambda s: s.map(lambda v: order.get(str(v), 10**9)),
                                  kind="stable").reset_index(drop=True)
    qat = attempt.qat
    status: dict[str, str] = {}
    reasons: dict[str, str] = {}
    names = [str(n) for n in frame["layer"]]
    for ql in getattr(qat, "layers", []):
        base = next((n for n in names if ql.name == n or ql.name.startswith(n + "/")), ql.name)
        flag = "yes" if ql.quantization_aware else "no"
        status[base] = flag if status.get(base, flag) == flag else "partial"
        if not ql.quantization_aware:
            reasons.setdefault(base, ql.reason)
    frame["qat"] = [status.get(n, "n/a") for n in names]
    frame["qat_note"] = [reasons.get(n, "") for n in names]
    frame["ranks"] = [("x".join(str(int(r)) for r in v) if isinstance(v, (list, tuple)) else "")
                      for v in frame["ranks"]]
    return frame
