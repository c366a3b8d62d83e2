"""Input statistics of layers on calibration data, for data-aware factorization (:mod:`edgelr.factorize.whiten`).

A rewriter says which second moment of its layer's input makes its decomposition data-aware
(:meth:`edgelr.rewrite.registry.Rewriter.input_statistic` returns an :class:`InputStatistic`):

- ``features``: ``E[x^T x]`` over the last axis of the input, pooled over batch and positions (Dense,
  TimeDistributed(Dense); the input channels of a conv for Tucker-2);
- ``patches``: the same over im2col patches ``(kh*kw*c_in)`` taken with the conv's kernel size, strides,
  dilation and padding, ordered as ``kernel.reshape(-1, c_out)`` (convs by SVD of the unfolded kernel;
  ``(kh, 1)`` vertical patches for spatial SVD);
- either after ``pre``, a function of the input batch (a SeparableConv2D's depthwise part, whose output feeds
  the factorized pointwise kernel).

:func:`collect_statistics` runs the original model ONCE over the calibration batch, in batches, with every
requested layer input as an extra output, and accumulates ``X^T X`` (float64) per layer: no im2col matrix
of the whole batch is ever held, and shrinks it towards a multiple of the identity by the Ledoit-Wolf weight
(:func:`shrink`: no shrinkage with many more rows than dimensions, as conv patches have; much with fewer, as a
Dense layer on a flattened feature map has). A few hundred inputs are enough (REFERENCE §9). Layers of a nested model
get no statistics and stay weights-only (their inputs are tensors of the nested model's own graph).
:func:`check_calibration` gives one clear error for a batch that does not fit the model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import numpy as np

from edgelr.errors import FactorizeError

DEFAULT_BATCH = 32


@dataclass(frozen=True, eq=False)
class InputStatistic:
    """Which second moment of a layer's input a data-aware decomposition needs (module docstring).

    Attributes
    ----------
    kind : ``"features"`` or ``"patches"``
    kernel_size, strides, dilation : tuple of int
        Patch geometry (``patches``), 1-D for Conv1D inputs, 2-D for Conv2D inputs.
    padding : str
        ``valid``, ``same`` or ``causal`` (Conv1D), as the conv's.
    pre : callable, optional
        Applied to each input batch (a TF tensor) before the statistic (e.g. a depthwise conv).
    """

    kind: Literal["features", "patches"]
    kernel_size: tuple[int, ...] = (1,)
    strides: tuple[int, ...] = (1,)
    dilation: tuple[int, ...] = (1,)
    padding: str = "valid"
    pre: Callable[[Any], Any] | None = field(default=None)

    @classmethod
    def conv_patches(cls, layer: Any, kernel_size: tuple[int, ...] | None = None,
                     strides: tuple[int, ...] | None = None, dilation: tuple[int, ...] | None = None) -> "InputStatistic":
        """Patches of a Conv1D/Conv2D ``layer``'s own geometry (or of the given parts of it)."""
        return cls("patches", tuple(int(k) for k in (kernel_size or layer.kernel_size)),
                   tuple(int(s) for s in (strides or layer.strides)),
                   tuple(int(d) for d in (dilation or layer.dilation_rate)), str(layer.padding))


