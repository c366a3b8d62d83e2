"""edgelr: low-rank compression, TFLite conversion and on-device benchmarking of Keras models.

Heavy parts (TensorFlow) are imported lazily: ``import edgelr`` is cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["load_model", "factorize_model", "__version__"]


def load_model(path: Any, custom_objects: Any = None) -> Any:
    """Load a Keras model file or SavedModel as a tf_keras model (see :mod:`edgelr.models.load`)."""
    from edgelr.models.load import load_model as _load

    return _load(path, custom_objects=custom_objects)


def factorize_model(model: Any, **kwargs: Any) -> Any:
    """Factorize a tf_keras model's layers; returns ``(new_model, report)`` (see :mod:`edgelr.rewrite`)."""
    from edgelr.rewrite import factorize_model as _factorize

    return _factorize(model, **kwargs)
