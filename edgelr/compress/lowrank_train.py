"""Training that makes weights low-rank: nuclear-norm proximal steps, DeepTwist, orthogonal factors.

Three seed methods for low-rank training (REFERENCE section 9), each a plain function on arrays plus a
``tf_keras`` callback or penalty that :func:`edgelr.compress.distill.distill` (or ``model.fit``) runs:

- **Nuclear norm** (trace norm; Cai, Candes & Shen 2010). The penalty ``lambda * sum_i sigma_i(W)`` is
  applied in its proximal form, singular-value thresholding after an optimizer step,
  ``W <- U max(S - tau, 0) V^T`` (:func:`svt`), every ``every`` steps (an SVD per step would cost more than
  the step). ``tau = shrink * mean(S)``: ``shrink`` is ``eta * lambda`` of the ``every`` steps a prox stands
  for, in units of the matrix's mean singular value, so one value suits layers of any scale (0.05 takes 5 %
  of the mean singular value off every singular value per prox; those below it reach zero).
  The matrices are the ones the rewriters decompose (:func:`layer_matrices`): a Dense kernel; a 1x1 conv's
  ``(C_in, C_out)``; a k x k conv's channel-mode unfoldings (both, in turn: Tucker-2 truncates both modes);
  an LSTM/GRU's input and recurrent kernels.
- **DeepTwist** (Lee et al. 2019). Train as usual; every ``every`` steps replace each weight by its
  low-rank approximation at the target ranks of the layer's rewrite (:func:`project_layer`: truncated SVD,
  Tucker-2 HOSVD projection, or the 3-D LSTM tensor's), structure unchanged. After the last projection the
  weights are exactly low rank, so factorizing at those ranks loses nothing.
- **Orthogonal factors** (soft orthogonality, ``lambda * ||A^T A - I||_F^2``, on the input factor ``A`` of
  every replacement chain). :func:`orthonormalize_factors` first moves each factor's scale into the next
  layer (``A = Q R``: ``A <- Q``, next kernel ``<- R @ next``; the same function), so the penalty starts at
  zero and keeps the factors orthonormal during fine-tuning instead of fighting their scale.

This module imports TensorFlow lazily (only the callbacks and penalties need it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from edgelr.errors import UsageError

FACTOR_SUFFIXES = ("/svd_in", "/tucker_in")
"""Names of the chain layers whose kernel is an input factor (bias-free linear map into the next layer)."""


def svt(matrix: np.ndarray, tau: float) -> np.ndarray:
    """Singular-value thresholding ``U max(S - tau, 0) V^T`` of ``matrix (m, n)``, same shape and dtype.

    The proximal operator of ``tau * ||.||_*``: it lowers the nuclear norm by at least
    ``tau * min(rank, #{s > tau})`` and zeroes every singular value at or below ``tau``.
    """
    arr = np.asarray(matrix)
    if tau < 0:
        raise UsageError(f"svt: got tau={tau}; expected tau >= 0")
    u, s, vt = np.linalg.svd(arr.astype(np.float64), full_matrices=False)
    return ((u * np.maximum(s - tau, 0.0)) @ vt).astype(arr.dtype)


def nuclear_norm(matrix: np.ndarray) -> float:
    """``sum_i sigma_i(matrix)``."""
    return float(np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False).sum())


def truncate(matrix: np.ndarray, rank: int) -> np.ndarray:
    """The best rank-``rank`` approximation of ``matrix (m, n)`` (truncated SVD), same shape and dtype."""
    arr = np.asarray(matrix)
    u, s, vt = np.linalg.svd(arr.astype(np.float64), full_matrices=False)
    r = int(rank)
    return ((u[:, :r] * s[:r]) @ vt[:r]).astype(arr.dtype)


# -- which matrices of a layer ------------------------------------------------------------------------------

def _kind(layer: Any) -> str:
    name = type(layer).__name__
    if name == "TimeDistributed" and type(layer.layer).__name__ == "Dense":
        return "dense"
    if name == "Dense":
        return "dense"
    if name in ("Conv1D", "Conv2D") and getattr(layer, "groups", 1) == 1:
        return "conv"
    if name in ("LSTM", "GRU"):
        return "recurrent"
    return ""


def _variables(layer: Any) -> list[Any]:
    """The tf variables :func:`layer_matrices` reads and :func:`_assign` writes (kernel first)."""
    kind = _kind(layer)
    if kind == "dense":
        inner = layer.layer if type(layer).__name__ == "TimeDistributed" else layer
        return [inner.kernel]
    if kind == "conv":
        return [layer.kernel]
    if kind == "recurrent":
        return [layer.cell.kernel, layer.cell.recurrent_kernel]
    return []


def layer_matrices(layer: Any) -> list[tuple[np.ndarray, Callable[[np.ndarray], None]]]:
    """The weight matrices of ``layer`` the low-rank rewriters decompose, each with a setter.

    Returns ``[(matrix, set_matrix)]``; ``set_matrix(new)`` writes ``new`` (same shape) back into the layer's
    variable. ``[]`` for a layer no rewriter decomposes (the caller skips it).
    """
    out: list[tuple[np.ndarray, Callable[[np.ndarray], None]]] = []
    for var in _variables(layer):
        w = var.numpy()
        if w.ndim == 2:
            out.append((w, lambda new, v=var: v.assign(new.astype(v.dtype.as_numpy_dtype))))
            continue
        # conv kernel (..., C_in, C_out)
        spatial = int(np.prod(w.shape[:-2]))
        if spatial == 1:
            out.append((w.reshape(w.shape[-2], w.shape[-1]),
                        lambda new, v=var, s=w.shape: v.assign(new.reshape(s).astype(v.dtype.as_numpy_dtype))))
            continue
        for mode in (-2, -1):  # the C_in and C_out unfoldings, in turn
            def getter(v: Any = var, mode: int = mode) -> np.ndarray:
                cur = v.numpy()
                return np.moveaxis(cur, mode, 0).reshape(cur.shape[mode], -1)

            def setter(new: np.ndarray, v: Any = var, mode: int = mode) -> None:
                cur = v.numpy()
                moved = np.moveaxis(cur, mode, 0).shape
                v.assign(np.moveaxis(new.reshape(moved), 0, mode).astype(v.dtype.as_numpy_dtype))

            out.append((_Lazy(getter), setter))  # type: ignore[arg-type]
    return out


class _Lazy:
    """A matrix read when used (the second unfolding of a conv must see the first one's update)."""

    def __init__(self, get: Callable[[], np.ndarray]) -> None:
        self.get = get


def _value(m: Any) -> np.ndarray:
    return m.get() if isinstance(m, _Lazy) else m


def nuclear_prox(model: Any, shrink: float) -> int:
    """One proximal step of the (scaled) nuclear-norm penalty on every decomposable layer of ``model``.

    Each matrix ``W`` (:func:`layer_matrices`) becomes ``svt(W, shrink * mean(sigma(W)))`` (module
    docstring). Returns the number of matrices shrunk.
    """
    from edgelr.rewrite.rebuild import walk_layers

    n = 0
    for _, layer in walk_layers(model):
        for m, set_m in layer_matrices(layer):
            w = _value(m)
            s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
            if s.size == 0 or s.mean() <= 0:
                continue
            set_m(svt(w, float(shrink) * float(s.mean())))
            n += 1
    return n


# -- DeepTwist ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TwistTarget:
    """Where DeepTwist projects: the qualified layer name, the rewrite method and its ranks."""

    path: str
    method: str
    ranks: tuple[int, ...]


def projectable(layer: Any, method: str) -> bool:
    """True when :func:`project_layer` reproduces ``method``'s truncation of ``layer`` exactly."""
    kind = _kind(layer)
    if kind == "dense":
        return method == "svd"
    if kind == "conv":
        spatial = int(np.prod(layer.kernel.shape[:-2]))
        return (method == "svd" and spatial == 1) or method == "tucker2"
    if kind == "recurrent":
        return method in ("svd", "svd-recurrent") or (method == "tensor3" and type(layer).__name__ == "LSTM")
    return False


def project_layer(layer: Any, method: str, ranks: tuple[int, ...]) -> None:
    """Replace ``layer``'s weights (in place) by their low-rank approximation at ``ranks`` as ``method``
    truncates them: truncated SVD (``svd``: Dense kernel, 1x1 conv, recurrent input kernel; ``svd-recurrent``:
    also the recurrent kernel), the Tucker-2 HOSVD projection of a k x k conv's channel modes (``tucker2``),
    or of the LSTM's 3-D gate tensor (``tensor3``). The structure is unchanged.

    Raises
    ------
    UsageError
        ``method`` is not one :func:`projectable` accepts for this layer.
    """
    if not projectable(layer, method):
        raise UsageError(f"DeepTwist: layer '{layer.name}' ({type(layer).__name__}) with method {method!r} cannot be "
                         "projected; supported: svd (Dense, 1x1 conv, LSTM/GRU), svd-recurrent, tucker2, tensor3")
    kind = _kind(layer)
    if kind == "dense":
        var = _variables(layer)[0]
        var.assign(truncate(var.numpy(), ranks[0]))
    elif kind == "conv" and method == "svd":
        var = layer.kernel
        w = var.numpy()
        var.assign(truncate(w.reshape(w.shape[-2], w.shape[-1]), ranks[0]).reshape(w.shape))
    elif kind == "conv":
        from edgelr.factorize import tucker2

        var = layer.kernel
        w = var.numpy()
        k4 = w if w.ndim == 4 else w[None]
        res = tucker2(k4.astype(np.float64), (int(ranks[0]), int(ranks[1])), max_iter=0)
        proj = np.einsum("ap,ijpq,qb->ijab", res.first, res.core, res.last)
        var.assign(proj.reshape(w.shape).astype(w.dtype))
    elif method == "tensor3":
        from edgelr.factorize.tensor3 import lstm_kernels, lstm_tensor, project_tensor3

        cell = layer.cell
        t = project_tensor3(lstm_tensor(cell.kernel.numpy(), cell.recurrent_kernel.numpy()), ranks)
        k, r = lstm_kernels(t, int(cell.kernel.shape[0]))
        cell.kernel.assign(k)
        cell.recurrent_kernel.assign(r)
    else:
        cell = layer.cell
        if ranks[0] < min(cell.kernel.shape):
            cell.kernel.assign(truncate(cell.kernel.numpy(), ranks[0]))
        if method == "svd-recurrent":
            cell.recurrent_kernel.assign(truncate(cell.recurrent_kernel.numpy(), ranks[1]))


def twist_targets(plan: Any) -> tuple[list[TwistTarget], list[str]]:
    """DeepTwist targets of a :class:`edgelr.rewrite.FactorizationPlan` (its selected ranks), and the
    qualified names of selected layers it cannot project (their method has no exact projection, e.g. ``cp``)."""
    targets, other = [], []
    for path, ranks in plan.selected.items():
        lp = plan.layers[path]
        if projectable(lp.layer, lp.method):
            targets.append(TwistTarget(path, lp.method, tuple(int(r) for r in ranks)))
        else:
            other.append(path)
    return targets, other


def _layers_by_path(model: Any) -> dict[str, Any]:
    from edgelr.rewrite.rebuild import walk_layers

    return dict(walk_layers(model))


def project_model(model: Any, targets: list[TwistTarget]) -> None:
    """:func:`project_layer` on every target layer of ``model`` (in place)."""
    layers = _layers_by_path(model)
    for t in targets:
        project_layer(layers[t.path], t.method, t.ranks)


# -- orthogonal factors ---------------------------------------------------------------------------------------

def orthogonality_error(matrix: np.ndarray) -> float:
    """``||A^T A - I||_F^2`` of ``matrix`` viewed as ``(-1, r)`` (r = its last axis)."""
    a = np.asarray(matrix, np.float64).reshape(-1, np.asarray(matrix).shape[-1])
    return float(np.sum((a.T @ a - np.eye(a.shape[1])) ** 2))


def factor_pairs(model: Any) -> Iterator[tuple[Any, Any]]:
    """``(factor layer, next layer)`` for every chain input factor of a factorized model whose output feeds
    one layer whose first weight takes it on its second-to-last axis (Dense, conv core, LSTM/GRU kernel)."""
    from edgelr.rewrite.rebuild import walk_layers

    for _, layer in walk_layers(model):
        if not layer.name.endswith(FACTOR_SUFFIXES) or getattr(layer, "use_bias", True):
            continue
        nodes = getattr(layer, "_outbound_nodes", [])
        if len(nodes) != 1:
            continue
        nxt = nodes[0].outbound_layer
        weights = nxt.get_weights()
        r = int(layer.get_weights()[0].shape[-1])
        if not weights or weights[0].ndim < 2 or weights[0].shape[-2] != r or type(nxt).__name__ == "DepthwiseConv2D":
            continue
        if type(nxt).__name__ == "RNN" and type(nxt.cell).__name__ == "Tucker3LSTMCell":
            continue
        a = layer.get_weights()[0]
        if int(np.prod(a.shape[:-1])) < r:  # a wide factor cannot have orthonormal columns
            continue
        yield layer, nxt


def orthonormalize_factors(model: Any) -> int:
    """Give every chain input factor orthonormal columns without changing the function (in place):
    ``A = Q R`` (QR), ``A <- Q``, the next layer's kernel ``W <- R W`` on its input axis. Returns the number
    of factors changed."""
    n = 0
    for layer, nxt in factor_pairs(model):
        a = layer.get_weights()[0]
        q, r = np.linalg.qr(a.reshape(-1, a.shape[-1]).astype(np.float64))
        layer.set_weights([q.reshape(a.shape).astype(a.dtype)])
        weights = nxt.get_weights()
        weights[0] = np.einsum("ij,...jk->...ik", r, weights[0].astype(np.float64)).astype(weights[0].dtype)
        nxt.set_weights(weights)
        n += 1
    return n


def orthogonal_penalty(model: Any, strength: float) -> Callable[[], Any] | None:
    """``() -> strength * sum ||A^T A - I||_F^2`` over the chain input factors of ``model`` (a scalar
    tensor, differentiable), or None when the model has none."""
    from edgelr.tfcompat import tf

    tfm = tf()
    kernels = [layer.trainable_weights[0] for layer, _ in factor_pairs(model)]
    if not kernels:
        return None

    def penalty() -> Any:
        total = 0.0
        for k in kernels:
            a = tfm.reshape(k, [-1, k.shape[-1]])
            g = tfm.matmul(a, a, transpose_a=True) - tfm.eye(int(k.shape[-1]), dtype=a.dtype)
            total = total + tfm.reduce_sum(tfm.square(g))
        return float(strength) * total

    return penalty


# -- callbacks ------------------------------------------------------------------------------------------------

def _every_n_batches(step: Any, every: int, name: str, at_end: bool = False) -> Any:
    """A ``tf_keras`` callback calling ``step(model)`` every ``every`` training batches (and once more at the
    end of training with ``at_end``); ``steps`` and ``applied`` count batches and calls."""
    from edgelr.tfcompat import keras2

    _check_every(every, name)

    class EveryNBatches(keras2().callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.steps, self.applied = 0, 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.steps += 1
            if self.steps % every == 0:
                step(self.model)
                self.applied += 1

        def on_train_end(self, logs: Any = None) -> None:
            if at_end:
                step(self.model)

    return EveryNBatches()


def nuclear_callback(shrink: float, every: int) -> Any:
    """A ``tf_keras`` callback: :func:`nuclear_prox` with ``shrink`` every ``every`` training batches."""
    return _every_n_batches(lambda model: nuclear_prox(model, shrink), every, "nuclear_every")


def deeptwist_callback(targets: list[TwistTarget], every: int) -> Any:
    """A ``tf_keras`` callback: DeepTwist's distortion (:func:`project_model`) every ``every`` training
    batches and at the end of training, so the trained weights are exactly low rank at ``targets``' ranks."""
    return _every_n_batches(lambda model: project_model(model, targets), every, "deeptwist_every", at_end=True)


def _check_every(every: int, what: str) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UsageError(f"{what}: got {every!r}; expected a number of training steps >= 1")


# -- the compress step ----------------------------------------------------------------------------------------

def lowrank_factorize(runner: Any, plan_options: Any, log: Callable[[str], None]) -> tuple[Any, Any]:
    """Low-rank training of a copy of the original, then its factorization: the plain compress path with
    ``nuclear`` or ``deeptwist_every`` set (``runner.opts``).

    The copy is trained by distillation from the original (``lowrank_epochs`` epochs, the run's fine-tuning
    settings) with :func:`nuclear_callback` or :func:`deeptwist_callback`. Nuclear norm: the trained copy is
    then factorized by ``plan_options`` (its now faster-decaying spectra choose the ranks). DeepTwist: the
    ranks are the plan's on the original; the trained copy is projected a last time and factorized at
    exactly those ranks (no loss). Returns ``(factorized model, report)`` as
    :func:`edgelr.rewrite.factorize_model`; the report gains a ``lowrank_training`` attribute (dict).
    """
    from edgelr.compress.distill import distill
    from edgelr.rewrite import build_factorized, plan_factorization
    from edgelr.tfcompat import keras2

    opts, data = runner.opts, runner.data
    k2 = keras2()
    copy = k2.models.clone_model(runner.original)
    copy.set_weights(runner.original.get_weights())
    cfg = runner.distill_config(opts.lowrank_epochs)
    twist: list[TwistTarget] = []
    if opts.deeptwist_every is not None:
        plan = plan_factorization(runner.original, progress=False, **plan_options.kwargs())
        twist, other = twist_targets(plan)
        if other:
            log(f"DeepTwist: no exact projection for {', '.join(other)} (their method); they are factorized "
                "after training as usual")
        callback = deeptwist_callback(twist, opts.deeptwist_every)
        what = f"DeepTwist every {opts.deeptwist_every} steps on {len(twist)} layer(s)"
    else:
        callback = nuclear_callback(opts.nuclear, opts.nuclear_every)
        what = f"nuclear-norm prox (shrink {opts.nuclear:g} x mean singular value) every {opts.nuclear_every} steps"
    log(f"low-rank training before factorization: {what}, {opts.lowrank_epochs} epoch(s)")
    res = distill(copy, runner.teacher, runner.x_fit, runner.y_fit, data.x_val, data.y_val, runner.task, cfg,
                  progress=opts.progress, desc="low-rank training", callbacks=[callback])
    info = {"method": "deeptwist" if twist or opts.deeptwist_every is not None else "nuclear",
            "steps": int(callback.steps), "applied": int(callback.applied), "best_val": res.best_val}
    plan = plan_factorization(copy, progress=opts.progress, **plan_options.kwargs())
    if opts.deeptwist_every is not None:
        project_model(copy, twist)  # the best weights distill restored may predate the last distortion
        ranks: dict[str, Any] = {p: None for p in plan.candidates() if p not in other}
        ranks.update({t.path: t.ranks for t in twist})
        fact, report = build_factorized(copy, plan, ranks)
    else:
        fact, report = build_factorized(copy, plan)
    report.attrs["lowrank_training"] = info
    return fact, report


# -- over-parameterized orthogonal training (He, Jiang & Wu 2024) ---------------------------------------------

MERGEABLE = ("svd", "tucker2")
"""Methods whose full-rank chain :func:`merge_chain` composes back into the original layer's weights."""


def merge_chain(chain_weights: list[list[np.ndarray]], kernel_shape: tuple[int, ...]) -> list[np.ndarray]:
    """The original layer's weights from a linear replacement chain's weights (the inverse of a rewrite).

    ``chain_weights[i][0]`` are the chain's kernels ``(..., c_i, c_{i+1})`` (at most one with a spatial
    extent; Dense, 1x1 / k x k conv, or an LSTM/GRU kernel last), composed on their channel axes; the last
    element's other weights (bias, recurrent kernel) are kept. Returns ``[kernel (kernel_shape), *rest]``.
    """
    acc = np.asarray(chain_weights[0][0], np.float64)
    for weights in chain_weights[1:]:
        w = np.asarray(weights[0], np.float64)
        if int(np.prod(w.shape[:-2])) == 1:
            acc = acc.reshape(*acc.shape[:-1], acc.shape[-1]) @ w.reshape(w.shape[-2], w.shape[-1])
        else:
            acc = np.einsum("ij,...jk->...ik", acc.reshape(-1, acc.shape[-1]), w)
    dtype = np.asarray(chain_weights[-1][0]).dtype
    return [acc.reshape(kernel_shape).astype(dtype), *chain_weights[-1][1:]]


def overparam_orthogonal(runner: Any, plan_options: Any, log: Callable[[str], None]) -> Any:
    """The flow of He, Jiang & Wu 2024 up to rank selection: a copy of the original over-parameterized
    (each ``svd``/``tucker2`` layer replaced by its exact full-rank factor chain, factors orthonormalized),
    trained by distillation with soft orthogonality on the factors (``opts.orthogonal``, for
    ``opts.overparam_epochs`` epochs), and merged back into the original structure (:func:`merge_chain`).
    The caller then chooses ranks (VBMF in the paper), factorizes and fine-tunes as usual.
    """
    from edgelr.compress.distill import distill
    from edgelr.rewrite import build_factorized, plan_factorization
    from edgelr.tfcompat import keras2

    opts, data = runner.opts, runner.data
    k2 = keras2()
    plan = plan_factorization(runner.original, progress=False, **plan_options.kwargs(min_reduction=None))
    paths = [p for p in plan.candidates() if plan.layers[p].method in MERGEABLE and _kind(plan.layers[p].layer)]
    if not paths:
        log("over-parameterized training: no svd/tucker2 layer to over-parameterize; skipped")
        return runner.original
    wide, _ = build_factorized(runner.original, plan, {p: plan.layers[p].rewriter.full_ranks(plan.layers[p].layer)
                                                       for p in paths}, progress=False)
    n = orthonormalize_factors(wide)
    penalty = orthogonal_penalty(wide, opts.orthogonal)
    p0, p1 = runner.original.count_params(), wide.count_params()
    log(f"over-parameterized training: {len(paths)} layer(s) as full-rank chains ({p0:,} -> {p1:,} params), "
        f"soft orthogonality {opts.orthogonal:g} on {n} factor(s), {opts.overparam_epochs} epoch(s)")
    distill(wide, runner.teacher, runner.x_fit, runner.y_fit, data.x_val, data.y_val, runner.task,
            runner.distill_config(opts.overparam_epochs), progress=opts.progress, desc="over-parameterized",
            penalty=penalty)
    merged = k2.models.clone_model(runner.original)
    merged.set_weights(runner.original.get_weights())
    wide_layers = _layers_by_path(wide)
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        prefix = path[: len(path) - len(name)]
        chain = [lay for p, lay in wide_layers.items() if p.startswith(path + "/")]
        if path in wide_layers:  # a recurrent layer keeps its name after its input projection
            chain.append(wide_layers[path])
        target = _layers_by_path(merged)[prefix + name]
        target.set_weights(merge_chain([lay.get_weights() for lay in chain], tuple(target.get_weights()[0].shape)))
    return merged


def train_and_factorize(runner: Any, plan_options: Any, log: Callable[[str], None]) -> tuple[Any, Any]:
    """The plain compress path's factorized model and report (no budget), per ``runner.opts``: the rank
    policy chosen by cross-validation when ``cv_folds`` is set (:mod:`edgelr.compress.cv_ranks`), then
    low-rank training before factorization (``nuclear`` or ``deeptwist_every``: :func:`lowrank_factorize`;
    ``overparam_epochs``: :func:`overparam_orthogonal`) or none. Returns ``(model, report)`` as
    :func:`edgelr.rewrite.factorize_model`."""
    from dataclasses import replace

    from edgelr.rewrite import factorize_model

    opts = runner.opts
    if opts.cv_folds is not None:
        from edgelr.compress.cv_ranks import DEFAULT_LADDER, select_policy_by_cv

        candidates = opts.cv_policies or [str(plan_options.rank_policy), *DEFAULT_LADDER]
        policy, _ = select_policy_by_cv(runner, plan_options, candidates, opts.cv_folds, opts.cv_epochs, log)
        plan_options = replace(plan_options, rank_policy=policy)
    if opts.nuclear > 0 or opts.deeptwist_every is not None:
        return lowrank_factorize(runner, plan_options, log)
    model = overparam_orthogonal(runner, plan_options, log) if opts.overparam_epochs else runner.original
    return factorize_model(model, progress=opts.progress, **plan_options.kwargs())
