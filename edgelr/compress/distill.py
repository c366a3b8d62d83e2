"""Fine-tuning a compressed model with knowledge distillation from the original (Hinton et al. 2015).

Loss for classifiers, with teacher/student log-probabilities ``t`` and ``s`` (log-softmax of logits, or the
log of a softmax output) and temperature ``T``::

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, s)

For non-classifiers: ``alpha * MSE(teacher, student) + (1 - alpha) * MSE(y, student)``.
Teacher outputs are computed once before training (the teacher is frozen and there is no augmentation).
The learning rate decays along a cosine from ``learning_rate`` to ``learning_rate / 10``; training stops
when the validation score has not improved for ``patience`` epochs and the best weights are restored.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelr.compress.evaluate import Task, evaluate, predict
from edgelr.compress.validate import labels_of


@dataclass
class DistillConfig:
    """Fine-tuning settings.

    Attributes
    ----------
    epochs : int
        Maximum epochs (0 = no fine-tuning).
    batch_size : int
    learning_rate : float
        Initial Adam learning rate (reduced: ~1/2 to 1/10 of a typical training LR).
    temperature : float
        Softening temperature of the soft targets.
    alpha : float
        Weight of the distillation term (0 = labels only, 1 = teacher only).
    patience : int
        Epochs without validation improvement before stopping.
    max_train : int or None
        Use at most this many training samples per epoch (None = all).
    seed : int
    """

    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.7
    patience: int = 2
    max_train: int | None = None
    seed: int = 0


@dataclass
class DistillResult:
    """What fine-tuning did. ``history`` rows: epoch, loss, val_score, lr, seconds."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float | None = None
    initial_val: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0


def _log_probs(out: Any, kind: str) -> Any:
    from edgelr.tfcompat import tf

    tfm = tf()
    if kind == "probs":
        return tfm.math.log(tfm.clip_by_value(out, 1e-7, 1.0))
    return tfm.nn.log_softmax(out, axis=-1)


def distillation_loss(student_out: Any, teacher_out: Any, y_true: Any, task: Task, temperature: float,
                      alpha: float) -> Any:
    """The distillation loss (module docstring) of one batch, a scalar tensor: the batch mean of
    :func:`distillation_losses`.

    Parameters
    ----------
    student_out, teacher_out : tensor, shape (batch, k)
        Model outputs as the models produce them (probabilities or logits per ``task.output``).
    y_true : tensor, shape (batch,)
        Integer labels (classifiers) or targets of the output's shape.
    """
    from edgelr.tfcompat import tf

    return tf().reduce_mean(distillation_losses(student_out, teacher_out, y_true, task, temperature, alpha))


def distillation_losses(student_out: Any, teacher_out: Any, y_true: Any, task: Task, temperature: float,
                        alpha: float) -> Any:
    """The distillation loss of each example, a tensor of shape (batch,) (arguments as :func:`distillation_loss`).
    A replica of a distributed run sums its examples' losses and divides by the global batch size."""
    from edgelr.tfcompat import tf

    tfm = tf()
    if not task.classifier:
        s = tfm.cast(student_out, tfm.float32)
        s = tfm.reshape(s, [-1, int(np.prod(s.shape[1:]))])  # (batch, features), also for an empty batch
        hard = tfm.reduce_mean(tfm.square(s - tfm.reshape(tfm.cast(y_true, tfm.float32), tfm.shape(s))), axis=-1)
        soft = tfm.reduce_mean(tfm.square(s - tfm.reshape(tfm.cast(teacher_out, tfm.float32), tfm.shape(s))),
                               axis=-1)
        return alpha * soft + (1.0 - alpha) * hard
    s_log = _log_probs(student_out, task.output)
    t_log = _log_probs(teacher_out, task.output)
    t_soft = tfm.nn.softmax(t_log / temperature, axis=-1)
    s_soft_log = tfm.nn.log_softmax(s_log / temperature, axis=-1)
    kl = tfm.reduce_sum(t_soft * (tfm.math.log(tfm.clip_by_value(t_soft, 1e-12, 1.0)) - s_soft_log), axis=-1)
    labels = tfm.cast(tfm.reshape(y_true, [-1]), tfm.int32)
    ce = tfm.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=s_log)
    return alpha * (temperature ** 2) * kl + (1.0 - alpha) * ce


