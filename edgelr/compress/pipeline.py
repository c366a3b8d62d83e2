"""The whole ``edgelr compress`` job: factorize -> distill -> QAT -> TFLite -> validate -> outputs.

Entry point: :func:`compress`. Outputs written to ``out_dir`` (into a temporary sibling directory first,
renamed into place at the end, so a failed run never leaves half a directory):

- ``model.tflite``     the compressed model, quantized per the target (or ``quantize``)
- ``model.keras``      the factorized, fine-tuned float model (tf_keras)
- ``baseline.tflite``  the original model converted with the same quantization (fair comparisons)
- ``report.json``      everything measured (see :class:`CompressResult`)
- ``layers.csv``       one row per original layer: method, ranks, params and MACs before/after, QAT
- ``summary.md``       a short human summary
- ``names.json``       the model names of the two ``.tflite`` files (``<model>``, ``<model> (baseline)``),
  read by ``edgelr bench`` (:mod:`edgelr.compress.names`)
- ``search.csv`` / ``search.png``  candidates of the accuracy-aware rank search (``max_accuracy_drop``)

Both ``.tflite`` files go through :func:`edgelr.compress.convert.convert` with the same settings, so they
are stripped of internal tensor names alike (``strip_names=False`` / ``--keep-names`` keeps them).

Scores are top-1 accuracy in % for classifiers (drops in points), else mean squared error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from edgelr.compress.plan_options import PlanOptions, resolve_plan_options

import numpy as np

from edgelr.compress.names import NAMES_FILE, output_names
from edgelr.compress.convert import ConversionResult, check_quantization, convert
from edgelr.compress.distill import DistillConfig, DistillResult, distill, teacher_outputs
from edgelr.compress.evaluate import Task, detect_task, drop, predict, score
from edgelr.compress.validate import XNNPACK_METHOD, TfliteValidation, run_tflite, validate_tflite
from edgelr.errors import EdgelrError, UsageError
from edgelr.rewrite.cost import model_cost

OUTPUT_FILES = ("model.tflite", "model.keras", "baseline.tflite", "report.json", "layers.csv", "summary.md",
                NAMES_FILE)


@dataclass
class CompressOptions:
    """Options of :func:`compress` (CLI flags in brackets).

    Attributes
    ----------
    max_accuracy_drop : float or None
        [--max-accuracy-drop] Accuracy budget in points for the final int8 model against the float
        original (test split); enables the rank search. None = factorize per the rank policy.
    method, rank_policy : str or None
        [--method, --rank-policy] Factorization method and rank policy; default from the target profile.
    layer_policies : dict of str -> str, or None
        [--layer-policy PATTERN=POLICY] Per-layer rank policies: fnmatch pattern on the layer name -> policy
        spec; the first matching pattern wins, other layers follow ``rank_policy`` (see
        :func:`edgelr.rewrite.plan_factorization`).
    epochs : int
        [--epochs] Distillation fine-tuning epochs (0 = none).
    qat : bool
        [--qat/--no-qat] Quantization-aware training before int8 conversion.
    qat_epochs : int
        Epochs of QAT fine-tuning.
    quantize : str or None
        [--quantize] int8 | float16 | dynamic | none; default the target's.
    batch_size, learning_rate, temperature, alpha : distillation settings (see DistillConfig)
    max_train : int or None
        Use at most this many training samples per epoch (a new random draw each epoch).
    calibration_samples : int
        Representative samples for int8 calibration (drawn from the training split).
    include, skip : list of str or None
        Layer names to factorize only / never.
    strip_names : bool
        [--keep-names sets False] Strip internal tensor names from both ``.tflite`` files (smaller files,
        same outputs; input/output names and signatures are kept).
    min_reduction : float
        A layer is factorized only if it saves at least this share of its MACs (or params).
    min_efficiency : float or None
        [--min-efficiency] Latency-aware skip: a layer is left as is when its estimated speed-up is below
        this share of its MAC reduction (see :func:`edgelr.rewrite.plan_factorization`). None: off.
    allocate : str
        [--allocate] ``layer`` (each layer meets the rank policy) or ``latency`` (the policy sets the total
        params and weight loss; ranks re-chosen model-wide for the least estimated latency, see
        :func:`edgelr.rewrite.plan_factorization`).
    search_subset : int
        Validation samples used to score rank-search candidates.
    max_trials : int
        Fine-tune + convert + validate attempts of the rank search before giving up.
    history : str or None
        [--history] Results history directory; compress rows are appended there.
    targets_file : str or None
        [--targets] User target profiles.
    seed : int
    progress : bool
        Progress bars and messages on stderr.
    """

    max_accuracy_drop: float | None = None
    method: str | None = None
    rank_policy: str | None = None
    layer_policies: dict[str, str] | None = None
    epochs: int = 3
    qat: bool = True
    qat_epochs: int = 1
    quantize: str | None = None
    batch_size: int = 64
    learning_rate: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.7
    max_train: int | None = None
    calibration_samples: int = 256
    include: list[str] | None = None
    skip: list[str] | None = None
    strip_names: bool = True
    min_reduction: float = 0.1
    min_efficiency: float | None = None
    allocate: str = "layer"
    search_subset: int = 1000
    max_trials: int = 3
    history: str | None = None
    targets_file: str | None = None
    seed: int = 0
    progress: bool = True


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


@dataclass
class Attempt:
    """One factorized configuration taken through fine-tuning, QAT, conversion and validation."""

    model: Any
    factor_report: Any
    label: str
    val_factorized: float
    test_factorized: float
    finetune: DistillResult
    val_finetuned: float
    test_finetuned: float
    qat: Any
    qat_finetune: DistillResult | None
    conversion: ConversionResult
    validation: TfliteValidation
    params: int
    macs: int
    tflite_drop: float
    int8_path: dict[str, Any] = field(default_factory=dict)


def _log(opts: CompressOptions, msg: str) -> None:
    if opts.progress:
        print(f"edgelr compress: {msg}", file=sys.stderr, flush=True)


def check_out_dir(out_dir: str | os.PathLike[str] | None, force: bool) -> Path | None:
    """``out_dir`` as a Path; an existing non-empty directory (or a file) raises UsageError unless ``force``."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is an existing file; pass a directory path")
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"output directory {out} already exists and is not empty; pass --force to replace it "
                         "or choose another --out")
    return out


