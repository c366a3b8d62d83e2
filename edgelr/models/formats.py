"""Detect which Keras (and which container) wrote a model file, without importing TensorFlow.

The loaders in :mod:`edgelr.models.load` dispatch on the result: files written by tf_keras load
directly, files written by Keras 3 go through :mod:`edgelr.models.translate`.

Formats (the values of :data:`FORMATS`):

``keras3-keras``
    A ``.keras`` zip whose ``metadata.json`` says ``keras_version`` 3.x.
``tf_keras-keras``
    A ``.keras`` zip written by tf_keras / Keras 2 (``keras_version`` 2.x).
``tf_keras-h5`` / ``keras3-h5``
    A whole-model HDF5 file (root attribute ``model_config``); the writer comes from the root
    attribute ``keras_version``.
``tf_keras-savedmodel``
    A SavedModel directory with ``keras_metadata.pb`` (written by tf_keras ``model.save(dir)``).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgelr.errors import ModelLoadError

FORMATS: tuple[str, ...] = (
    "keras3-keras",
    "tf_keras-keras",
    "keras3-h5",
    "tf_keras-h5",
    "tf_keras-savedmodel",
)

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class DetectedFormat:
    """What :func:`detect_format` found.

    Attributes
    ----------
    format:
        One of :data:`FORMATS`.
    keras_version:
        The Keras version recorded by the writer (``"3.15.1"``, ``"2.21.0"``), ``""`` if none recorded.
    path:
        The resolved path that was inspected.
    """

    format: str
    keras_version: str
    path: Path

    @property
    def is_keras3(self) -> bool:
        """True when Keras 3 wrote the file (it needs translating to tf_keras)."""
        return self.format.startswith("keras3-")


def _major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return 0


def _detect_zip(path: Path) -> DetectedFormat:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise ModelLoadError(
                    f"{path}: zip archive without config.json, not a Keras model file; "
                    "expected a .keras file written by model.save('model.keras')"
                )
            meta: dict[str, object] = {}
            if "metadata.json" in names:
                meta = json.loads(zf.read("metadata.json").decode("utf-8"))
            zf.read("config.json")  # CRC check: a truncated or corrupt archive fails here
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(
            f"{path}: corrupt or truncated .keras archive ({exc}); re-save the model with model.save()"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable metadata.json in .keras archive ({exc})") from None
    version = str(meta.get("keras_version", ""))
    fmt = "keras3-keras" if _major(version) >= 3 else "tf_keras-keras"
    return DetectedFormat(fmt, version, path)


def _detect_h5(path: Path) -> DetectedFormat:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if "model_config" not in attrs:
                what = "a weights-only HDF5 file" if ("layer_names" in attrs or "layers" in f) else "an HDF5 file"
                raise ModelLoadError(
                    f"{path}: {what} without a model architecture (no 'model_config'); "
                    "save the whole model with model.save('model.keras') or model.save('model.h5')"
                )
            version = attrs.get("keras_version", b"")
    except OSError as exc:
        raise ModelLoadError(f"{path}: corrupt or truncated HDF5 file ({exc})") from None
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    version = str(version)
    fmt = "keras3-h5" if _major(version) >= 3 else "tf_keras-h5"
    return DetectedFormat(fmt, version, path)


def _detect_dir(path: Path) -> DetectedFormat:
    has_pb = (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()
    if not has_pb:
        raise ModelLoadError(
            f"{path}: a directory without saved_model.pb, not a SavedModel; "
            "pass a .keras or .h5 file, or a directory written by tf_keras model.save(dir)"
        )
    if not (path / "keras_metadata.pb").is_file():
        raise ModelLoadError(
            f"{path}: a plain TensorFlow SavedModel without Keras metadata (no keras_metadata.pb; "
            "e.g. from tf.saved_model.save or Keras 3 model.export), which has no layers to compress; "
            "re-save the Keras model with model.save('model.keras') and pass that file"
        )
    return DetectedFormat("tf_keras-savedmodel", "", path)


def detect_format(path: str | os.PathLike[str]) -> DetectedFormat:
    """Find which Keras wrote ``path`` and in which container, reading only file headers.

    Parameters
    ----------
    path:
        A ``.keras`` or ``.h5`` file or a SavedModel directory.

    Returns
    -------
    DetectedFormat

    Raises
    ------
    ModelLoadError
        Missing path, a directory that is not a SavedModel, a plain SavedModel without Keras
        metadata, or a file that is neither a Keras zip nor a whole-model HDF5 file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file or directory; expected a .keras/.h5 model file or a SavedModel directory")
    if p.is_dir():
        return _detect_dir(p)
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelLoadError(f"{p}: cannot read model file ({exc.strerror})") from None
    if head.startswith(_ZIP_SIGNATURE) or zipfile.is_zipfile(p):
        return _detect_zip(p)
    if head == _HDF5_SIGNATURE:
        return _detect_h5(p)
    if p.suffix == ".keras":
        raise ModelLoadError(f"{p}: not a zip archive, so not a valid .keras file (corrupt or wrong file)")
    raise ModelLoadError(
        f"{p}: not a Keras model (neither a .keras zip nor an HDF5 file); "
        "expected a .keras/.h5 model file or a SavedModel directory"
    )
