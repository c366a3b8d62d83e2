"""The whole ``edgelr compress`` job: factorize -> distill -> QAT -> TFLite -> validate -> outputs.

Entry point: :func:`compress`, which orchestrates the parts:

- :mod:`edgelr.compress.options`   the run's options, checked up front; the rank-plan options, resolved once
- :mod:`edgelr.compress.attempt`   one factorized model through fine-tune, QAT, conversion and validation
- :mod:`edgelr.compress.distribute` the tf.distribute strategy of ``--distribute`` (started before any
  TensorFlow op; only the chief writes the outputs and the history)
- :mod:`edgelr.compress.search`    the accuracy-aware rank search (``max_accuracy_drop``), over attempts
- :mod:`edgelr.compress.result`    summary, report and message of the run (:class:`CompressResult`)
- :mod:`edgelr.compress.outputs`   the files written to ``out_dir`` (atomically) and the history rows

Both ``.tflite`` files go through :func:`edgelr.compress.convert.convert` with the same settings, so they
are stripped of internal tensor names alike (``strip_names=False`` / ``--keep-names`` keeps them).

Scores are top-1 accuracy in % for classifiers (drops in points), else mean squared error.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from edgelr.compress.attempt import AttemptRunner, RunSetup, deterministic
from edgelr.compress.convert import check_quantization, convert
from edgelr.compress.evaluate import detect_task
from edgelr.compress.options import CompressOptions, check_options, resolve_plan_options, with_calibration
from edgelr.compress.outputs import OUTPUT_FILES, append_history, check_out_dir, write_outputs
from edgelr.compress.result import Baseline, CompressResult, RunRecord, assemble
from edgelr.compress.validate import validate_tflite
from edgelr.errors import UsageError
from edgelr.rewrite.options import PlanOptions

__all__ = ["OUTPUT_FILES", "CompressOptions", "CompressResult", "check_out_dir", "compress"]


def _logger(progress: bool, prefix: str = "") -> Callable[[str], None]:
    """Progress messages to stderr (``edgelr compress: [prefix]...``), or nowhere."""

    def log(msg: str) -> None:
        if progress:
            print(f"edgelr compress: {prefix}{msg}", file=sys.stderr, flush=True)

    return log


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

    opts = check_options(options)
    tgt = get_target(target, opts.targets_file)
    plan_options = resolve_plan_options(opts, tgt)
    quantization = check_quantization(opts.quantize or tgt.quantization, tgt.io_dtype)
    out = check_out_dir(out_dir, force)
    if isinstance(model, (str, os.PathLike)) and not Path(model).exists():
        from edgelr.errors import ModelLoadError

        raise ModelLoadError(f"model file {model} does not exist; pass a .keras/.h5 file or a SavedModel directory")
    dist = None
    if opts.distribute is not None:  # before TensorFlow runs any op (collective ops, logical devices)
        from edgelr.compress.distribute import start

        dist = start(opts.distribute)
    log = _logger(opts.progress, "" if dist is None or dist.is_chief else f"[worker {dist.spec.worker}] ")
    if dist is not None:
        log(f"fine-tuning and QAT on tf.distribute: {dist.describe()}")
    t0 = time.perf_counter()
    original, name = _load_model(model)
    d = _load_data(data, original)
    task = detect_task(original, d.num_classes)
    log(f"model '{name}', data '{d.name}' {d.sizes()}, target {tgt.name}, quantization {quantization}")
    setup = RunSetup(name, original, d, task, tgt, quantization, opts, dist)
    with deterministic(opts.seed):  # same seed, same result (edgelr.compress.attempt.deterministic)
        runner = AttemptRunner(setup, log)
        log(f"original: {task.metric} val {runner.original_val:.4g}, test {runner.original_test:.4g}")
        plan_options = with_calibration(plan_options, opts, runner.calibration)
        if plan_options.calibration is not None:
            log(f"data-aware factorization: layer input statistics from {len(runner.calibration)} training inputs "
                "(--no-data-aware: weights only)")
        search_info: dict[str, Any] | None = None
        if opts.max_accuracy_drop is None and opts.max_latency_ms is None and opts.min_speedup is None:
            from edgelr.compress.lowrank_train import train_and_factorize

            # CV ranks and low-rank training when asked, else the plain factorization
            fact, factor_report = train_and_factorize(runner, plan_options, log)
            attempt = runner.run(fact, factor_report, "factorized")
            budget_met = None
        else:
            from edgelr.compress.search import search_and_run

            attempt, search_info = search_and_run(runner, plan_options, log)
            budget_met = bool(search_info["budget_met"]) if opts.max_accuracy_drop is not None else None
        log(f"converting the original model ({quantization}) for baseline.tflite")
        base_conv = convert(original, quantization, io_dtype=tgt.io_dtype, representative=runner.calibration,
                            strip=opts.strip_names)
        base_val = validate_tflite(base_conv.content, d.x_test, d.y_test, reference=runner.original_test_out,
                                   classifier=task.classifier, progress=opts.progress)
        baseline = Baseline(runner.original_val, runner.original_test, base_conv, base_val)
    result = assemble(RunRecord(setup, baseline, attempt, search_info, budget_met, time.perf_counter() - t0))
    chief = dist is None or dist.is_chief
    if out is not None and chief:
        write_outputs(out, result)
        result.out_dir = out
    elif out is not None:  # another worker: the same files to a temporary directory, removed (the chief's count)
        with tempfile.TemporaryDirectory(prefix=f"edgelr-worker{dist.spec.worker}-") as tmp:
            write_outputs(Path(tmp), result)
    if opts.history and chief:
        append_history(opts.history, result, name, tgt.name)
    log(result.message)
    return result


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
    """The plain path (no budget): ``model`` factorized by the run's plan options -> (new model, report)."""
    from edgelr.rewrite import factorize_model

    return factorize_model(model, progress=progress, **plan_options.kwargs())