def _load_model(model: Any) -> tuple[Any, str]:
    if isinstance(model, (str, os.PathLike)):
        from edgelr import load_model

        return load_model(model), Path(model).stem
    if not hasattr(model, "layers") or not hasattr(model, "inputs"):
        raise UsageError(f"model: got {type(model).__name__}; pass a model file path or a tf_keras model")
    return model, str(getattr(model, "name", "model"))


def _load_data(data: Any, model: Any) -> Any:
    from edgelr.data import fit_to_model, load_data

    if isinstance(data, (str, os.PathLike)):
        return load_data(str(data), model=model)
    if not all(hasattr(data, a) for a in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")):
        raise UsageError(f"data: got {type(data).__name__}; pass a --data spec or an edgelr.data.Dataset")
    return fit_to_model(data, model)


def _factorize(model: Any, plan_options: PlanOptions, progress: bool) -> tuple[Any, Any]:
    from edgelr.rewrite import factorize_model

    return factorize_model(model, progress=progress, **plan_options.kwargs())


def _representative(x_train: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x_train), size=min(n, len(x_train)), replace=False)
    return np.asarray(x_train[np.sort(idx)], np.float32)


def _clone(model: Any) -> Any:
    from edgelr.tfcompat import keras2

    k2 = keras2()
    copy = k2.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