def distill(student: Any, teacher_train_out: np.ndarray, x_train: np.ndarray, y_train: np.ndarray,
            x_val: np.ndarray, y_val: np.ndarray, task: Task, config: DistillConfig | None = None, *,
            progress: bool = True, desc: str = "fine-tune", callbacks: list[Any] | None = None,
            penalty: Any = None, distribution: Any = None) -> DistillResult:
    """Fine-tune ``student`` in place towards the teacher's outputs and the labels.

    Parameters
    ----------
    student : tf_keras.Model
        The compressed model (trained in place; the best weights by validation score are kept).
    teacher_train_out : ndarray, shape (n_train, k)
        The original model's outputs on ``x_train`` (as it produces them).
    x_train : ndarray, shape (n_train, *input_shape)
    y_train : ndarray, shape (n_train,) labels, (n_train, k) one-hot, or targets
    x_val, y_val : validation split, for early stopping
    task : Task
    callbacks : list of tf_keras.callbacks.Callback, optional
        Told ``on_train_begin``, ``on_train_batch_end`` after every optimizer step and ``on_train_end``
        before the best weights are restored (low-rank training, :mod:`edgelr.compress.lowrank_train`).
    penalty : callable, optional
        ``() -> scalar tensor`` added to every batch's loss (e.g. an orthogonality penalty).
    distribution : edgelr.compress.distribute.Distribution, optional
        Train a replica of ``student`` on its strategy (same batches and the same mean loss per step as one
        process; :mod:`edgelr.compress.distribute`); ``student`` gets the chief's weights after every epoch.
        Not with ``callbacks`` or ``penalty`` (they act on ``student``'s own variables).
    """
    from edgelr.tfcompat import keras2, tf

    cfg = config or DistillConfig()
    tfm = tf()
    k2 = keras2()
    result = DistillResult()
    t_start = time.perf_counter()
    if distribution is not None:
        # every worker starts from the chief's model (QAT ranges calibrated with dropout on differ per worker)
        student.set_weights(distribution.from_chief(student.get_weights()))
    result.initial_val = evaluate(student, x_val, y_val, task)
    result.best_val = result.initial_val
    if cfg.epochs <= 0 or len(x_train) == 0:
        return result
    y_fit = labels_of(y_train) if task.classifier else np.asarray(y_train, np.float32)
    rng = np.random.default_rng(cfg.seed)
    n = len(x_train) if cfg.max_train is None else min(len(x_train), cfg.max_train)
    steps = max(1, int(np.ceil(n / cfg.batch_size)))
    total = steps * cfg.epochs
    schedule = k2.optimizers.schedules.CosineDecay(cfg.learning_rate, total, alpha=0.1)
    dist = distribution
    if dist is not None and (callbacks or penalty is not None):
        raise ValueError("distill: callbacks and penalty act on the student's own variables; not with a distribution")
    model = student if dist is None else dist.replicate(student)  # the model trained (student, or its replica)
    with dist.scope() if dist is not None else nullcontext():
        opt = k2.optimizers.Adam(learning_rate=schedule)
    replicas = 1 if dist is None else dist.replicas

    def train_step(xb: Any, tb: Any, yb: Any, nb: Any) -> Any:
        """One replica's step; its loss is its share of the global batch's mean (``nb`` examples in all)."""
        with tfm.GradientTape() as tape:
            out = model(xb, training=True)
            loss = tfm.reduce_sum(distillation_losses(out, tb, yb, task, cfg.temperature, cfg.alpha)) / nb
            if model.losses:
                loss = loss + tfm.add_n(model.losses) / replicas
            if penalty is not None:
                loss = loss + penalty()
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None])
        return loss

    step = tfm.function(train_step, reduce_retracing=True) if dist is None else dist.step(train_step)

    def batches(order: np.ndarray) -> Any:
        """The epoch's batches: sorted slices of ``order`` (as tensors, or distributed over the replicas)."""
        if dist is not None:
            yield from dist.epoch_batches((x_train.astype(np.float32, copy=False),
                                           teacher_train_out, y_fit), order, cfg.batch_size, steps)
            return
        for i in range(steps):
            idx = np.sort(order[i * cfg.batch_size:(i + 1) * cfg.batch_size])
            if len(idx):
                yield (tfm.constant(x_train[idx], tfm.float32), tfm.constant(teacher_train_out[idx]),
                       tfm.constant(y_fit[idx]), tfm.constant(float(len(idx))))

    best_weights = student.get_weights()
    better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)
    bad = 0
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=not progress, leave=False)
    for cb in callbacks or []:
        cb.set_model(student)
        cb.on_train_begin()
    try:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            order = rng.permutation(len(x_train))[:n]
            losses = []
            for i, batch in enumerate(batches(order)):
                loss = step(*batch)
                losses.append(float(loss))
                for cb in callbacks or []:
                    cb.on_train_batch_end(i)
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.4f}")
            if dist is not None:  # the chief's weights on every worker (per-replica state such as QAT ranges)
                student.set_weights(dist.from_chief(model.get_weights()))
            val = evaluate(student, x_val, y_val, task)
            if dist is not None:  # the chief's score decides early stopping, so the workers stay in step
                val = float(dist.from_chief([val])[0])
            lr = float(schedule(epoch * steps - 1))
            result.history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_score": val, "lr": lr,
                                   "seconds": time.perf_counter() - t0})
            bar.set_postfix(epoch=epoch, val=f"{val:.4g}")
            if better(val, result.best_val) or epoch == 1 and val == result.best_val:
                result.best_val, result.best_epoch, bad = val, epoch, 0
                best_weights = student.get_weights()
            else:
                bad += 1
                if bad >= cfg.patience:
                    result.stopped_early = epoch < cfg.epochs
                    break
    finally:
        bar.close()
    for cb in callbacks or []:
        cb.on_train_end()
    student.set_weights(best_weights)
    result.seconds = time.perf_counter() - t_start
    return result


def teacher_outputs(teacher: Any, x: np.ndarray) -> np.ndarray:
    """The teacher's outputs on ``x``, shape (n, *output_shape), computed once before distillation."""
    return predict(teacher, x)