def check_calibration(model: Any, x: Any) -> list[np.ndarray]:
    """``x`` as a list of float32 arrays, one per model input, after checking it fits ``model``.

    Raises
    ------
    FactorizeError
        Not an array (or a list of arrays for a multi-input model), empty, NaN/Inf values, or a shape the
        model does not take; the message names the shape received and the one expected.
    """
    inputs = list(model.inputs)
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    expected = ", ".join(str(tuple(t.shape)) for t in inputs)
    if len(xs) != len(inputs):
        raise FactorizeError(f"calibration: got {len(xs)} array(s); model '{model.name}' has {len(inputs)} "
                             f"input(s) of shape {expected}; pass a batch of model inputs (e.g. x_train[:256])")
    out = []
    for arr, tensor in zip(xs, inputs):
        try:
            a = np.asarray(arr, dtype=np.float32)
        except (TypeError, ValueError):
            raise FactorizeError(f"calibration: got {type(arr).__name__}; expected a NumPy batch of model inputs "
                                 f"of shape {expected}") from None
        want = tuple(tensor.shape)
        ok = a.ndim == len(want) and all(w is None or int(w) == int(g) for w, g in zip(want[1:], a.shape[1:]))
        if not ok:
            raise FactorizeError(f"calibration: got an array of shape {a.shape}; model '{model.name}' takes "
                                 f"{want} (batch first); pass a batch of model inputs (e.g. x_train[:256])")
        if a.shape[0] < 1:
            raise FactorizeError("calibration: got an empty batch; pass a few hundred model inputs")
        if not np.isfinite(a).all():
            raise FactorizeError("calibration: the batch has NaN or Inf values; pass finite model inputs")
        out.append(a)
    if len({a.shape[0] for a in out}) > 1:
        raise FactorizeError(f"calibration: the input arrays have different batch sizes {[a.shape[0] for a in out]}")
    return out


def _rows(tf: Any, tensor: Any, stat: InputStatistic) -> Any:
    """The ``(rows, d)`` float32 matrix whose ``X^T X`` this batch contributes."""
    t = tf.convert_to_tensor(tensor)
    if stat.pre is not None:
        t = stat.pre(t)
    t = tf.cast(t, tf.float32)
    if stat.kind == "features":
        return tf.reshape(t, [-1, int(t.shape[-1])])
    if len(t.shape) == 3:  # Conv1D input (b, L, c) -> (b, 1, L, c) with a 1 x k kernel
        k, s, d = stat.kernel_size[-1], stat.strides[-1], stat.dilation[-1]
        t = t[:, None]
        padding = stat.padding
        if padding == "causal":
            t = tf.pad(t, [[0, 0], [0, 0], [(k - 1) * d, 0], [0, 0]])
            padding = "valid"
        sizes, strides, rates = [1, 1, k, 1], [1, 1, s, 1], [1, 1, d, 1]
    elif len(t.shape) == 4:
        (kh, kw), (sh, sw), (dh, dw) = stat.kernel_size, stat.strides, stat.dilation
        padding = stat.padding
        sizes, strides, rates = [1, kh, kw, 1], [1, sh, sw, 1], [1, dh, dw, 1]
    else:
        raise FactorizeError(f"calibration: patches of a {len(t.shape)}-D input are not supported")
    patches = tf.image.extract_patches(t, sizes=sizes, strides=strides, rates=rates, padding=padding.upper())
    return tf.reshape(patches, [-1, int(patches.shape[-1])])


def _input_tensors(layer: Any) -> list[Any]:
    nodes = len(getattr(layer, "_inbound_nodes", []) or [None])
    tensors = []
    for i in range(nodes):
        t = layer.get_input_at(i)
        if isinstance(t, (list, tuple)):  # extra call inputs (an RNN's state): the first is the data
            t = t[0]
        tensors.append(t)
    return tensors