class Runner:
    """Runs configurations through fine-tune -> QAT -> convert -> validate, sharing the expensive parts
    (teacher outputs, original scores, baseline conversion) across attempts."""

    def __init__(self, original: Any, data: Any, task: Task, quantization: str, io_dtype: str,
                 opts: CompressOptions) -> None:
        self.original = original
        self.data = data
        self.task = task
        self.quantization = quantization
        self.io_dtype = io_dtype
        self.opts = opts
        self.rep = _representative(data.x_train, opts.calibration_samples, opts.seed)
        self.x_fit, self.y_fit = data.x_train, data.y_train
        self._teacher: np.ndarray | None = None
        self.original_val = score(predict(original, data.x_val), data.y_val, task)
        self.original_test_out = predict(original, data.x_test)
        self.original_test = score(self.original_test_out, data.y_test, task)

    @property
    def teacher(self) -> np.ndarray:
        if self._teacher is None:
            self._teacher = teacher_outputs(self.original, self.x_fit)
        return self._teacher

    def distill_config(self, epochs: int, lr_scale: float = 1.0) -> DistillConfig:
        o = self.opts
        return DistillConfig(epochs=epochs, batch_size=o.batch_size, learning_rate=o.learning_rate * lr_scale,
                             temperature=o.temperature, alpha=o.alpha, patience=2, max_train=o.max_train,
                             seed=o.seed)

    def run(self, model: Any, factor_report: Any, label: str) -> Attempt:
        """Fine-tune ``model`` (in place), QAT, convert and validate it."""
        from edgelr.compress.qat import QatResult, calibrate_ranges, quantize_aware

        d, t, o = self.data, self.task, self.opts
        test_fact = score(predict(model, d.x_test), d.y_test, t)
        _log(o, f"[{label}] fine-tuning with distillation ({o.epochs} epoch(s) max)")
        ft = distill(model, self.teacher, self.x_fit, self.y_fit, d.x_val, d.y_val, t,
                     self.distill_config(o.epochs), progress=o.progress, desc=f"fine-tune {label}")
        val_ft = ft.best_val if ft.best_val is not None else score(predict(model, d.x_val), d.y_val, t)
        test_out = predict(model, d.x_test)
        test_ft = score(test_out, d.y_test, t)
        qat_ft = None
        qat = QatResult(None, [], "QAT is off (--no-qat)" if not o.qat else
                        f"QAT applies to int8 only (quantization is {self.quantization})")
        _log(o, f"[{label}] converting to TFLite ({self.quantization})")
        conv = convert(model, self.quantization, io_dtype=self.io_dtype, representative=self.rep,
                       strip=o.strip_names)
        int8_path = {"used": "post-training" if self.quantization == "int8" else "none"}
        if o.qat and self.quantization == "int8":
            qat = quantize_aware(model)
            if qat.applied:
                _log(o, f"[{label}] quantization-aware training ({len(qat.quantized_layers)} layer(s) QAT, "
                        f"{len(qat.float_layers)} float)")
                calibrate_ranges(qat.model, self.rep, batch_size=min(o.batch_size, len(self.rep)))
                qat_ft = distill(qat.model, self.teacher, self.x_fit, self.y_fit, d.x_val, d.y_val, t,
                                 self.distill_config(o.qat_epochs, 0.2), progress=o.progress, desc=f"QAT {label}")
                qat_conv = convert(qat.model, self.quantization, io_dtype=self.io_dtype, representative=self.rep,
                                   strip=o.strip_names)
                # keep whichever int8 model scores better on the validation split (a short QAT run on little
                # data can end up worse than post-training quantization)
                ptq_val = score(run_tflite(conv.content, d.x_val), d.y_val, t)
                qat_val = score(run_tflite(qat_conv.content, d.x_val), d.y_val, t)
                qat_better = qat_val >= ptq_val if t.higher_is_better else qat_val <= ptq_val
                int8_path = {"used": "qat" if qat_better else "post-training", "val_qat_tflite": qat_val,
                             "val_post_training_tflite": ptq_val}
                if qat_better:
                    conv = qat_conv
                    test_out = predict(qat.model, d.x_test)
                _log(o, f"[{label}] int8 on validation: QAT {qat_val:.4g}, post-training {ptq_val:.4g}; "
                        f"using {int8_path['used']}")
            else:
                _log(o, f"[{label}] QAT not applied: {qat.error}")
        val = validate_tflite(conv.content, d.x_test, d.y_test, reference=test_out, classifier=t.classifier,
                              progress=o.progress)
        params, macs = model_cost(model)
        tfl_score = val.accuracy if t.classifier else val.loss
        return Attempt(model, factor_report, label, float(ft.initial_val or 0.0), test_fact, ft, val_ft, test_ft,
                       qat, qat_ft, conv, val, params, macs, drop(self.original_test, float(tfl_score), t),
                       int8_path)


