"""The one place edgelr imports TensorFlow.

tfmot only works with Keras 2 (``tf_keras``), so ``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is
first imported: ``tf.keras`` is then tf_keras. Keras 3 (``import keras``) stays importable beside it and
is used only to read models saved by Keras 3 (see :mod:`edgelr.models.translate`).

Import these lazily (inside functions), never at module top level of code that ``edgelr --help``,
``edgelr bench`` or the device agents import.
"""

from __future__ import annotations

import os
from types import ModuleType

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tf() -> ModuleType:
    """The ``tensorflow`` module (with tf.keras == tf_keras)."""
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow

    return tensorflow


def keras2() -> ModuleType:
    """``tf_keras`` (Keras 2), the Keras edgelr builds, trains and quantizes models with."""
    tf()
    import tf_keras

    return tf_keras


def keras3() -> ModuleType:
    """Keras 3, only for reading files Keras 3 saved."""
    tf()
    import keras

    return keras
