"""Loading models: format detection, Keras 3 -> tf_keras translation, model summaries.

Nothing here imports TensorFlow at import time; see :mod:`edgelr.models.load`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model", "load_model_with_info", "model_info"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgelr.models import load

        return getattr(load, name)
    raise AttributeError(name)
