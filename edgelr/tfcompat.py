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
from typing import Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not os.path.exists("/dev/nvidia0"):
    # No GPU here: skip CUDA probing (it prints cuInit errors on stderr at first use).
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

# What TensorFlow's C++ side prints on stderr before logging is configured, on every import.
_IMPORT_NOISE = ("absl::InitializeLog", "cudart_stub.cc", "cuda_platform.cc", "cuda_executor.cc",
                 "This TensorFlow binary is optimized", "To enable the following instructions",
                 "oneDNN custom operations", "Unable to register cu", "computation placer already registered")


def _import_quietly(name: str, after: "Callable[[ModuleType], object] | None" = None) -> ModuleType:
    """Import ``name`` with the C++ start-up chatter filtered out of stderr (other lines are kept)."""
    import importlib
    import sys
    import tempfile

    if name in sys.modules:
        return sys.modules[name]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            module = importlib.import_module(name)
            if after is not None:
                after(module)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not any(noise in line for noise in _IMPORT_NOISE):
                    sys.stderr.write(line)
    return module


def tf() -> ModuleType:
    """The ``tensorflow`` module (with tf.keras == tf_keras)."""
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # Device discovery (which probes CUDA and logs cuInit errors) runs inside the quiet window too.
    return _import_quietly("tensorflow", after=lambda m: m.config.list_physical_devices())


def keras2() -> ModuleType:
    """``tf_keras`` (Keras 2), the Keras edgelr builds, trains and quantizes models with."""
    tf()
    return _import_quietly("tf_keras")


def keras3() -> ModuleType:
    """Keras 3, only for reading files Keras 3 saved."""
    tf()
    return _import_quietly("keras")
