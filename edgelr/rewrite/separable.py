"""SeparableConv2D: keep the depthwise part, factorize the pointwise kernel by truncated SVD.

``SeparableConv2D`` becomes ``DepthwiseConv2D`` (same kernel, strides, padding, dilation, multiplier; no bias)
``-> 1x1 Conv2D (C_in*mult -> R, no bias) -> 1x1 Conv2D (R -> C_out, bias, activation)``; names
``<layer>/depthwise``, ``<layer>/svd_in``, ``<layer>/svd_out``. Data-aware with the second moment of the
depthwise part's output channels (the pointwise kernel's input), computed from the layer's input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgelr.rewrite.cost import io_shapes
from edgelr.rewrite.registry import Cost, NewLayer, Ranks, Rewrite, child_name, register_rewriter
from edgelr.rewrite.svdmatrix import MatrixSVD, SingleSVDRewriter


@register_rewriter("svd")
class SeparablePointwiseSVD(SingleSVDRewriter):
    """SeparableConv2D -> the depthwise part and two 1x1 convs (truncated SVD of the pointwise kernel)."""

    layers = ("SeparableConv2D",)

    def supports(self, layer: Any) -> bool:
        return type(layer).__name__ == "SeparableConv2D" and layer.data_format == "channels_last"

    def full_ranks(self, layer: Any) -> Ranks:
        _, _, mid, c_out = layer.pointwise_kernel.shape
        return (int(min(mid, c_out)),)

    def cost(self, layer: Any, ranks: Ranks) -> Cost:
        (r,) = ranks
        kh, kw, c_in, mult = (int(d) for d in layer.depthwise_kernel.shape)
        c_out = int(layer.filters)
        _, out_shape = io_shapes(layer)
        out_sp = int(np.prod([1 if d is None else d for d in out_shape[1:-1]]))
        params = kh * kw * c_in * mult + c_in * mult * r + r * c_out + (c_out if layer.use_bias else 0)
        return params, out_sp * (kh * kw * c_in * mult + c_in * mult * r + r * c_out)

    def outputs(self, layer: Any, ranks: Ranks | None) -> int | None:
        _, c_in, mult = (int(d) for d in layer.depthwise_kernel.shape[1:])
        _, out_shape = io_shapes(layer)
        out_sp = int(np.prod([1 if d is None else d for d in out_shape[1:-1]]))
        inner = 0 if ranks is None else int(ranks[0])  # TFLite runs the depthwise and pointwise parts as two ops
        return out_sp * (c_in * mult + inner + int(layer.filters))

    def input_statistic(self, layer: Any) -> Any:
        from edgelr.rewrite.calibration import InputStatistic

        def depthwise(t: Any) -> Any:
            import tensorflow as tf

            (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
            return tf.nn.depthwise_conv2d(t, layer.depthwise_kernel, strides=(1, sh, sw, 1),
                                          padding=str(layer.padding).upper(), dilations=(dh, dw))

        return InputStatistic("features", pre=depthwise)

    def decompose(self, layer: Any, stats: np.ndarray | None = None) -> MatrixSVD:
        pw = np.asarray(layer.pointwise_kernel.numpy(), dtype=np.float32)
        return MatrixSVD.of(pw.reshape(pw.shape[2], pw.shape[3]), stats)

    def materialize(self, layer: Any, decomposition: MatrixSVD, ranks: Ranks, *, exact: bool = True) -> Rewrite:
        from edgelr.tfcompat import keras2

        keras = keras2()
        ranks = self.check_ranks(layer, ranks)
        (r,) = ranks
        svd = decomposition.truncate(r)
        cfg = layer.get_config()
        dtype = cfg.get("dtype")
        depthwise = keras.layers.DepthwiseConv2D(
            layer.kernel_size, strides=layer.strides, padding=layer.padding, depth_multiplier=layer.depth_multiplier,
            dilation_rate=layer.dilation_rate, use_bias=False, name=child_name(layer, "depthwise"), dtype=dtype,
            depthwise_initializer=cfg.get("depthwise_initializer", "glorot_uniform"),
            depthwise_regularizer=cfg.get("depthwise_regularizer"),
            depthwise_constraint=cfg.get("depthwise_constraint"))
        first = keras.layers.Conv2D(r, 1, use_bias=False, name=child_name(layer, "svd_in"), dtype=dtype,
                                    kernel_initializer=cfg.get("pointwise_initializer", "glorot_uniform"),
                                    kernel_regularizer=cfg.get("pointwise_regularizer"))
        second = keras.layers.Conv2D(
            layer.filters, 1, activation=cfg.get("activation"), use_bias=layer.use_bias,
            name=child_name(layer, "svd_out"), dtype=dtype,
            kernel_initializer=cfg.get("pointwise_initializer", "glorot_uniform"),
            kernel_regularizer=cfg.get("pointwise_regularizer"),
            bias_initializer=cfg.get("bias_initializer", "zeros"), bias_regularizer=cfg.get("bias_regularizer"),
            activity_regularizer=cfg.get("activity_regularizer"), bias_constraint=cfg.get("bias_constraint"))
        mid, c_out = decomposition.matrix.shape
        bias = [layer.bias.numpy()] if layer.use_bias else []
        chain = [NewLayer(depthwise, [layer.depthwise_kernel.numpy()]),
                 NewLayer(first, [svd.left.reshape(1, 1, mid, r)]),
                 NewLayer(second, [svd.right.reshape(1, 1, r, c_out)] + bias)]
        return Rewrite(chain, ranks, *self.cost(layer, ranks), svd.rel_error)