def compress(model: Any, data: Any, target: str = "host", out_dir: str | os.PathLike[str] | None = None, *,
             force: bool = False, **options: Any) -> CompressResult:
    """Compress ``model`` for ``target``: factorize, fine-tune, QAT, convert, validate, write outputs.

    Parameters
    ----------
    model : str, path or tf_keras.Model
        Model file (anything :func:`edgelr.load_model` reads) or a tf_keras model (not modified).
    data : str or edgelr.data.Dataset
        A ``--data`` spec (``digits``, ``fashion-mnist``, ``file.npz``, ``module:function``) or loaded data.
    target : str
        Target profile name (``edgelr targets``).
    out_dir : path, optional
        Where to write the outputs (None = write nothing).
    force : bool
        Replace an existing non-empty ``out_dir``.
    **options
        Fields of :class:`CompressOptions`.

    Returns
    -------
    CompressResult
        ``exit_code`` is 1 when a ``max_accuracy_drop`` budget was not met (outputs are still written).

    Raises
    ------
    UsageError, TargetError, DataError, ModelLoadError, ConversionError
    """
    from edgelr.targets import get_target

    unknown = sorted(set(options) - set(CompressOptions.__dataclass_fields__))
    if unknown:
        raise UsageError(f"compress: unknown option(s) {unknown}; valid: {sorted(CompressOptions.__dataclass_fields__)}")
    opts = CompressOptions(**options)
    tgt = get_target(target, opts.targets_file)
    quantization = check_quantization(opts.quantize or tgt.quantization, tgt.io_dtype)
    out = check_out_dir(out_dir, force)
    if opts.epochs < 0 or opts.qat_epochs < 0 or opts.batch_size < 1:
        raise UsageError(f"epochs={opts.epochs}, qat_epochs={opts.qat_epochs}, batch_size={opts.batch_size}; "
                         "expected epochs >= 0 and batch size >= 1")
    if opts.rank_policy is not None:
        from edgelr.factorize import parse_rank_policy

        try:
            parse_rank_policy(opts.rank_policy)
        except EdgelrError as exc:
            raise UsageError(f"--rank-policy: {exc}") from None
    if opts.layer_policies is not None:
        from edgelr.rewrite.options import check_layer_policies

        try:
            opts.layer_policies = check_layer_policies(opts.layer_policies)
        except EdgelrError as exc:
            raise UsageError(f"--layer-policy: {exc}") from None
    from edgelr.rewrite.options import check_allocate, check_min_efficiency

    for flag, check, value in (("--min-efficiency", check_min_efficiency, opts.min_efficiency),
                               ("--allocate", check_allocate, opts.allocate)):
        try:
            check(value)
        except EdgelrError as exc:
            raise UsageError(f"{flag}: {exc}") from None
    plan_options = resolve_plan_options(opts, tgt)  # after the checks: their errors name the CLI flags
    if isinstance(model, (str, os.PathLike)) and not Path(model).exists():
        from edgelr.errors import ModelLoadError

        raise ModelLoadError(f"model file {model} does not exist; pass a .keras/.h5 file or a SavedModel directory")
    t0 = time.perf_counter()
    original, name = _load_model(model)
    d = _load_data(data, original)
    task = detect_task(original, d.num_classes)
    _log(opts, f"model '{name}', data '{d.name}' {d.sizes()}, target {tgt.name}, quantization {quantization}")
    runner = Runner(original, d, task, quantization, tgt.io_dtype, opts)
    _log(opts, f"original: {task.metric} val {runner.original_val:.4g}, test {runner.original_test:.4g}")
    search_info: dict[str, Any] | None = None
    if opts.max_accuracy_drop is None:
        fact, rep = _factorize(original, plan_options, opts.progress)
        attempt = runner.run(fact, rep, "factorized")
        budget_met = None
    else:
        from edgelr.compress.search import search_and_run

        attempt, search_info = search_and_run(runner, plan_options, lambda msg: _log(opts, msg))
        budget_met = bool(search_info["budget_met"])
    _log(opts, f"converting the original model ({quantization}) for baseline.tflite")
    base_conv = convert(original, quantization, io_dtype=tgt.io_dtype, representative=runner.rep,
                        strip=opts.strip_names)
    base_val = validate_tflite(base_conv.content, d.x_test, d.y_test, reference=runner.original_test_out,
                               classifier=task.classifier, progress=opts.progress)
    result = _assemble(name, original, d, task, tgt, quantization, opts, runner, attempt, base_conv, base_val,
                       search_info, budget_met, time.perf_counter() - t0)
    if out is not None:
        _write_outputs(out, result, search_info, force)
        result.out_dir = out
    if opts.history:
        _append_history(opts.history, result, name, tgt.name)
    _log(opts, result.message)
    return result


