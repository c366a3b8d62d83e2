"""Conv1D / Conv2D rewriters (channels_last, groups=1).

- ``tucker2`` (k x k Conv2D, Conv1D with k > 1; Kim et al. 2016): 1x1 conv ``C_in -> R3``, the k x k conv
  ``R3 -> R4`` with the original strides, dilation and padding, 1x1 conv ``R4 -> C_out`` with the bias and
  activation. Names ``<conv>/tucker_in``, ``<conv>/tucker_core``, ``<conv>/tucker_out``. A factor whose rank
  equals its channel count (e.g. ``R3 = C_in = 3`` for an RGB stem) is folded into the core conv, which
  then takes over the bias and activation if it is the last node.
- ``cp`` (k x k Conv2D, Lebedev et al. 2015): 1x1 ``C_in -> R``, depthwise ``kh x 1`` (vertical stride and
  dilation), depthwise ``1 x kw`` (horizontal stride and dilation), 1x1 ``R -> C_out``. TF 'same' padding
  is computed per spatial dimension, so splitting the kernel (and its strides) by dimension gives exactly
  the original output, even for even kernels and strides > 1.
- ``spatial-svd`` (k x k Conv2D, Jaderberg et al. 2014): ``kh x 1`` conv ``C_in -> R`` (vertical stride and
  dilation), ``1 x kw`` conv ``R -> C_out`` (horizontal stride and dilation, bias, activation).
- ``svd`` (1x1 Conv2D, any Conv1D): the kernel reshaped to ``(prod(k) * C_in, C_out)`` is truncated:
  the original conv with ``R`` filters and no bias, then a 1x1 conv ``R -> C_out``.

Data-aware (calibration inputs, :mod:`edgelr.factorize.whiten`): ``svd`` whitens by the im2col patch second
moment (the exact output-error optimum); ``spatial-svd`` by the ``kh x 1`` vertical-patch second moment;
``tucker2`` by the input-channel second moment (pooled over positions). ``cp`` stays weights-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelr.errors import FactorizeError
from edgelr.rewrite.cost import io_shapes, layer_cost
from edgelr.rewrite.registry import (
    Cost, NewLayer, Ranks, Rewrite, Rewriter, child_name, derived_config, register_rewriter,
)
from edgelr.rewrite.svdmatrix import MatrixSVD, SingleSVDRewriter, tail_share


def _is_plain_conv(layer: Any, cls: str) -> bool:
    return (type(layer).__name__ == cls and int(getattr(layer, "groups", 1)) == 1
            and layer.data_format == "channels_last")


def _prod(dims: Any) -> int:
    return int(np.prod([1 if d is None else int(d) for d in dims], dtype=np.int64))


@dataclass(frozen=True)
class _Geometry:
    """Spatial sizes of one conv call (unknown sizes count as 1)."""

    in_spatial: int
    out_spatial: int
    after_vertical: int  # output rows x input columns: the size after a (kh x 1) step with the vertical stride
    kernel_size: tuple[int, ...]
    c_in: int
    c_out: int


def _geometry(layer: Any) -> _Geometry:
    in_shape, out_shape = io_shapes(layer)
    in_sp, out_sp = in_shape[1:-1], out_shape[1:-1]
    after_v = _prod(out_sp[:1]) * _prod(in_sp[1:])
    return _Geometry(_prod(in_sp), _prod(out_sp), after_v, tuple(int(k) for k in layer.kernel_size),
                     int(layer.kernel.shape[-2]), int(layer.filters))


def _kernel4(layer: Any) -> np.ndarray:
    """The kernel as ``(kh, kw, C_in, C_out)`` float32 (a Conv1D kernel gets ``kh = 1``)."""
    kernel = np.asarray(layer.kernel.numpy(), dtype=np.float32)
    return kernel[None] if kernel.ndim == 3 else kernel


def _bias(layer: Any) -> list[np.ndarray]:
    return [layer.bias.numpy()] if layer.use_bias else []


def _pointwise(layer: Any) -> tuple[int, ...]:
    return (1,) * len(layer.kernel_size)


def _conv_cls(layer: Any) -> Any:
    from edgelr.tfcompat import keras2

    return getattr(keras2().layers, type(layer).__name__)


def _linear_part(layer: Any, name: str, **overrides: Any) -> dict[str, Any]:
    """Config of an inner chain element: no bias, linear, no activity regularizer."""
    return derived_config(layer, name, use_bias=False, activation="linear", activity_regularizer=None,
                          bias_regularizer=None, bias_constraint=None, **overrides)


@register_rewriter("svd", priority=0)  # below tucker2 on Conv1D with k > 1
class ConvSVD(SingleSVDRewriter):
    """1x1 Conv2D, or Conv1D of any width: conv ``C_in -> R`` (original kernel) then 1x1 ``R -> C_out``."""

    layers = ("Conv1D", "Conv2D (channels_last, groups=1)")

    def supports(self, layer: Any) -> bool:
        if _is_plain_conv(layer, "Conv1D"):
            return True
        return _is_plain_conv(layer, "Conv2D") and tuple(layer.kernel_size) == (1, 1)

    def _matrix(self, layer: Any) -> np.ndarray:
        kernel = np.asarray(layer.kernel.numpy(), dtype=np.float32)
        return kernel.reshape(-1, kernel.shape[-1])

    def full_ranks(self, layer: Any) -> Ranks:
        rows, cols = _prod(layer.kernel.shape[:-1]), int(layer.kernel.shape[-1])
        return (min(rows, cols),)

    def cost(self, layer: Any, ranks: Ranks) -> Cost:
        (r,) = ranks
        g = _geometry(layer)
        k = _prod(g.kernel_size)
        params = k * g.c_in * r + r * g.c_out + (g.c_out if layer.use_bias else 0)
        return params, g.out_spatial * (k * g.c_in * r + r * g.c_out)

    def outputs(self, layer: Any, ranks: Ranks | None) -> int | None:
        g = _geometry(layer)
        return g.out_spatial * (g.c_out + (0 if ranks is None else int(ranks[0])))

    def input_statistic(self, layer: Any) -> Any:
        from edgelr.rewrite.calibration import InputStatistic

        if _prod(layer.kernel_size) == 1 and _prod(layer.strides) == 1:
            return InputStatistic("features")
        return InputStatistic.conv_patches(layer)

    def decompose(self, layer: Any, stats: np.ndarray | None = None) -> MatrixSVD:
        return MatrixSVD.of(self._matrix(layer), stats)

    def materialize(self, layer: Any, decomposition: MatrixSVD, ranks: Ranks, *, exact: bool = True) -> Rewrite:
        ranks = self.check_ranks(layer, ranks)
        (r,) = ranks
        svd = decomposition.truncate(r)
        cls = _conv_cls(layer)
        kernel_shape = tuple(layer.kernel.shape)
        first = cls.from_config(_linear_part(layer, child_name(layer, "svd_in"), filters=r))
        second = cls.from_config(derived_config(
            layer, child_name(layer, "svd_out"), kernel_size=_pointwise(layer), strides=_pointwise(layer),
            dilation_rate=_pointwise(layer), padding="valid"))
        w_first = svd.left.reshape(kernel_shape[:-1] + (r,))
        w_second = svd.right.reshape(_pointwise(layer) + (r, kernel_shape[-1]))
        chain = [NewLayer(first, [w_first]), NewLayer(second, [w_second] + _bias(layer))]
        return Rewrite(chain, ranks, *self.cost(layer, ranks), svd.rel_error)


HOOI_SWEEPS = 3
"""HOOI sweeps after the HOSVD start for a final (``exact=True``) Tucker-2 rewrite; most of the gain comes in
the first sweeps and each costs as much as the HOSVD on a 512-channel ResNet kernel."""


@dataclass
class TuckerState:
    """Kernel ``(kh, kw, C_in, C_out)`` and the spectra of its mode-2/mode-3 unfoldings (HOSVD factors); with
    ``whitening`` (input-channel statistics) the spectra are those of the whitened kernel."""

    kernel: np.ndarray
    spectra: Any
    cache: dict[tuple[Ranks, bool], Any] = field(default_factory=dict)
    whitening: Any = None


@register_rewriter("tucker2", priority=30)  # the preferred method for k x k convs
class ConvTucker2(Rewriter):
    """k x k Conv2D or Conv1D (k > 1) -> 1x1, core k x k, 1x1 (Tucker-2)."""

    layers = ("Conv1D", "Conv2D (channels_last, groups=1)")

    def supports(self, layer: Any) -> bool:
        if not (_is_plain_conv(layer, "Conv2D") or _is_plain_conv(layer, "Conv1D")):
            return False
        return _prod(layer.kernel_size) > 1

    def full_ranks(self, layer: Any) -> Ranks:
        return int(layer.kernel.shape[-2]), int(layer.kernel.shape[-1])

    def cost(self, layer: Any, ranks: Ranks) -> Cost:
        r_in, r_out = ranks
        g = _geometry(layer)
        k = _prod(g.kernel_size)
        fold_in, fold_out = _tucker_folds(g.c_in, g.c_out, ranks)
        params = k * r_in * r_out + (g.c_out if layer.use_bias else 0)
        macs = g.out_spatial * k * r_in * r_out
        if not fold_in:
            params += g.c_in * r_in
            macs += g.in_spatial * g.c_in * r_in
        if not fold_out:
            params += r_out * g.c_out
            macs += g.out_spatial * r_out * g.c_out
        return params, macs

    def outputs(self, layer: Any, ranks: Ranks | None) -> int | None:
        g = _geometry(layer)
        if ranks is None:
            return g.out_spatial * g.c_out
        fold_in, fold_out = _tucker_folds(g.c_in, g.c_out, ranks)
        return ((0 if fold_in else g.in_spatial * int(ranks[0])) + (0 if fold_out else g.out_spatial * int(ranks[1]))
                + g.out_spatial * g.c_out)

    def input_statistic(self, layer: Any) -> Any:
        from edgelr.rewrite.calibration import InputStatistic

        return InputStatistic("features")

    def decompose(self, layer: Any, stats: np.ndarray | None = None) -> TuckerState:
        from edgelr.factorize.spectrum import unfolding_spectra

        kernel = _kernel4(layer)
        if stats is None:
            return TuckerState(kernel, unfolding_spectra(kernel.astype(np.float64)))
        from edgelr.factorize.tucker import whiten_kernel
        from edgelr.factorize.whiten import whitening

        white = whitening(stats)
        return TuckerState(kernel, unfolding_spectra(whiten_kernel(kernel, white)), whitening=white)

    def select_ranks(self, layer: Any, decomposition: TuckerState, policy: Any, multiple: int, floor: int) -> Ranks:
        from edgelr.factorize import select_tucker2_ranks

        ranks = select_tucker2_ranks(decomposition.kernel, policy, cost=lambda a, b: self.cost(layer, (int(a), int(b))),
                                     full_cost=layer_cost(layer), multiple=multiple, floor=floor,
                                     spectra=decomposition.spectra)
        return tuple(int(r) for r in ranks)

    def error_proxy(self, decomposition: TuckerState, ranks: Ranks) -> float | None:
        """``1 - (1 - t_in)(1 - t_out)``, ``t`` the energy share each channel-mode unfolding discards: the
        share of the kernel's energy a Tucker-2 at ``ranks`` loses when the two modes lose theirs
        independently (at most ``t_in + t_out``, the HOSVD bound)."""
        spec_in, spec_out = decomposition.spectra
        return 1.0 - (1.0 - tail_share(spec_in, int(ranks[0]))) * (1.0 - tail_share(spec_out, int(ranks[1])))

    def _tucker(self, state: TuckerState, ranks: Ranks, exact: bool) -> Any:
        from edgelr.factorize import tucker2

        key = (ranks, exact)
        if key not in state.cache:
            state.cache[key] = tucker2(state.kernel, ranks, max_iter=HOOI_SWEEPS if exact else 0,
                                       spectra=state.spectra, whitening=state.whitening)
        return state.cache[key]

    def materialize(self, layer: Any, decomposition: TuckerState, ranks: Ranks, *, exact: bool = True) -> Rewrite:
        ranks = self.check_ranks(layer, ranks)
        r_in, r_out = ranks
        res = self._tucker(decomposition, ranks, exact)
        cls = _conv_cls(layer)
        one = _pointwise(layer)
        conv1d = len(layer.kernel_size) == 1
        fold_in, fold_out = _tucker_folds(int(layer.kernel.shape[-2]), int(layer.filters), ranks)
        core_kernel = res.core
        if fold_in:  # the input factor is square (an invertible rotation): apply it to the core instead
            core_kernel = np.einsum("ap,ijpq->ijaq", res.first, core_kernel)
        if fold_out:
            core_kernel = np.einsum("ijpq,qb->ijpb", core_kernel, res.last)
        core_kernel = (core_kernel[0] if conv1d else core_kernel).astype(np.float32)
        chain = []
        if not fold_in:
            first = cls.from_config(_linear_part(layer, child_name(layer, "tucker_in"), filters=r_in,
                                                 kernel_size=one, strides=one, dilation_rate=one, padding="valid"))
            chain.append(NewLayer(first, [res.first.reshape(one + res.first.shape)]))
        if fold_out:
            core = cls.from_config(derived_config(layer, child_name(layer, "tucker_core")))
            chain.append(NewLayer(core, [core_kernel] + _bias(layer)))
        else:
            core = cls.from_config(_linear_part(layer, child_name(layer, "tucker_core"), filters=r_out))
            last = cls.from_config(derived_config(layer, child_name(layer, "tucker_out"), kernel_size=one,
                                                  strides=one, dilation_rate=one, padding="valid"))
            chain += [NewLayer(core, [core_kernel]),
                      NewLayer(last, [res.last.reshape(one + res.last.shape)] + _bias(layer))]
        return Rewrite(chain, ranks, *self.cost(layer, ranks), float(res.rel_error))


def _tucker_folds(c_in: int, c_out: int, ranks: Ranks) -> tuple[bool, bool]:
    """Which Tucker-2 factor convs to fold into the core: a factor whose rank equals its channel count
    is square, so the 1x1 conv would only rotate the channels - the core absorbs it exactly and the
    chain loses a node (e.g. an RGB stem conv, ``C_in = 3``). At full rank in both modes nothing is
    folded: the three-node chain is what a full-rank rewrite exists to check."""
    r_in, r_out = int(ranks[0]), int(ranks[1])
    if r_in == c_in and r_out == c_out:
        return False, False
    return r_in == c_in, r_out == c_out


def _is_kxk_conv2d(layer: Any) -> bool:
    return _is_plain_conv(layer, "Conv2D") and min(int(k) for k in layer.kernel_size) > 1


@dataclass
class KernelState:
    """A conv kernel ``(kh, kw, C_in, C_out)`` and the CP decompositions computed so far, by rank."""

    kernel: np.ndarray
    cache: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _CPLayout:
    """Where the CP chain pads and strides (TF depthwise convs need equal strides in both dimensions).

    Strides 1: both depthwise steps use the layer's padding. Strides > 1: explicit TF-'same' zero padding
    (when 'same') after the first 1x1, both depthwise steps 'valid'; the vertical step at stride 1, the
    horizontal step at stride (s, s) when the strides are equal, else the last 1x1 subsamples (sh, sw).
    """

    pad: tuple[tuple[int, int], tuple[int, int]] | None
    dw_padding: str
    horizontal_strides: tuple[int, int]
    last_strides: tuple[int, int]
    vertical_out: int  # spatial size after the vertical step
    horizontal_out: int  # spatial size after the horizontal step


def _same_pad(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _cp_layout(layer: Any) -> _CPLayout:
    in_shape, out_shape = io_shapes(layer)
    h, w = in_shape[1], in_shape[2]
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    out_sp = _prod(out_shape[1:-1])
    if (sh, sw) == (1, 1):
        rows = (h or 1) if layer.padding == "same" else (h or 1) - (kh - 1) * dh
        return _CPLayout(None, layer.padding, (1, 1), (1, 1), rows * (w or 1), out_sp)
    if h is None or w is None:
        raise ValueError("strided CP needs static spatial sizes")
    pad = None
    hp, wp = h, w
    if layer.padding == "same":
        pad = (_same_pad(h, kh, sh, dh), _same_pad(w, kw, sw, dw))
        hp, wp = h + sum(pad[0]), w + sum(pad[1])
    rows = hp - (kh - 1) * dh
    if sh == sw:
        return _CPLayout(pad, "valid", (sh, sw), (1, 1), rows * wp, out_sp)
    return _CPLayout(pad, "valid", (1, 1), (sh, sw), rows * wp, rows * (wp - (kw - 1) * dw))


@register_rewriter("cp", priority=20)
class ConvCP(Rewriter):
    """k x k Conv2D -> 1x1, depthwise kh x 1, depthwise 1 x kw, 1x1 (CP); see :class:`_CPLayout` for strides."""

    layers = ("Conv2D (channels_last, groups=1)",)

    def supports(self, layer: Any) -> bool:
        if not _is_kxk_conv2d(layer):
            return False
        if tuple(layer.strides) == (1, 1):
            return True
        try:
            _cp_layout(layer)
        except (ValueError, FactorizeError):
            return False
        return True

    def full_ranks(self, layer: Any) -> Ranks:
        from edgelr.factorize.cp import max_cp_rank

        return (max_cp_rank(tuple(int(d) for d in layer.kernel.shape)),)

    def cost(self, layer: Any, ranks: Ranks) -> Cost:
        (r,) = ranks
        g = _geometry(layer)
        lay = _cp_layout(layer)
        kh, kw = g.kernel_size
        params = g.c_in * r + kh * r + kw * r + r * g.c_out + (g.c_out if layer.use_bias else 0)
        macs = (g.in_spatial * g.c_in * r + lay.vertical_out * kh * r + lay.horizontal_out * kw * r
                + g.out_spatial * r * g.c_out)
        return params, macs

    def outputs(self, layer: Any, ranks: Ranks | None) -> int | None:
        g = _geometry(layer)
        if ranks is None:
            return g.out_spatial * g.c_out
        (r,) = ranks
        lay = _cp_layout(layer)
        return r * (g.in_spatial + lay.vertical_out + lay.horizontal_out) + g.out_spatial * g.c_out

    def decompose(self, layer: Any) -> KernelState:
        return KernelState(_kernel4(layer))

    def select_ranks(self, layer: Any, decomposition: KernelState, policy: Any, multiple: int, floor: int) -> Ranks:
        from edgelr.factorize import select_cp_rank

        rank = select_cp_rank(decomposition.kernel, policy, cost=lambda r: self.cost(layer, (int(r),)),
                              full_cost=layer_cost(layer), multiple=multiple, floor=floor)
        return (int(rank),)

    def materialize(self, layer: Any, decomposition: KernelState, ranks: Ranks, *, exact: bool = True) -> Rewrite:
        from edgelr.factorize import cp

        ranks = self.check_ranks(layer, ranks)
        (r,) = ranks
        if r not in decomposition.cache:
            decomposition.cache[r] = cp(decomposition.kernel, r)
        return self.from_factors(layer, decomposition.cache[r])

    def from_factors(self, layer: Any, res: Any) -> Rewrite:
        """The CP chain from given factors (``CPResult``-like: first, vertical, horizontal, last, rel_error)."""
        from edgelr.tfcompat import keras2

        keras = keras2()
        r = int(res.first.shape[1])
        (dh, dw) = layer.dilation_rate
        kh, kw = (int(k) for k in layer.kernel_size)
        lay = _cp_layout(layer)
        dtype = layer.get_config().get("dtype")
        first = keras.layers.Conv2D.from_config(_linear_part(
            layer, child_name(layer, "cp_in"), filters=r, kernel_size=(1, 1), strides=(1, 1),
            dilation_rate=(1, 1), padding="valid"))
        common = dict(padding=lay.dw_padding, depth_multiplier=1, use_bias=False, data_format="channels_last",
                      dtype=dtype)
        vertical = keras.layers.DepthwiseConv2D((kh, 1), strides=(1, 1), dilation_rate=(dh, 1),
                                                name=child_name(layer, "cp_vertical"), **common)
        horizontal = keras.layers.DepthwiseConv2D((1, kw), strides=lay.horizontal_strides, dilation_rate=(1, dw),
                                                  name=child_name(layer, "cp_horizontal"), **common)
        last = keras.layers.Conv2D.from_config(derived_config(
            layer, child_name(layer, "cp_out"), kernel_size=(1, 1), strides=lay.last_strides, dilation_rate=(1, 1),
            padding="valid"))
        dt = np.float32
        chain = [NewLayer(first, [np.asarray(res.first, dt).reshape(1, 1, -1, r)])]
        if lay.pad is not None:
            chain.append(NewLayer(keras.layers.ZeroPadding2D(lay.pad, name=child_name(layer, "cp_pad"), dtype=dtype),
                                  []))
        chain += [NewLayer(vertical, [np.asarray(res.vertical, dt).reshape(kh, 1, r, 1)]),
                  NewLayer(horizontal, [np.asarray(res.horizontal, dt).reshape(1, kw, r, 1)]),
                  NewLayer(last, [np.asarray(res.last, dt).reshape(1, 1, r, -1)] + _bias(layer))]
        return Rewrite(chain, (r,), *self.cost(layer, (r,)), float(res.rel_error))


@register_rewriter("spatial-svd", priority=10)
class ConvSpatialSVD(SingleSVDRewriter):
    """k x k Conv2D -> kh x 1 conv ``C_in -> R`` then 1 x kw conv ``R -> C_out`` (spatial SVD)."""

    layers = ("Conv2D (channels_last, groups=1)",)

    def supports(self, layer: Any) -> bool:
        return _is_kxk_conv2d(layer)

    def full_ranks(self, layer: Any) -> Ranks:
        kh, kw, c_in, c_out = (int(d) for d in layer.kernel.shape)
        return (min(kh * c_in, kw * c_out),)

    def cost(self, layer: Any, ranks: Ranks) -> Cost:
        (r,) = ranks
        g = _geometry(layer)
        kh, kw = g.kernel_size
        params = kh * g.c_in * r + kw * r * g.c_out + (g.c_out if layer.use_bias else 0)
        return params, g.after_vertical * kh * g.c_in * r + g.out_spatial * kw * r * g.c_out

    def outputs(self, layer: Any, ranks: Ranks | None) -> int | None:
        g = _geometry(layer)
        return g.out_spatial * g.c_out + (0 if ranks is None else g.after_vertical * int(ranks[0]))

    def input_statistic(self, layer: Any) -> Any:
        from edgelr.rewrite.calibration import InputStatistic

        (sh, _), (dh, _) = layer.strides, layer.dilation_rate
        return InputStatistic.conv_patches(layer, (int(layer.kernel_size[0]), 1), (sh, 1), (dh, 1))

    def decompose(self, layer: Any, stats: np.ndarray | None = None) -> MatrixSVD:
        from edgelr.factorize.svd import spatial_matrix

        if stats is not None:  # vertical patches come ordered (i, c); spatial_matrix's rows are (c, i)
            kh, c_in = int(layer.kernel_size[0]), int(layer.kernel.shape[-2])
            order = np.arange(kh * c_in).reshape(kh, c_in).T.ravel()
            stats = stats[np.ix_(order, order)]
        return MatrixSVD.of(spatial_matrix(_kernel4(layer)), stats)

    def materialize(self, layer: Any, decomposition: MatrixSVD, ranks: Ranks, *, exact: bool = True) -> Rewrite:
        from edgelr.factorize import spatial_svd

        ranks = self.check_ranks(layer, ranks)
        (r,) = ranks
        res = spatial_svd(_kernel4(layer), r, spectrum=decomposition.spectrum, whitening=decomposition.whitening)
        (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
        kh, kw = (int(k) for k in layer.kernel_size)
        cls = _conv_cls(layer)
        vertical = cls.from_config(_linear_part(layer, child_name(layer, "spatial_vertical"), filters=r,
                                                kernel_size=(kh, 1), strides=(sh, 1), dilation_rate=(dh, 1)))
        horizontal = cls.from_config(derived_config(layer, child_name(layer, "spatial_horizontal"),
                                                    kernel_size=(1, kw), strides=(1, sw), dilation_rate=(1, dw)))
        chain = [NewLayer(vertical, [res.vertical.astype(np.float32)]),
                 NewLayer(horizontal, [res.horizontal.astype(np.float32)] + _bias(layer))]
        return Rewrite(chain, ranks, *self.cost(layer, ranks), float(res.rel_error))