def collect_statistics(model: Any, requests: Mapping[str, tuple[Any, InputStatistic]], x: Any, *,
                       batch_size: int = DEFAULT_BATCH, progress: bool = True,
                       shrinkage: bool = True) -> dict[str, np.ndarray]:
    """Second moments of the inputs of the requested layers, from one pass of ``model`` over ``x``.

    Parameters
    ----------
    model : tf_keras.Model
        The original model (read only).
    requests : mapping
        Qualified layer name -> ``(layer, InputStatistic)``.
    x : numpy.ndarray or list of numpy.ndarray
        A batch of model inputs (a few hundred); checked by :func:`check_calibration`.
    batch_size : int
        Inputs per forward pass.
    progress : bool
        A progress bar on stderr.
    shrinkage : bool
        Ledoit-Wolf shrinkage (:func:`shrink`); False: the plain sample second moment.

    Returns
    -------
    dict
        Qualified layer name -> ``(d, d)`` float64 ``E[row^T row]`` (``d``: features, or patch size
        ``kh*kw*c_in``), Ledoit-Wolf shrunk (:func:`shrink`). Layers of nested models are absent (weights-only).

    Raises
    ------
    FactorizeError
        A calibration batch that does not fit the model.
    """
    xs = check_calibration(model, x)
    if not requests:
        return {}
    from tqdm import tqdm

    from edgelr.tfcompat import keras2

    import tensorflow as tf

    keras = keras2()
    top = {id(layer) for layer in model.layers}
    paths: list[str] = []
    outputs: list[Any] = []
    owners: list[int] = []
    for path, (layer, _) in requests.items():
        if id(layer) not in top:  # inside a nested model: its input is not a tensor of this graph
            continue
        paths.append(path)
        for t in _input_tensors(layer):
            outputs.append(t)
            owners.append(len(paths) - 1)
    if not outputs:
        return {}
    extractor = keras.Model(model.inputs, outputs)
    stats_of = [requests[paths[owner]][1] for owner in owners]

    @tf.function(reduce_retracing=True)
    def grams(*batch: Any) -> Any:  # one graph per batch shape: no per-op eager dispatch
        outs = extractor(list(batch) if len(batch) > 1 else batch[0], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        result = []
        for tensor, stat in zip(outs, stats_of):
            rows = _rows(tf, tensor, stat)
            norms2 = tf.reduce_sum(tf.square(tf.cast(rows, tf.float64)), axis=1)
            result.append((tf.matmul(rows, rows, transpose_a=True), tf.shape(rows)[0], tf.reduce_sum(norms2 ** 2)))
        return result

    sums: list[np.ndarray | None] = [None] * len(paths)
    counts = [0] * len(paths)
    fourth = [0.0] * len(paths)
    n = xs[0].shape[0]
    with tqdm(total=n, desc="calibrate", unit="input", file=sys.stderr, disable=not progress, leave=False) as bar:
        for start in range(0, n, max(1, int(batch_size))):
            batch = [tf.constant(a[start:start + batch_size]) for a in xs]
            for (gram, count, norms4), owner in zip(grams(*batch), owners):
                g = gram.numpy().astype(np.float64)
                sums[owner] = g if sums[owner] is None else sums[owner] + g
                counts[owner] += int(count)
                fourth[owner] += float(norms4)
            bar.update(int(batch[0].shape[0]))
    return {p: (shrink(s / c, c, f4 / c) if shrinkage else s / c)
            for p, s, c, f4 in zip(paths, sums, counts, fourth) if s is not None and c > 0}


def shrink(second_moment: np.ndarray, rows: int, mean_norm4: float) -> np.ndarray:
    """Ledoit-Wolf shrinkage of a sample second moment towards ``mu I`` (``mu = trace / d``).

    With fewer rows than dimensions (a Dense layer after a flatten: 256 calibration inputs, 2304 features) the
    sample matrix ``S`` is singular and whitening by it would ignore the weight error in every direction the
    calibration rows do not span, which test inputs do reach. ``(1 - a) S + a mu I`` with the Ledoit-Wolf (2004)
    weight ``a = min(b2, d2) / d2``, ``d2 = ||S - mu I||_F^2``, ``b2 = (mean ||x||^4 - ||S||_F^2) / rows``, is the
    estimate of the population matrix with the least expected Frobenius error; ``a`` is ~0 when rows far
    outnumber dimensions (conv patches) and large when they do not.

    Parameters
    ----------
    second_moment : (d, d) array
        ``S = mean(x^T x)`` over ``rows`` rows.
    rows : int
    mean_norm4 : float
        ``mean(||x||^4)`` over the same rows.
    """
    d = second_moment.shape[0]
    mu = float(np.trace(second_moment)) / d
    frob2 = float(np.sum(second_moment * second_moment))
    d2 = frob2 - 2.0 * mu * float(np.trace(second_moment)) + mu * mu * d  # ||S - mu I||_F^2
    b2 = max((mean_norm4 - frob2) / rows, 0.0)
    alpha = min(b2, d2) / d2 if d2 > 0 else 0.0
    return (1.0 - alpha) * second_moment + alpha * mu * np.eye(d)