def _layers_table(original: Any, attempt: Attempt) -> Any:
    """One row per original layer with weights: the factorization report row (or why none applies) + QAT."""
    import pandas as pd

    from edgelr.rewrite import walk_layers
    from edgelr.rewrite.cost import layer_cost
    from edgelr.rewrite import REPORT_COLUMNS

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


def _fmt_score(task: Task, v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f} %" if task.classifier else f"{v:.4g} (mse)"


def _assemble(name: str, original: Any, d: Any, task: Task, tgt: Any, quantization: str, opts: CompressOptions,
              runner: Runner, a: Attempt, base_conv: ConversionResult, base_val: TfliteValidation,
              search_info: dict[str, Any] | None, budget_met: bool | None, seconds: float) -> CompressResult:
    o_params, o_macs = model_cost(original)
    tfl = a.validation.accuracy if task.classifier else a.validation.loss
    base = base_val.accuracy if task.classifier else base_val.loss
    layers = _layers_table(original, a)
    not_factorized = [{"layer": str(r["layer"]), "reason": str(r["reason"])}
                      for _, r in layers.iterrows() if bool(r["skipped"])]
    summary = {
        "model": name, "target": tgt.name, "quantization": quantization, "io_dtype": a.conversion.io_dtype,
        "metric": task.metric,
        "original": {"score": runner.original_test, "params": o_params, "macs": o_macs,
                     "tflite_bytes": base_conv.size_bytes, "tflite_score": base},
        "compressed": {"score_float": a.test_finetuned, "params": a.params, "macs": a.macs,
                       "tflite_bytes": a.conversion.size_bytes, "tflite_score": tfl},
        "reduction": {"params_x": o_params / max(a.params, 1), "macs_x": o_macs / max(a.macs, 1),
                      "tflite_size_x": base_conv.size_bytes / max(a.conversion.size_bytes, 1)},
        "drop_points": a.tflite_drop,
        "max_accuracy_drop": opts.max_accuracy_drop,
        "budget_met": budget_met,
        "seconds": seconds,
    }
    if not len(layers) or bool(layers["skipped"].all()):
        message = ("no layer could be factorized (every layer is kept; layers.csv says why); the model was "
                   f"fine-tuned and converted as is: {task.metric} {_fmt_score(task, runner.original_test)} -> "
                   f"{_fmt_score(task, tfl)} ({quantization} tflite)")
        if budget_met is False:
            message += f"; accuracy budget NOT met ({a.tflite_drop:.2f} > {opts.max_accuracy_drop:g} points)"
    elif budget_met is False:
        message = (f"accuracy budget NOT met: the best configuration found loses {a.tflite_drop:.2f} points "
                   f"(budget {opts.max_accuracy_drop:g}) at {summary['reduction']['macs_x']:.2f}x fewer MACs; "
                   "it was written anyway")
    else:
        message = (f"done: {summary['reduction']['macs_x']:.2f}x fewer MACs, {summary['reduction']['params_x']:.2f}x "
                   f"fewer params, {task.metric} {_fmt_score(task, runner.original_test)} -> "
                   f"{_fmt_score(task, tfl)} ({quantization} tflite)"
                   + (f", within the {opts.max_accuracy_drop:g}-point budget" if budget_met else ""))
    if a.validation.ops.custom_ops:
        message += (f"; WARNING: model.tflite uses non-builtin ops {a.validation.ops.custom_ops} that a stock "
                    "LiteRT runtime may not have")
    report = {
        "summary": summary,
        "target": tgt.to_dict(),
        "options": {k: v for k, v in vars(opts).items() if k != "progress"},
        "data": {"name": d.name, "sizes": d.sizes(), "num_classes": d.num_classes},
        "task": {"classifier": task.classifier, "output": task.output, "metric": task.metric},
        "original": {"val": runner.original_val, "test": runner.original_test, "params": o_params, "macs": o_macs},
        "factorized": {"label": a.label, "val_before_finetune": a.val_factorized,
                       "test_before_finetune": a.test_factorized, "val_after_finetune": a.val_finetuned,
                       "test_after_finetune": a.test_finetuned, "params": a.params, "macs": a.macs,
                       "layers_not_factorized": not_factorized},
        "finetune": {"history": a.finetune.history, "best_epoch": a.finetune.best_epoch,
                     "stopped_early": a.finetune.stopped_early, "seconds": a.finetune.seconds},
        "qat": {**a.qat.to_dict(), "finetune": None if a.qat_finetune is None else
                {"history": a.qat_finetune.history, "best_val": a.qat_finetune.best_val}},
        "tflite": {"quantization": quantization, "io_dtype": a.conversion.io_dtype,
                   "batch_size": a.conversion.batch_size, "converted_in_child_process": a.conversion.isolated,
                   "notes": a.conversion.notes, "int8_path": a.int8_path, "xnnpack_method": XNNPACK_METHOD,
                   "validation": a.validation.to_dict()},
        "baseline_tflite": {"notes": base_conv.notes, "validation": base_val.to_dict()},
        "search": search_info,
        "message": message,
    }
    return CompressResult(summary=summary, report=report, layers=layers, model=a.model, tflite=a.conversion.content,
                          baseline_tflite=base_conv.content, out_dir=None, budget_met=budget_met, message=message)


