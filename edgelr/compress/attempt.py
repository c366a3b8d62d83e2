"""One attempt of a compress run: a factorized model taken through fine-tuning, QAT, TFLite conversion and
validation (:class:`AttemptRunner`). The plain path makes one attempt, the rank search several; the
expensive parts they share (teacher outputs, the original's scores, calibration samples) are computed once.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from edgelr.compress.convert import ConversionResult, convert
from edgelr.compress.distill import DistillConfig, DistillResult, distill, teacher_outputs
from edgelr.compress.evaluate import Task, drop, predict, score
from edgelr.compress.options import CompressOptions
from edgelr.compress.validate import TfliteValidation, run_tflite, validate_tflite
from edgelr.rewrite.cost import model_cost
from edgelr.targets import Target


@dataclass(frozen=True)
class RunSetup:
    """What a compress run works on, fixed before the first attempt.

    Attributes
    ----------
    name : str
        The model's name (file stem or ``model.name``); names the outputs (:mod:`edgelr.compress.names`).
    original : tf_keras.Model
        The caller's model (never modified).
    data : edgelr.data.Dataset
        Fitted to the model's input.
    task : Task
    target : edgelr.targets.Target
    quantization : str
        ``int8`` | ``float16`` | ``dynamic`` | ``none``.
    options : CompressOptions
    distribution : edgelr.compress.distribute.Distribution or None
        The started strategy of ``options.distribute`` (fine-tuning and QAT run on it); None = one process.
    """

    name: str
    original: Any
    data: Any
    task: Task
    target: Target
    quantization: str
    options: CompressOptions
    distribution: Any = None


@dataclass
class Attempt:
    """One factorized configuration taken through fine-tuning, QAT, conversion and validation.

    Scores are accuracy in % (classifiers) or mse; ``tflite_drop`` is the validated ``.tflite``'s drop
    against the float original on the test split, in points (or mse increase).
    """

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


def set_seeds(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and TensorFlow (``tf.keras.utils.set_random_seed``):
    weight initializers of new layers, tf_keras' own draws and dropout then repeat from run to run."""
    from edgelr.tfcompat import tf

    tf().keras.utils.set_random_seed(int(seed))


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeds set (:func:`set_seeds`: Python, NumPy, TensorFlow) for the duration of a run.

    Same seed, same result on the same machine and builds: the CPU kernels a fine-tune here uses are
    deterministic given the seeds (a fine-tune run twice gives bit-identical weights, tests/test_search.py;
    the demo's training too). TensorFlow's op determinism is NOT switched on: toggling it per run was
    followed by SIGABRTs inside TensorFlow in long test processes (twice in five full runs, at the first op
    after enabling it) and it logs "NodeDef mentions attribute use_unbounded_threadpool" errors.
    Left nondeterministic, and why: a different TensorFlow / oneDNN / XNNPACK build or a CPU with other vector
    instructions sums in another order (the last bits of a fine-tuned weight, and through it a borderline
    prediction, can change); LiteRT validation runs on one thread, so its reduction order does not depend
    on scheduling.
    """
    set_seeds(seed)
    yield


def calibration_samples(x_train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` training inputs (a seeded draw, in their original order) for int8 calibration, float32."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x_train), size=min(n, len(x_train)), replace=False)
    return np.asarray(x_train[np.sort(idx)], np.float32)


class AttemptRunner:
    """Runs configurations through fine-tune -> QAT -> convert -> validate (:meth:`run`), sharing the
    teacher outputs, the original's scores and the calibration samples across attempts.

    ``log`` receives one progress message at a time (the caller decides where they go).
    """

    def __init__(self, setup: RunSetup, log: Callable[[str], None]) -> None:
        self.original, self.data, self.task = setup.original, setup.data, setup.task
        self.quantization, self.io_dtype, self.opts = setup.quantization, setup.target.io_dtype, setup.options
        self.distribution = setup.distribution
        self.log = log
        self.calibration = calibration_samples(self.data.x_train, self.opts.calibration_samples, self.opts.seed)
        self.x_fit, self.y_fit = self.data.x_train, self.data.y_train
        self._teacher: np.ndarray | None = None
        self.original_val = score(predict(self.original, self.data.x_val), self.data.y_val, self.task)
        self.original_test_out = predict(self.original, self.data.x_test)
        self.original_test = score(self.original_test_out, self.data.y_test, self.task)

    @property
    def teacher(self) -> np.ndarray:
        """The original's outputs on the training inputs (computed on first use)."""
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

        data, task, opts, log = self.data, self.task, self.opts, self.log
        set_seeds(opts.seed)  # each attempt starts from the seed, whatever attempts ran before it
        test_fact = score(predict(model, data.x_test), data.y_test, task)
        log(f"[{label}] fine-tuning with distillation ({opts.epochs} epoch(s) max)")
        penalty = None
        if opts.orthogonal > 0:
            from edgelr.compress.lowrank_train import orthogonal_penalty, orthonormalize_factors

            n = orthonormalize_factors(model)
            penalty = orthogonal_penalty(model, opts.orthogonal)
            log(f"[{label}] soft orthogonality ({opts.orthogonal:g}) on {n} input factor(s)")
        ft = distill(model, self.teacher, self.x_fit, self.y_fit, data.x_val, data.y_val, task,
                     self.distill_config(opts.epochs), progress=opts.progress, desc=f"fine-tune {label}",
                     penalty=penalty, distribution=self.distribution)
        val_ft = ft.best_val if ft.best_val is not None else score(predict(model, data.x_val), data.y_val, task)
        test_out = predict(model, data.x_test)
        test_ft = score(test_out, data.y_test, task)
        qat_ft = None
        qat = QatResult(None, [], "QAT is off (--no-qat)" if not opts.qat else
                        f"QAT applies to int8 only (quantization is {self.quantization})")
        log(f"[{label}] converting to TFLite ({self.quantization})")
        conv = convert(model, self.quantization, io_dtype=self.io_dtype, representative=self.calibration,
                       strip=opts.strip_names)
        int8_path: dict[str, Any] = {"used": "post-training" if self.quantization == "int8" else "none"}
        if opts.qat and self.quantization == "int8":
            qat = quantize_aware(model)
            if qat.applied:
                log(f"[{label}] quantization-aware training ({len(qat.quantized_layers)} layer(s) QAT, "
                    f"{len(qat.float_layers)} float)")
                calibrate_ranges(qat.model, self.calibration, batch_size=min(opts.batch_size, len(self.calibration)))
                qat_ft = distill(qat.model, self.teacher, self.x_fit, self.y_fit, data.x_val, data.y_val, task,
                                 self.distill_config(opts.qat_epochs, 0.2), progress=opts.progress, desc=f"QAT {label}",
                                 distribution=self.distribution)
                qat_conv = convert(qat.model, self.quantization, io_dtype=self.io_dtype,
                                   representative=self.calibration, strip=opts.strip_names)
                # keep whichever int8 model scores better on the validation split (a short QAT run on little
                # data can end up worse than post-training quantization)
                ptq_val = score(run_tflite(conv.content, data.x_val), data.y_val, task)
                qat_val = score(run_tflite(qat_conv.content, data.x_val), data.y_val, task)
                qat_better = qat_val >= ptq_val if task.higher_is_better else qat_val <= ptq_val
                int8_path = {"used": "qat" if qat_better else "post-training", "val_qat_tflite": qat_val,
                             "val_post_training_tflite": ptq_val}
                if qat_better:
                    conv = qat_conv
                    test_out = predict(qat.model, data.x_test)
                log(f"[{label}] int8 on validation: QAT {qat_val:.4g}, post-training {ptq_val:.4g}; "
                    f"using {int8_path['used']}")
            else:
                log(f"[{label}] QAT not applied: {qat.error}")
        val = validate_tflite(conv.content, data.x_test, data.y_test, reference=test_out, classifier=task.classifier,
                              progress=opts.progress)
        params, macs = model_cost(model)
        tfl_score = val.accuracy if task.classifier else val.loss
        return Attempt(model, factor_report, label, float(ft.initial_val or 0.0), test_fact, ft, val_ft, test_ft,
                       qat, qat_ft, conv, val, params, macs, drop(self.original_test, float(tfl_score), task),
                       int8_path)
