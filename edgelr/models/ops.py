"""Keras 3 operations recorded in functional graphs (``x + 3.0``, ``keras.ops.mean(x)``) for tf_keras.

Keras 3 serializes a ``keras.ops`` call on a symbolic tensor as a pseudo-layer from module
``keras.src.ops.<family>`` (e.g. ``{"module": "keras.src.ops.numpy", "class_name": "Add"}``) whose
config holds the operation's constructor arguments. tf_keras records TensorFlow ops applied to its
symbolic tensors as ``TFOpLambda`` layers, so each Keras 3 operation is replayed by calling the
matching TensorFlow function (:data:`OPS`) on the rebuilt tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edgelr.tfcompat import tf

# (config, *args, **kwargs) -> tensor, for each Keras 3 operation class name.
OpFn = Callable[..., Any]


def _binary(name: str) -> OpFn:
    def fn(cfg: Mapping[str, Any], x: Any, y: Any) -> Any:
        return getattr(tf().math, name)(x, y)

    return fn


def _unary(path: str) -> OpFn:
    def fn(cfg: Mapping[str, Any], x: Any) -> Any:
        obj: Any = tf()
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj(x)

    return fn


def _axis(cfg: Mapping[str, Any]) -> Any:
    axis = cfg.get("axis")
    return list(axis) if isinstance(axis, (list, tuple)) else axis


def _reduce(name: str) -> OpFn:
    def fn(cfg: Mapping[str, Any], x: Any) -> Any:
        return getattr(tf().math, name)(x, axis=_axis(cfg), keepdims=bool(cfg.get("keepdims", False)))

    return fn


def _reshape(cfg: Mapping[str, Any], x: Any) -> Any:
    return tf().reshape(x, list(cfg["newshape"]))


def _transpose(cfg: Mapping[str, Any], x: Any) -> Any:
    axes = cfg.get("axes")
    return tf().transpose(x, perm=list(axes) if axes is not None else None)


def _concatenate(cfg: Mapping[str, Any], xs: Any) -> Any:
    return tf().concat(list(xs), axis=int(cfg.get("axis", 0)))


def _expand_dims(cfg: Mapping[str, Any], x: Any) -> Any:
    axis = cfg["axis"]
    if isinstance(axis, (list, tuple)):
        for a in sorted(axis):
            x = tf().expand_dims(x, a)
        return x
    return tf().expand_dims(x, axis)


def _squeeze(cfg: Mapping[str, Any], x: Any) -> Any:
    return tf().squeeze(x, axis=_axis(cfg))


def _clip(cfg: Mapping[str, Any], x: Any) -> Any:
    return tf().clip_by_value(x, cfg["x_min"], cfg["x_max"])


def _matmul(cfg: Mapping[str, Any], x: Any, y: Any) -> Any:
    return tf().linalg.matmul(x, y)


def _hard_sigmoid(cfg: Mapping[str, Any], x: Any) -> Any:
    return tf().nn.relu6(x + 3.0) / 6.0


def _hard_silu(cfg: Mapping[str, Any], x: Any) -> Any:
    return x * tf().nn.relu6(x + 3.0) / 6.0


def _softmax(cfg: Mapping[str, Any], x: Any) -> Any:
    return tf().nn.softmax(x, axis=int(cfg.get("axis", -1)))


OPS: dict[str, OpFn] = {
    "Add": _binary("add"),
    "Subtract": _binary("subtract"),
    "Multiply": _binary("multiply"),
    "Divide": _binary("truediv"),
    "TrueDivide": _binary("truediv"),
    "Maximum": _binary("maximum"),
    "Minimum": _binary("minimum"),
    "Power": _binary("pow"),
    "Negative": _unary("math.negative"),
    "Abs": _unary("math.abs"),
    "Absolute": _unary("math.abs"),
    "Exp": _unary("math.exp"),
    "Log": _unary("math.log"),
    "Sqrt": _unary("math.sqrt"),
    "Square": _unary("math.square"),
    "Tanh": _unary("math.tanh"),
    "Sigmoid": _unary("math.sigmoid"),
    "Relu": _unary("nn.relu"),
    "Relu6": _unary("nn.relu6"),
    "Silu": _unary("nn.silu"),
    "HardSigmoid": _hard_sigmoid,
    "HardSilu": _hard_silu,
    "Softmax": _softmax,
    "Mean": _reduce("reduce_mean"),
    "Sum": _reduce("reduce_sum"),
    "Max": _reduce("reduce_max"),
    "Min": _reduce("reduce_min"),
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Concatenate": _concatenate,
    "ExpandDims": _expand_dims,
    "Squeeze": _squeeze,
    "Clip": _clip,
    "Matmul": _matmul,
}


def is_operation(obj: Mapping[str, Any]) -> bool:
    """True if a serialized Keras 3 functional-graph entry is a ``keras.ops`` operation, not a layer."""
    module = obj.get("module")
    return isinstance(module, str) and module.startswith("keras.src.ops")


def operation(obj: Mapping[str, Any]) -> OpFn | None:
    """A callable ``(*args, **kwargs) -> tensor`` replaying the operation, or None if unknown."""
    fn = OPS.get(str(obj["class_name"]))
    if fn is None:
        return None
    cfg = dict(obj.get("config") or {})

    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(cfg, *args, **kwargs)

    call.__name__ = str(cfg.get("name", obj["class_name"]))
    return call