def summary_markdown(result: CompressResult) -> str:
    """The ``summary.md`` text."""
    s, r = result.summary, result.report
    task_metric = s["metric"]
    unit = " %" if task_metric == "accuracy" else ""

    def f(v: Any, fmt: str = ".2f") -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [f"# edgelr compress: {s['model']} for {s['target']}", "",
             result.message, "",
             f"| | original | compressed | ratio |", "|---|---:|---:|---:|",
             f"| params | {s['original']['params']:,} | {s['compressed']['params']:,} | {s['reduction']['params_x']:.2f}x |",
             f"| MACs | {s['original']['macs']:,} | {s['compressed']['macs']:,} | {s['reduction']['macs_x']:.2f}x |",
             f"| {task_metric} (float, test) | {f(s['original']['score'])}{unit} | {f(s['compressed']['score_float'])}{unit} | |",
             f"| {task_metric} ({s['quantization']} .tflite, test) | {f(s['original']['tflite_score'])}{unit} | "
             f"{f(s['compressed']['tflite_score'])}{unit} | |",
             f"| .tflite size (bytes) | {s['original']['tflite_bytes']:,} | {s['compressed']['tflite_bytes']:,} | "
             f"{s['reduction']['tflite_size_x']:.2f}x |", ""]
    fac = r["factorized"]
    lines += [f"Accuracy path ({task_metric}, test): original {f(r['original']['test'])} -> factorized "
              f"{f(fac['test_before_finetune'])} -> fine-tuned {f(fac['test_after_finetune'])} -> "
              f"{s['quantization']} .tflite {f(s['compressed']['tflite_score'])}.", ""]
    if fac.get("layers_not_factorized"):
        lines += ["Layers kept as they were: " + "; ".join(f"{x['layer']} ({x['reason']})"
                                                         for x in fac["layers_not_factorized"]) + ".", ""]
    q = r["qat"]
    if q.get("applied"):
        lines += [f"Quantization-aware: {', '.join(q['quantization_aware']) or 'none'}. "
                  f"Float during QAT (int8 by calibration): {', '.join(q['float']) or 'none'}.", ""]
    else:
        lines += [f"QAT: not applied ({q.get('error')}).", ""]
    path = r["tflite"].get("int8_path") or {}
    if "val_qat_tflite" in path:
        lines += [f"int8 model used: {path['used']} (validation {task_metric}: QAT {path['val_qat_tflite']:.4g}, "
                  f"post-training {path['val_post_training_tflite']:.4g}).", ""]
    ops = r["tflite"]["validation"]["ops"]
    lines += [f"TFLite ops: {', '.join(f'{k} x{v}' for k, v in sorted(ops['ops'].items()))}; XNNPACK takes "
              f"{ops['num_delegated']} of {ops['num_nodes']} nodes"
              + (f" (not: {', '.join(sorted(ops['not_delegated']))})" if ops["not_delegated"] else "") + ".", ""]
    if r["tflite"]["notes"]:
        lines += ["Conversion notes: " + "; ".join(r["tflite"]["notes"]), ""]
    if r.get("search"):
        lines += ["## Rank search candidates", "", "See search.csv and search.png.", ""]
        lines += _candidates_md(r["search"]["candidates"]) + [""]
    return "\n".join(lines)


