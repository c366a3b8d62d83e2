"""Translate a Keras 3 model (read by Keras 3) into an equivalent tf_keras model.

Why this approach: the file is *read by Keras 3 itself* (``keras.saving.load_model``), so every
container Keras 3 writes (``.keras`` zip, its ``.h5``) and its internal weight layout
(``model.weights.h5`` is keyed by attribute paths and class names, not layer names) stay Keras 3's
business. We then take the loaded model's serialized config (``serialize_keras_object``, the same
JSON that sits in ``config.json``), translate it object by object, and *rebuild* the tf_keras model:

1. every serialized object (layer, initializer, regularizer, constraint, dtype policy, activation)
   is translated to tf_keras' legacy ``{"class_name", "config"}`` form; Keras 3-only keys are
   checked against the tf_keras class' constructor: dropped when neutral (``None``/``False``, or
   training-only like ``seed``), a :class:`~edgelr.errors.ModelLoadError` otherwise; a few renamed
   keys are mapped (:data:`_RENAMED_KEYS`);
2. the functional graph is replayed from Keras 3's ``inbound_nodes`` (``__keras_tensor__`` with
   ``keras_history = [layer, node, tensor]``) by calling the new tf_keras layers on the new tensors,
   which avoids tf_keras' own node-index conventions for nested models (it skips a nested
   Functional's first node, Keras 3 does not);
   Keras 3 operations recorded in the graph (``x + 3.0``) are replayed as TensorFlow ops, which tf_keras
   records as ``TFOpLambda`` layers (:mod:`edgelr.models.ops`);
3. nested models and wrapper layers (``TimeDistributed``, ``Bidirectional``) are built recursively;
   layers private to a Keras 3 application (ConvNeXt's ``LayerScale``) map to tf_keras' twins; a
   custom layer is built from the tf_keras class the user supplies (``--custom-objects``);
4. weights are copied layer by layer, matched by layer name (recursing into nested models) and
   within a layer by variable name (``kernel``, ``moving_mean``...) or, when names repeat (e.g.
   ``Bidirectional``), by order, with a shape check on every variable; the parameter counts must agree.

Activation functions whose tf_keras namesake computes something else (``hard_sigmoid`` is
``relu6(x + 3) / 6`` in Keras 3 but ``0.2 x + 0.5`` clipped in tf_keras) or that tf_keras lacks are
replaced by tf_keras-serializable functions with Keras 3's definition (:data:`KERAS3_ACTIVATIONS`).

The alternative, translating ``config.json`` and reading ``model.weights.h5`` ourselves, would avoid
needing the Keras 3 version of a custom layer, but it would re-implement Keras 3's weight-file walk
(keys such as ``layers/dense_1/vars/0`` derive from class names and attribute paths and change
between Keras 3 releases) and handle only ``.keras``; reading with Keras 3 is the robust choice.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edgelr.errors import ModelLoadError
from edgelr.models.ops import is_operation, operation
from edgelr.tfcompat import keras2, keras3, tf

# Keys renamed between Keras 3 and tf_keras, per layer class: {class: {keras3_key: tf_keras_key}}.
_RENAMED_KEYS: dict[str, dict[str, str]] = {
    "InputLayer": {"batch_shape": "batch_input_shape"},
    "LeakyReLU": {"negative_slope": "alpha"},
}
# Keys tf_keras' from_config requires but Keras 3 does not write, with values meaning "not given".
_ADDED_KEYS: dict[str, dict[str, Any]] = {
    "MultiHeadAttention": {"query_shape": None, "key_shape": None, "value_shape": None},
}
# Keras 3-only keys that only affect training randomness or device kernels: safe to drop.
_TRAINING_ONLY_KEYS: frozenset[str] = frozenset({"seed", "use_cudnn"})
# Keyword arguments tf_keras' base Layer accepts through **kwargs.
_BASE_LAYER_KWARGS: frozenset[str] = frozenset(
    {
        "trainable", "name", "dtype", "dynamic", "input_dim", "input_shape", "batch_input_shape",
        "batch_size", "weights", "activity_regularizer", "autocast", "implementation",
    }
)
# Accepted by tf_keras RNN layers through kwargs.pop (invisible in the signatures).
_RNN_POPPED_KWARGS: frozenset[str] = frozenset({"zero_output_for_mask"})
_WRAPPERS: frozenset[str] = frozenset({"TimeDistributed", "Bidirectional"})
_MODEL_CLASSES: frozenset[str] = frozenset({"Functional", "Model", "Sequential"})
_DTYPE_POLICIES: frozenset[str] = frozenset({"DTypePolicy", "FloatDTypePolicy", "Policy"})


class _NotReady(Exception):
    """An inbound tensor of a node is not built yet (process the node later)."""


# --------------------------------------------------------------------------------------------------
# Keras 3 activations for tf_keras


def _k3_hard_sigmoid(x: Any) -> Any:
    t = tf()
    return t.nn.relu6(x + 3.0) / 6.0


def _k3_hard_silu(x: Any) -> Any:
    t = tf()
    return x * t.nn.relu6(x + 3.0) / 6.0


def _k3_hard_tanh(x: Any) -> Any:
    return tf().clip_by_value(x, -1.0, 1.0)


def _k3_log_sigmoid(x: Any) -> Any:
    return tf().math.log_sigmoid(x)


def _k3_celu(x: Any) -> Any:
    t = tf()
    return t.nn.relu(x) + t.minimum(0.0, t.math.expm1(x))


# Keras 3 activation name -> function with Keras 3's definition, registered in tf_keras as "edgelr>...".
KERAS3_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "hard_sigmoid": _k3_hard_sigmoid,
    "hard_silu": _k3_hard_silu,
    "hard_swish": _k3_hard_silu,
    "hard_tanh": _k3_hard_tanh,
    "log_sigmoid": _k3_log_sigmoid,
    "celu": _k3_celu,
}
_TRANSLATION_OBJECTS: dict[str, Callable[[Any], Any]] = {}


def _named_copy(fn: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    def wrapped(x: Any) -> Any:
        return fn(x)

    wrapped.__name__ = name
    wrapped.__qualname__ = name
    return wrapped


def translation_objects() -> dict[str, Any]:
    """The tf_keras custom objects translated models may use (pass them when reloading a saved copy).

    Returns
    -------
    dict
        ``{"edgelr>k3_hard_sigmoid": fn, ...}``; the functions are also registered globally in tf_keras
        (package ``edgelr``), so a translated model saved by tf_keras reloads in a process that called this.
    """
    if not _TRANSLATION_OBJECTS:
        tfk = keras2()
        for name, fn in KERAS3_ACTIVATIONS.items():
            named = _named_copy(fn, f"k3_{name}")
            tfk.saving.register_keras_serializable(package="edgelr", name=f"k3_{name}")(named)
            _TRANSLATION_OBJECTS[f"edgelr>k3_{name}"] = named
    return dict(_TRANSLATION_OBJECTS)


# --------------------------------------------------------------------------------------------------
# Config translation


class _Context:
    """What the translation needs at hand: tf_keras, custom objects, the path for messages."""

    def __init__(self, custom_objects: Mapping[str, Any] | None, where: str) -> None:
        self.tfk = keras2()
        self.custom: dict[str, Any] = dict(custom_objects or {})
        self.scope: dict[str, Any] = {**translation_objects(), **self.custom}
        self.where = where

    def hint(self, cls_name: str) -> str:
        return (
            f"supply a tf_keras implementation of {cls_name} with --custom-objects module.py "
            f"(CUSTOM_OBJECTS = {{'{cls_name}': TfKeras{cls_name}}}, plus the Keras 3 class to read the file) "
            "or load_model(path, custom_objects={...})"
        )

    def custom_lookup(self, obj: Mapping[str, Any]) -> Any | None:
        for key in (obj.get("registered_name"), obj.get("class_name")):
            if isinstance(key, str) and key in self.custom:
                return self.custom[key]
        return None


def _is_builtin_module(module: Any) -> bool:
    return module is None or module == "keras" or (isinstance(module, str) and module.startswith("keras."))


def _is_serialized(obj: Any) -> bool:
    return isinstance(obj, dict) and "class_name" in obj and "config" in obj


def _accepted_keys(cls: type) -> frozenset[str] | None:
    """Constructor keywords ``cls`` accepts (following ``**kwargs`` up the MRO); None = anything."""
    keys: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            return None
        has_var_kw = False
        for p in params.values():
            if p.kind == p.VAR_KEYWORD:
                has_var_kw = True
            elif p.name != "self" and p.kind != p.VAR_POSITIONAL:
                keys.add(p.name)
        if not has_var_kw:
            return frozenset(keys)
        if klass.__module__.endswith("engine.base_layer") and klass.__name__ == "Layer":
            return frozenset(keys | _BASE_LAYER_KWARGS)
    return None


def _is_neutral(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (list, tuple, dict)) and len(value) == 0)


def _dtype(value: Any) -> Any:
    """Keras 3 dtype / DTypePolicy -> a tf_keras dtype string or Policy dict."""
    if _is_serialized(value) and value["class_name"] in _DTYPE_POLICIES:
        name = value["config"].get("name", "float32")
        if name in ("mixed_float16", "mixed_bfloat16"):
            return {"class_name": "Policy", "config": {"name": name}}
        return name
    return value


def _activation(value: Any, ctx: _Context, owner: str) -> Any:
    if isinstance(value, str):
        if value in KERAS3_ACTIVATIONS:
            return f"edgelr>k3_{value}"
        if value in ctx.custom:
            return value
        try:
            ctx.tfk.activations.get(value)
        except (ValueError, TypeError):
            raise ModelLoadError(
                f"{ctx.where}: {owner} uses activation '{value}', which tf_keras does not have; "
                f"{ctx.hint(value)}"
            ) from None
        return value
    if _is_serialized(value) and value["class_name"] == "function":
        found = ctx.custom_lookup({"registered_name": value.get("registered_name"), "class_name": value["config"]})
        if found is None:
            name = value.get("registered_name") or value["config"]
            raise ModelLoadError(
                f"{ctx.where}: {owner} uses custom activation function '{name}'; {ctx.hint(str(name))}"
            )
        for key in (value.get("registered_name"), value["config"]):
            if key in ctx.custom:
                return key
    return _value(value, ctx, owner)


def _value(value: Any, ctx: _Context, owner: str) -> Any:
    """Translate any config value (recursively): serialized objects, tuples, arrays."""
    if isinstance(value, list):
        return [_value(v, ctx, owner) for v in value]
    if isinstance(value, tuple):
        return tuple(_value(v, ctx, owner) for v in value)
    if not isinstance(value, dict):
        return value
    if not _is_serialized(value):
        return {k: _value(v, ctx, owner) for k, v in value.items()}
    cls_name = value["class_name"]
    cfg = value["config"]
    if cls_name in ("__tuple__",):
        return tuple(_value(v, ctx, owner) for v in cfg["value"])
    if cls_name in ("__numpy__", "__tensor__"):
        return np.asarray(cfg["value"], dtype=cfg.get("dtype")).tolist()
    if cls_name == "__lambda__" or cls_name == "__bytes__":
        raise ModelLoadError(
            f"{ctx.where}: {owner} holds serialized Python code ({cls_name}), which cannot be translated; "
            "replace the Lambda by a custom layer and pass its tf_keras version with --custom-objects module.py"
        )
    if cls_name in _DTYPE_POLICIES:
        return _dtype(value)
    if cls_name == "function":
        return _activation(value, ctx, owner)
    module = value.get("module")
    if isinstance(module, str) and (module.startswith("keras.layers") or module.startswith("keras.src.layers")):
        return {"class_name": cls_name, "config": _layer_config(value, ctx, owner)[1]}
    custom = ctx.custom_lookup(value)
    if custom is not None or not _is_builtin_module(module):
        if custom is None:
            raise ModelLoadError(
                f"{ctx.where}: {owner} uses custom object {cls_name} (module {module}); {ctx.hint(cls_name)}"
            )
        registered = value.get("registered_name")
        key = registered if registered in ctx.custom else cls_name
        return {"class_name": key, "config": _value(cfg, ctx, owner)}
    return {"class_name": cls_name, "config": _object_config(cls_name, module, cfg, ctx, owner)}


def _drop_unsupported(out: dict[str, Any], accepted: Any, what: str, fix: str) -> None:
    """Drop the keys of ``out`` that the tf_keras class does not accept when their value is neutral (a
    default) or training-only; any other such key raises :class:`ModelLoadError` ``"<what> key=value ..."``."""
    for key in [k for k in out if k not in accepted]:
        if _is_neutral(out[key]) or key in _TRAINING_ONLY_KEYS:
            del out[key]
        else:
            raise ModelLoadError(f"{what} {key}={out[key]!r} has no tf_keras equivalent; {fix}")


def _object_config(cls_name: str, module: Any, cfg: Any, ctx: _Context, owner: str) -> Any:
    """Config of an initializer/regularizer/constraint: translated values, unknown neutral keys dropped."""
    if not isinstance(cfg, dict):
        return cfg
    out = {k: _value(v, ctx, owner) for k, v in cfg.items()}
    tf_cls = None
    for family in ("initializers", "regularizers", "constraints"):
        if isinstance(module, str) and family in module:
            tf_cls = getattr(getattr(ctx.tfk, family), cls_name, None)
    if tf_cls is None:
        return out
    accepted = _accepted_keys(tf_cls)
    if accepted is not None:
        _drop_unsupported(out, accepted, f"{ctx.where}: {owner}: {cls_name} option", "re-save the model without it")
    return out


def _application_layer(module: Any, cls_name: str) -> type | None:
    """tf_keras' twin of a layer private to a Keras 3 application (ConvNeXt's LayerScale...)."""
    prefix = "keras.src.applications."
    if not (isinstance(module, str) and module.startswith(prefix)):
        return None
    import importlib

    try:
        mod = importlib.import_module("tf_keras.src.applications." + module[len(prefix):])
    except ImportError:
        return None
    found = getattr(mod, cls_name, None)
    return found if isinstance(found, type) else None


def _layer_config(obj: Mapping[str, Any], ctx: _Context, owner: str = "") -> tuple[type, dict[str, Any]]:
    """The tf_keras class and translated config of a serialized built-in Keras 3 layer."""
    cls_name = obj["class_name"]
    cfg: dict[str, Any] = dict(obj["config"])
    name = cfg.get("name", obj.get("name", "?"))
    owner = f"layer '{name}' ({cls_name})"
    custom = ctx.custom_lookup(obj)
    if custom is not None:
        out = {k: (_dtype(v) if k == "dtype" else _value(v, ctx, owner)) for k, v in cfg.items()}
        return custom, out
    if not _is_builtin_module(obj.get("module")):
        raise ModelLoadError(
            f"{ctx.where}: {owner} is a custom layer (module {obj.get('module')}) with no tf_keras version; "
            f"{ctx.hint(cls_name)}"
        )
    tf_cls = getattr(ctx.tfk.layers, cls_name, None) or _application_layer(obj.get("module"), cls_name)
    if tf_cls is None:
        raise ModelLoadError(
            f"{ctx.where}: {owner}: tf_keras has no layer {cls_name}, so it cannot be translated; "
            f"{ctx.hint(cls_name)}"
        )
    renames = _RENAMED_KEYS.get(cls_name, {})
    out: dict[str, Any] = dict(_ADDED_KEYS.get(cls_name, {}))
    for key, val in cfg.items():
        key = renames.get(key, key)
        if key == "dtype":
            out[key] = _dtype(val)
        elif key == "activation" or key == "recurrent_activation":
            out[key] = _activation(val, ctx, owner)
        else:
            out[key] = _value(val, ctx, owner)
    if cls_name == "InputLayer" and out.get("optional"):
        raise ModelLoadError(f"{ctx.where}: {owner}: optional inputs have no tf_keras equivalent")
    accepted = _accepted_keys(tf_cls)
    if accepted is not None and issubclass(tf_cls, ctx.tfk.layers.RNN):
        accepted = accepted | _RNN_POPPED_KWARGS
    if accepted is not None:
        _drop_unsupported(out, accepted | set(_ADDED_KEYS.get(cls_name, {})), f"{ctx.where}: {owner}: Keras 3 option",
                          "re-save the model without it or supply a tf_keras layer with --custom-objects module.py")
    return tf_cls, out


# --------------------------------------------------------------------------------------------------
# Building


def _build_layer(obj: Mapping[str, Any], ctx: _Context) -> Any:
    """A tf_keras layer (or model) from one Keras 3 serialized layer."""
    cls_name = obj["class_name"]
    cfg = obj["config"]
    if ctx.custom_lookup(obj) is None and _is_builtin_module(obj.get("module")):
        if cls_name in _MODEL_CLASSES and isinstance(cfg, dict) and "layers" in cfg:
            if cls_name == "Sequential":
                return _build_sequential(cfg, ctx)
            return _build_functional(cfg, ctx)
        if cls_name in _WRAPPERS:
            return _build_wrapper(obj, ctx)
    tf_cls, config = _layer_config(obj, ctx)
    try:
        with ctx.tfk.utils.custom_object_scope(ctx.scope):
            return tf_cls.from_config(config)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{ctx.where}: layer '{config.get('name', '?')}' ({cls_name}) could not be rebuilt in tf_keras: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _build_wrapper(obj: Mapping[str, Any], ctx: _Context) -> Any:
    cls_name = obj["class_name"]
    cfg = dict(obj["config"])
    inner = _build_layer(cfg.pop("layer"), ctx)
    kwargs: dict[str, Any] = {}
    if cls_name == "Bidirectional":
        backward = cfg.pop("backward_layer", None)
        if backward is not None:
            kwargs["backward_layer"] = _build_layer(backward, ctx)
    owner = f"layer '{cfg.get('name', '?')}' ({cls_name})"
    for key, val in cfg.items():
        kwargs[key] = _dtype(val) if key == "dtype" else _value(val, ctx, owner)
    tf_cls = getattr(ctx.tfk.layers, cls_name)
    accepted = _accepted_keys(tf_cls)
    if accepted is not None:
        for key in list(kwargs):
            if key not in accepted and (_is_neutral(kwargs[key]) or key in _TRAINING_ONLY_KEYS):
                del kwargs[key]
    return tf_cls(inner, **kwargs)


def _input_tensor(obj: Mapping[str, Any], ctx: _Context) -> Any:
    _, cfg = _layer_config(obj, ctx)
    shape = cfg.get("batch_input_shape")
    if shape is None:
        raise ModelLoadError(f"{ctx.where}: input layer '{cfg.get('name')}' has no shape")
    return ctx.tfk.Input(
        batch_shape=tuple(shape),
        dtype=cfg.get("dtype") or "float32",
        name=cfg.get("name"),
        sparse=bool(cfg.get("sparse", False)),
        ragged=bool(cfg.get("ragged", False)),
    )


def _build_sequential(cfg: Mapping[str, Any], ctx: _Context) -> Any:
    tfk = ctx.tfk
    model = tfk.Sequential(name=cfg.get("name"))
    for obj in cfg["layers"]:
        if obj["class_name"] == "InputLayer":
            model.add(_input_tensor(obj, ctx))
        else:
            model.add(_build_layer(obj, ctx))
    if not model.built and cfg.get("build_input_shape"):
        model.build(tuple(cfg["build_input_shape"]))
    model.trainable = bool(cfg.get("trainable", True))
    return model


def _endpoints(spec: Any, outputs: Mapping[tuple[str, int], Any], ctx: _Context) -> Any:
    """Resolve Keras 3 ``input_layers``/``output_layers`` (flat triple, list of triples or dict)."""
    t = tf()

    def one(triple: list[Any]) -> Any:
        name, node, index = triple[0], int(triple[1]), int(triple[2])
        if (name, node) not in outputs:
            raise ModelLoadError(f"{ctx.where}: model config refers to unknown node {name}[{node}]")
        return t.nest.flatten(outputs[(name, node)])[index]

    if isinstance(spec, dict):
        return {k: one(v) for k, v in spec.items()}
    if len(spec) == 3 and isinstance(spec[0], str):
        return one(spec)
    return [one(s) if (len(s) == 3 and isinstance(s[0], str)) else _endpoints(s, outputs, ctx) for s in spec]


def _build_functional(cfg: Mapping[str, Any], ctx: _Context) -> Any:
    tfk = ctx.tfk
    t = tf()
    outputs: dict[tuple[str, int], Any] = {}
    layers: dict[str, Any] = {}
    pending: list[tuple[str, int, Mapping[str, Any]]] = []
    for obj in cfg["layers"]:
        name = obj.get("name") or obj["config"]["name"]
        if obj["class_name"] == "InputLayer":
            outputs[(name, 0)] = _input_tensor(obj, ctx)
            continue
        if is_operation(obj):
            op = operation(obj)
            if op is None:
                raise ModelLoadError(
                    f"{ctx.where}: '{name}' is the Keras 3 operation keras.ops {obj['class_name']} "
                    f"({obj.get('module')}), which edgelr cannot translate yet; express it with Keras layers "
                    "or a custom layer supplied with --custom-objects module.py"
                )
            layers[name] = op
        else:
            layers[name] = _build_layer(obj, ctx)
        for i, node in enumerate(obj.get("inbound_nodes", [])):
            if not isinstance(node, dict) or "args" not in node:
                raise ModelLoadError(
                    f"{ctx.where}: layer '{name}' has inbound nodes in an unknown format; expected Keras 3 "
                    "{'args': [...], 'kwargs': {...}}"
                )
            pending.append((name, i, node))

    def resolve(value: Any, owner: str) -> Any:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            layer_name, node, index = value["config"]["keras_history"]
            key = (layer_name, int(node))
            if key not in outputs:
                raise _NotReady
            return t.nest.flatten(outputs[key])[int(index)]
        if isinstance(value, (list, tuple)):
            return [resolve(v, owner) for v in value]
        if isinstance(value, dict) and not _is_serialized(value):
            return {k: resolve(v, owner) for k, v in value.items()}
        return _value(value, ctx, owner)

    while pending:
        progressed = False
        remaining: list[tuple[str, int, Mapping[str, Any]]] = []
        for name, i, node in pending:
            try:
                args = resolve(node["args"], name)
                kwargs = resolve(node.get("kwargs", {}), name)
            except _NotReady:
                remaining.append((name, i, node))
                continue
            kwargs = {k: v for k, v in kwargs.items() if not (k in ("mask", "training") and v is None)}
            try:
                outputs[(name, i)] = layers[name](*args, **kwargs)
            except ModelLoadError:
                raise
            except Exception as exc:
                raise ModelLoadError(
                    f"{ctx.where}: calling rebuilt layer '{name}' ({type(layers[name]).__name__}) failed: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from None
            progressed = True
        if not progressed:
            names = sorted({n for n, _, _ in remaining})
            raise ModelLoadError(f"{ctx.where}: model graph has unresolvable inputs for layers {names}")
        pending = remaining

    inputs = _endpoints(cfg["input_layers"], outputs, ctx)
    outs = _endpoints(cfg["output_layers"], outputs, ctx)
    model = tfk.Model(inputs=inputs, outputs=outs, name=cfg.get("name"))
    model.trainable = bool(cfg.get("trainable", True))
    return model


# --------------------------------------------------------------------------------------------------
# Weights


def _short_name(var: Any) -> str:
    name = str(getattr(var, "path", None) or var.name)
    return name.split(":")[0].rsplit("/", 1)[-1]


def _collect_assignments(
    src: Any, dst: Any, where: str, out: list[tuple[Any, np.ndarray]], leaves: list[Any]
) -> None:
    """Pair the variables of Keras 3 layer ``src`` with those of tf_keras layer ``dst``; mirror ``trainable``."""
    tfk = keras2()
    dst.trainable = bool(src.trainable)  # on a model this first sets every sub-layer; children override below
    if isinstance(dst, tfk.Model) and hasattr(src, "layers"):
        by_name = {layer.name: layer for layer in src.layers}
        for layer in dst.layers:
            if isinstance(layer, tfk.layers.InputLayer):
                continue
            if layer.name not in by_name:
                if layer.weights:
                    raise ModelLoadError(f"{where}: no Keras 3 layer named '{layer.name}' to copy weights from")
                continue
            _collect_assignments(by_name[layer.name], layer, where, out, leaves)
        return
    leaves.append(dst)
    src_w = list(src.weights)
    dst_w = list(dst.weights)
    if len(src_w) != len(dst_w):
        raise ModelLoadError(
            f"{where}: layer '{dst.name}' ({type(dst).__name__}) has {len(dst_w)} weights in tf_keras but "
            f"{len(src_w)} in Keras 3; the layer cannot be translated"
        )
    src_names = [_short_name(v) for v in src_w]
    dst_names = [_short_name(v) for v in dst_w]
    if len(set(src_names)) == len(src_names) and sorted(src_names) == sorted(dst_names):
        by = {n: v for n, v in zip(src_names, src_w)}
        src_w = [by[n] for n in dst_names]
    for s, d in zip(src_w, dst_w):
        value = np.asarray(keras3().ops.convert_to_numpy(s))
        if tuple(value.shape) != tuple(d.shape):
            raise ModelLoadError(
                f"{where}: layer '{dst.name}' weight {_short_name(d)} has shape {tuple(d.shape)} in tf_keras but "
                f"{tuple(value.shape)} in Keras 3"
            )
        out.append((d, value))


def copy_weights(src: Any, dst: Any, where: str = "model") -> int:
    """Copy every weight of Keras 3 model ``src`` into the tf_keras model ``dst`` built from its config.

    Returns
    -------
    int
        Number of variables assigned.
    """
    pairs: list[tuple[Any, np.ndarray]] = []
    leaves: list[Any] = []
    _collect_assignments(src, dst, where, pairs, leaves)
    keras2().backend.batch_set_value(pairs)
    for layer in leaves:
        # preprocessing layers (Normalization...) derive constants from their weights
        if hasattr(layer, "finalize_state") and layer.built:
            layer.finalize_state()
    return len(pairs)


# --------------------------------------------------------------------------------------------------
# Entry point


def translate_model(k3_model: Any, custom_objects: Mapping[str, Any] | None = None, where: str = "model") -> Any:
    """Rebuild Keras 3 model ``k3_model`` (Sequential or Functional) in tf_keras, weights included.

    Parameters
    ----------
    k3_model:
        A loaded Keras 3 ``keras.Sequential`` or functional ``keras.Model``.
    custom_objects:
        ``{name: tf_keras class or function}`` for custom layers/activations.
    where:
        What to name in error messages (usually the file path).

    Returns
    -------
    tf_keras.Model
        Same architecture, layer names and weights; outputs equal the original's (float32 rounding).

    Raises
    ------
    ModelLoadError
        A subclassed model, a layer or option without tf_keras equivalent, a custom object not supplied,
        or a weight/parameter-count mismatch.
    """
    k3 = keras3()
    ctx = _Context(custom_objects, where)
    from keras.src.models.functional import Functional

    if not isinstance(k3_model, (k3.Sequential, Functional)):
        raise ModelLoadError(
            f"{where}: a subclassed Keras 3 model ({type(k3_model).__name__}) has no config to translate; "
            "rebuild it as a Sequential or functional model, or save it with tf_keras"
        )
    if not k3_model.built:
        raise ModelLoadError(
            f"{where}: the Keras 3 model was saved before it was built (no input shape, no weights); "
            "add a keras.Input or call it on data, then save it again"
        )
    serialized = k3.saving.serialize_keras_object(k3_model)
    model = _build_layer(serialized, ctx)
    copy_weights(k3_model, model, where)
    n_src, n_dst = int(k3_model.count_params()), int(model.count_params())
    if n_src != n_dst:
        raise ModelLoadError(
            f"{where}: translated model has {n_dst} parameters but the Keras 3 model has {n_src}; "
            "a layer was not translated faithfully"
        )
    return model
