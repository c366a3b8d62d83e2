"""Resolve the ``custom_objects`` argument / ``--custom-objects module.py`` option.

A user's custom layers exist twice when the model was saved by Keras 3: the Keras 3 class is needed
to *read* the file, and a tf_keras class to *build* the model edgelr compresses (tfmot needs tf_keras).
The option accepts:

- a mapping ``{name: object}`` (classes or functions; a value may be a tuple
  ``(Keras3Class, TfKerasClass)`` giving both versions under the saved class name), or
- a path to a Python file (``module.py``). The file is executed once; every class or function it
  registers with ``keras.saving.register_keras_serializable`` or
  ``tf_keras.saving.register_keras_serializable`` is then known to the matching Keras, and its
  ``CUSTOM_OBJECTS`` dict (if any) is used as the mapping.

Each entry is sorted by which Keras it belongs to (a subclass of a Keras 3 class goes to the reader,
a tf_keras subclass to the builder; plain functions, e.g. activations, go to both).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelr.errors import ModelLoadError


@dataclass
class CustomObjects:
    """Custom objects split by the Keras they belong to.

    Attributes
    ----------
    tf_keras:
        Objects used to build the tf_keras model (and to load tf_keras files).
    keras3:
        Objects used by Keras 3 to read a Keras 3 file.
    source:
        Where they came from (a file path, ``"dict"`` or ``""``), for error messages.
    """

    tf_keras: dict[str, Any] = field(default_factory=dict)
    keras3: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"custom objects file {path} not found; expected a Python file defining CUSTOM_OBJECTS")
    name = f"edgelr_custom_objects_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"custom objects file {path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # user code: any error becomes one line
        del sys.modules[name]
        raise ModelLoadError(
            f"custom objects file {path} failed to import: {type(exc).__name__}: {exc}"
        ) from None
    return module


def _belongs_to(obj: Any) -> str:
    """``"tf_keras"``, ``"keras3"`` or ``"both"`` for one custom object."""
    if isinstance(obj, type):
        for base in obj.__mro__:
            mod = base.__module__ or ""
            if mod.startswith("tf_keras"):
                return "tf_keras"
            if mod == "keras" or mod.startswith("keras."):
                return "keras3"
    return "both"


def resolve_custom_objects(spec: Mapping[str, Any] | str | os.PathLike[str] | None) -> CustomObjects:
    """Turn ``custom_objects`` (None, a dict, or a path to a ``.py`` file) into :class:`CustomObjects`.

    Raises
    ------
    ModelLoadError
        The file is missing or fails to import, or ``CUSTOM_OBJECTS`` is not a dict.
    """
    out = CustomObjects()
    if spec is None:
        return out
    if isinstance(spec, Mapping):
        mapping: Mapping[str, Any] = spec
        out.source = "dict"
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        module = _import_file(path)
        mapping = getattr(module, "CUSTOM_OBJECTS", {})
        if not isinstance(mapping, Mapping):
            raise ModelLoadError(
                f"custom objects file {path}: CUSTOM_OBJECTS is a {type(mapping).__name__}, expected a dict "
                "{'ClassName': class}"
            )
        out.source = str(path)
    else:
        raise ModelLoadError(
            f"custom_objects is a {type(spec).__name__}; expected a dict or a path to a Python file"
        )
    for key, value in mapping.items():
        objs = value if isinstance(value, (tuple, list)) else (value,)
        for obj in objs:
            side = _belongs_to(obj)
            if side in ("tf_keras", "both"):
                out.tf_keras[str(key)] = obj
            if side in ("keras3", "both"):
                out.keras3[str(key)] = obj
    return out