def _candidates_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    cols = ["label", "macs", "params", "macs_x", "val_score", "tried", "tflite_drop"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("" if v is None else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool)
                                               else f"{v:.3g}" if isinstance(v, float) else str(v)))
        out.append("| " + " | ".join(cells) + " |")
    return out


def _write_outputs(out: Path, result: CompressResult, search_info: dict[str, Any] | None, force: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "model.tflite").write_bytes(result.tflite)
        (tmp / "baseline.tflite").write_bytes(result.baseline_tflite)
        result.model.save(str(tmp / "model.keras"))
        result.layers.to_csv(tmp / "layers.csv", index=False)
        outputs = {n: str(out / n) for n in OUTPUT_FILES}
        if search_info:
            import pandas as pd

            pd.DataFrame(search_info["candidates"]).to_csv(tmp / "search.csv", index=False)
            outputs["search.csv"] = str(out / "search.csv")
            from edgelr.compress.search import plot_candidates

            if plot_candidates(search_info, tmp / "search.png", result.summary):
                outputs["search.png"] = str(out / "search.png")
        result.summary["outputs"] = outputs
        result.report["layers"] = json.loads(result.layers.to_json(orient="records"))
        (tmp / "report.json").write_text(json.dumps(_jsonable(result.report), indent=2))
        (tmp / "summary.md").write_text(summary_markdown(result))
        (tmp / NAMES_FILE).write_text(json.dumps(output_names(result.summary["model"]), indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def _append_history(history: str, result: CompressResult, name: str, target: str) -> None:
    import pandas as pd

    from edgelr.report.history import append_run

    s = result.summary
    rows: list[dict[str, Any]] = []
    names = output_names(name)
    for model_name, part in ((names["baseline.tflite"], s["original"]), (names["model.tflite"], s["compressed"])):
        values = [("model_size", part["tflite_bytes"], "bytes"), ("params", part["params"], "count"),
                  ("macs", part["macs"], "count")]
        if s["metric"] == "accuracy" and part["tflite_score"] is not None:
            values.append(("accuracy", part["tflite_score"], "%"))
        rows += [{"model": model_name, "metric": m, "value": float(v), "unit": u} for m, v, u in values]
    frame = pd.DataFrame(rows)
    frame["device"] = "host"
    frame["target"] = target
    frame["transport"] = "local"
    frame["tool"] = "compress"
    frame["sample"] = -1
    frame["note"] = s["quantization"]
    append_run(frame, history, kind="compress")
