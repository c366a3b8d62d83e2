"""Load any Keras model file as a tf_keras model (tfmot, and so edgelr, needs tf_keras).

Entry points: :func:`load_model` (``edgelr.load_model``), :func:`load_model_with_info` (also returns
what was detected) and :func:`model_info` (what ``edgelr inspect`` prints).

===================  =====================================================================
detected format      how it is loaded
===================  =====================================================================
``tf_keras-keras``   ``tf_keras.models.load_model``
``tf_keras-h5``      ``tf_keras.models.load_model``
``tf_keras-savedmodel``  ``tf_keras.models.load_model`` (directory with ``keras_metadata.pb``)
``keras3-keras``     read by Keras 3, translated by :mod:`edgelr.models.translate`
``keras3-h5``        read by Keras 3, translated by :mod:`edgelr.models.translate`
===================  =====================================================================

TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelr.errors import ModelLoadError
from edgelr.models.custom_objects import CustomObjects, resolve_custom_objects
from edgelr.models.formats import DetectedFormat, detect_format

__all__ = ["LoadInfo", "detect_format", "load_model", "load_model_with_info", "model_info"]

CustomObjectsSpec = Mapping[str, Any] | str | os.PathLike[str] | None

_UNKNOWN_CLASS = re.compile(
    r"(?:Unknown (?:layer|object|activation|initializer|regularizer|constraint)[^:]*:\s*'?([\w>.]+)'?"
    r"|Could not locate (?:class|function) '([\w>.]+)')"
)


_LAMBDA = re.compile(r"deserializ\w* of a `?Lambda`? layer")


@dataclass(frozen=True)
class LoadInfo:
    """How a model was loaded.

    Attributes
    ----------
    path:
        The file or directory loaded.
    format:
        One of :data:`edgelr.models.formats.FORMATS`.
    keras_version:
        The writer's Keras version as recorded in the file (``""`` if not recorded).
    translated:
        True when the model was translated from Keras 3 to tf_keras.
    """

    path: str
    format: str
    keras_version: str
    translated: bool


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _load_error(where: Path, exc: BaseException, objs: CustomObjects) -> ModelLoadError:
    """One-line ModelLoadError for an exception raised by a Keras loader."""
    if _LAMBDA.search(str(exc)):
        return ModelLoadError(
            f"{where}: the model has a Lambda layer (serialized Python code), which edgelr neither executes nor "
            "translates; replace it by a custom layer and supply that with --custom-objects module.py"
        )
    match = _UNKNOWN_CLASS.search(str(exc))
    if match:
        name = match.group(1) or match.group(2)
        supplied = f" (custom objects from {objs.source} do not define it)" if objs.source else ""
        return ModelLoadError(
            f"{where}: the model uses {name}, which this Keras does not know{supplied}; supply it with "
            f"--custom-objects module.py (CUSTOM_OBJECTS = {{'{name}': {name}}}; a Keras 3 file needs the Keras 3 "
            "class to be read and a tf_keras class to be translated) or load_model(path, custom_objects={...})"
        )
    return ModelLoadError(f"{where}: could not load the model ({_first_line(exc)})")


def _load_tf_keras(det: DetectedFormat, objs: CustomObjects) -> Any:
    from edgelr.tfcompat import keras2

    tfk = keras2()
    from edgelr.models.translate import translation_objects

    scope = {**translation_objects(), **objs.tf_keras}
    try:
        return tfk.models.load_model(str(det.path), custom_objects=scope, compile=False)
    except ModelLoadError:
        raise
    except Exception as exc:  # Keras raises many types for a bad file; report one line
        raise _load_error(det.path, exc, objs) from None


def _load_keras3(det: DetectedFormat, objs: CustomObjects) -> Any:
    from edgelr.models.translate import translate_model
    from edgelr.tfcompat import keras3

    k3 = keras3()
    try:
        src = k3.saving.load_model(str(det.path), custom_objects=objs.keras3 or None, compile=False)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise _load_error(det.path, exc, objs) from None
    try:
        return translate_model(src, custom_objects=objs.tf_keras, where=str(det.path))
    except ModelLoadError:
        raise
    except Exception as exc:  # an unforeseen layer detail: still one line, naming what failed
        raise ModelLoadError(
            f"{det.path}: could not translate the Keras 3 model to tf_keras ({_first_line(exc)}); "
            "save it with tf_keras instead, or report this model"
        ) from None


def load_model_with_info(path: str | os.PathLike[str], custom_objects: CustomObjectsSpec = None) -> tuple[Any, LoadInfo]:
    """Load ``path`` as a tf_keras model and say how.

    Parameters
    ----------
    path:
        ``.keras`` file (Keras 3 or tf_keras), ``.h5`` whole-model file, or tf_keras SavedModel directory.
    custom_objects:
        ``{name: class_or_function}`` or a path to a Python file whose ``CUSTOM_OBJECTS`` dict and
        registered classes are used (see :mod:`edgelr.models.custom_objects`).

    Returns
    -------
    (tf_keras.Model, LoadInfo)

    Raises
    ------
    ModelLoadError
        Missing/corrupt/non-model input, a plain SavedModel, an unknown or untranslatable layer.
    """
    det = detect_format(path)
    objs = resolve_custom_objects(custom_objects)
    if det.is_keras3:
        model = _load_keras3(det, objs)
    else:
        import edgelr.rewrite.cells  # noqa: F401 - registers edgelr's low-rank LSTM/GRU cells (factorized models)

        model = _load_tf_keras(det, objs)
    from edgelr.tfcompat import keras2

    if not isinstance(model, keras2().Model):
        raise ModelLoadError(f"{det.path}: loaded a {type(model).__name__}, not a Keras model")
    info = LoadInfo(str(det.path), det.format, det.keras_version, det.is_keras3)
    return model, info


def load_model(path: str | os.PathLike[str], custom_objects: CustomObjectsSpec = None) -> Any:
    """Load ``path`` as a tf_keras model (see :func:`load_model_with_info`)."""
    return load_model_with_info(path, custom_objects=custom_objects)[0]


def _tensor_specs(tensors: Any) -> list[dict[str, Any]]:
    from edgelr.tfcompat import tf

    out = []
    for t in tf().nest.flatten(tensors):
        shape = [None if d is None else int(d) for d in t.shape.as_list()]
        name = getattr(t, "name", "") or ""
        out.append({"name": name.split(":")[0].split("/")[0], "shape": shape, "dtype": t.dtype.name})
    return out


def _leaf_layers(model: Any) -> list[Any]:
    out: list[Any] = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers and type(layer).__name__ in ("Functional", "Sequential", "Model"):
            out.extend(_leaf_layers(layer))
        else:
            out.append(layer)
    return out


def model_info(model: Any, info: LoadInfo | None = None) -> dict[str, Any]:
    """Summary of a tf_keras model for ``edgelr inspect`` (JSON-serializable).

    Parameters
    ----------
    model:
        A tf_keras model.
    info:
        What :func:`load_model_with_info` returned, to include format and writer version.

    Returns
    -------
    dict
        ``name``, ``format``, ``keras_version``, ``translated``, ``path``, ``inputs`` and ``outputs``
        (lists of ``{"name", "shape", "dtype"}``, ``None`` for unknown dimensions), ``params``,
        ``trainable_params``, ``layers`` (leaf layer count, nested models expanded) and
        ``layer_types`` (``{class name: count}``).
    """
    import numpy as np

    leaves = _leaf_layers(model)
    types: dict[str, int] = {}
    for layer in leaves:
        types[type(layer).__name__] = types.get(type(layer).__name__, 0) + 1
    trainable = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    out: dict[str, Any] = {
        "name": model.name,
        "path": info.path if info else None,
        "format": info.format if info else None,
        "keras_version": info.keras_version if info else None,
        "translated": info.translated if info else None,
        "inputs": _tensor_specs(model.inputs) if model.inputs else [],
        "outputs": _tensor_specs(model.outputs) if model.outputs else [],
        "params": int(model.count_params()),
        "trainable_params": trainable,
        "layers": len(leaves),
        "layer_types": dict(sorted(types.items())),
    }
    return out
