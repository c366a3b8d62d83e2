"""TFLite conversion of a tf_keras model: int8 full-integer, dynamic-range, float16, float32.

The model is traced into a concrete function with a fixed input signature. Recurrent models get a
batch size of 1 (a dynamic batch dimension makes ``tf.TensorListReserve`` fail and keeps the fused
``UNIDIRECTIONAL_SEQUENCE_LSTM`` op from being used); other models keep a dynamic batch dimension.

Risky conversions (full-integer quantization of a model with a recurrent layer: the converter has
segfaulted on ``WHILE`` loops) run in a child process on a SavedModel export, so a converter crash
becomes a :class:`~edgelr.errors.ConversionError` instead of killing the caller.

By default the output goes through :func:`strip_names`: the names of internal tensors (the converter
writes one long name per intermediate tensor, e.g. ``model/conv2d/BiasAdd;model/conv2d/Conv2D;...``),
subgraph names and the model description are dropped; input/output tensor names and the signature defs
are kept, so ``get_input_details()`` and ``get_signature_runner()`` work as before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgelr.errors import ConversionError, UsageError

QUANTIZATIONS = ("int8", "dynamic", "float16", "none")
IO_DTYPES = ("int8", "uint8", "float32")
_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


@dataclass
class ConversionResult:
    """A converted model.

    Attributes
    ----------
    content : bytes
        The ``.tflite`` flatbuffer.
    quantization : str
        ``int8`` | ``dynamic`` | ``float16`` | ``none`` (float32).
    io_dtype : str
        Dtype of the model's input and output tensors (``float32`` unless int8 with int8/uint8 I/O).
    batch_size : int or None
        Fixed batch size of the input signature (None = dynamic).
    isolated : bool
        True if the converter ran in a child process.
    seconds : float
        Wall time of the conversion, s.
    notes : list of str
        Fallbacks taken (e.g. int8 with float kernels for ops that have no int8 kernel) and the bytes saved
        by :func:`strip_names`.
    """

    content: bytes
    quantization: str
    io_dtype: str
    batch_size: int | None
    isolated: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return len(self.content)


def is_recurrent(model: Any) -> bool:
    """True if ``model`` (tf_keras) contains a recurrent layer at any nesting depth."""
    for layer in _walk(model):
        if type(layer).__name__ in _RECURRENT or hasattr(layer, "cell"):
            return True
    return False


def _walk(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", []):
        yield layer
        inner = getattr(layer, "layer", None)  # wrappers (QuantizeWrapper, TimeDistributed, Bidirectional)
        if inner is not None:
            yield inner
        if hasattr(layer, "layers"):
            yield from _walk(layer)


_STOCK_CELLS = ("LSTMCell", "GRUCell", "SimpleRNNCell")


def custom_cell_layers(model: Any) -> list[str]:
    """Names of recurrent layers whose cell is not a stock LSTM/GRU/SimpleRNN cell (they convert to WHILE loops)."""
    names = []
    for layer in _walk(model):
        cell = getattr(layer, "cell", None)
        if cell is not None and type(cell).__name__ not in _STOCK_CELLS and not getattr(layer, "unroll", False):
            names.append(layer.name)
    return names


def unrolled_copy(model: Any, max_steps: int = 128) -> Any:
    """A copy of ``model`` with ``unroll=True`` on every recurrent layer (weights copied).

    Full-integer conversion of an RNN with a custom cell crashes the converter on the ``WHILE`` loop; the
    unrolled graph (fixed, short sequence length) converts to plain builtin ops.

    Raises
    ------
    ConversionError
        Unknown or too long (> ``max_steps``) sequence length.
    """
    from edgelr.tfcompat import keras2

    k2 = keras2()
    steps = model.inputs[0].shape[1] if len(model.inputs[0].shape) >= 3 else None
    if steps is None or int(steps) > max_steps:
        raise ConversionError(f"cannot unroll the recurrent layers of {model.name!r}: sequence length {steps} "
                              f"(need a fixed length <= {max_steps}); use --quantize dynamic")
    if any(type(getattr(layer, "cell", None)).__name__.startswith("LowRank") for layer in _walk(model)):
        import edgelr.rewrite.cells  # noqa: F401 - registers the low-rank cells for from_config

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if "unroll" in config:
            config["unroll"] = True
        return type(layer).from_config(config)

    import contextlib

    scope: Any = contextlib.nullcontext()
    if any(type(layer).__name__.startswith("Quantize") for layer in model.layers):
        import tensorflow_model_optimization as tfmot

        scope = tfmot.quantization.keras.quantize_scope()
    with scope:
        copy = k2.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def check_quantization(quantization: str, io_dtype: str = "float32") -> str:
    """Normalise and check a quantization name (``float32`` is an alias of ``none``)."""
    q = "none" if quantization in ("float32", "fp32") else quantization
    if q not in QUANTIZATIONS:
        raise UsageError(f"quantization={quantization!r}; expected one of {list(QUANTIZATIONS)} (or float32)")
    if io_dtype not in IO_DTYPES:
        raise UsageError(f"io_dtype={io_dtype!r}; expected one of {list(IO_DTYPES)}")
    return q


def _input_spec(model: Any, batch_size: int | None) -> Any:
    from edgelr.tfcompat import tf

    tfm = tf()
    if len(model.inputs) != 1:
        raise ConversionError(f"model {model.name!r} has {len(model.inputs)} inputs; edgelr converts "
                              "single-input models only")
    shape = list(model.inputs[0].shape)
    return tfm.TensorSpec([batch_size, *shape[1:]], model.inputs[0].dtype, name="input")


def _concrete(model: Any, batch_size: int | None) -> Any:
    from edgelr.tfcompat import tf

    tfm = tf()
    fn = tfm.function(lambda x: model(x, training=False))
    return fn.get_concrete_function(_input_spec(model, batch_size))


def _configure(converter: Any, quantization: str, io_dtype: str, representative: np.ndarray | None,
               batch_size: int | None, strict_int8: bool) -> None:
    from edgelr.tfcompat import tf

    tfm = tf()
    if quantization == "none":
        return
    converter.optimizations = [tfm.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tfm.float16]
    elif quantization == "int8":
        if representative is None or len(representative) == 0:
            raise ConversionError("int8 full-integer conversion needs a representative dataset; pass "
                                  "training samples")
        rep = np.asarray(representative, dtype=np.float32)
        step = batch_size or 1

        def gen() -> Iterator[list[np.ndarray]]:
            for i in range(0, len(rep) - step + 1, step):
                yield [rep[i:i + step]]

        converter.representative_dataset = gen
        if strict_int8:
            converter.target_spec.supported_ops = [tfm.lite.OpsSet.TFLITE_BUILTINS_INT8]
        else:
            converter.target_spec.supported_ops = [tfm.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tfm.lite.OpsSet.TFLITE_BUILTINS]
        if io_dtype in ("int8", "uint8"):
            dt = tfm.int8 if io_dtype == "int8" else tfm.uint8
            converter.inference_input_type = dt
            converter.inference_output_type = dt


def _run_converter(make: Any, quantization: str, io_dtype: str, representative: np.ndarray | None,
                   batch_size: int | None) -> tuple[bytes, list[str]]:
    """Convert with strict int8 first, then int8 with float fallback kernels if that fails."""
    notes: list[str] = []
    attempts = [True, False] if quantization == "int8" else [True]
    last: Exception | None = None
    for strict in attempts:
        converter = make()
        _configure(converter, quantization, io_dtype, representative, batch_size, strict)
        try:
            return bytes(converter.convert()), notes
        except Exception as exc:  # noqa: BLE001 - the converter raises many unrelated types
            last = exc
            if strict and quantization == "int8":
                notes.append(f"strict int8 conversion failed ({str(exc).splitlines()[0][:200]}); "
                             "converted with float fallback kernels for ops without int8 kernels")
    raise ConversionError(f"TFLite conversion ({quantization}) failed: {str(last).splitlines()[0][:300]}")


_TFLITE_IDENTIFIER = b"TFL3"


def strip_names(content: bytes) -> bytes:
    """``content`` without the strings the runtime does not need.

    Clears the model description, every subgraph's name and the names of all tensors except each
    subgraph's input and output tensors (what ``get_input_details()[i]["name"]`` shows). Unlike
    ``tensorflow.lite.tools.flatbuffer_utils.strip_strings`` the signature defs are kept (they refer to
    tensors by index), so ``Interpreter.get_signature_runner()`` keeps working. Operator codes, custom op
    names, metadata and buffers are untouched; the model computes exactly the same outputs.

    Parameters
    ----------
    content : bytes
        A ``.tflite`` flatbuffer.

    Returns
    -------
    bytes
        The re-serialized flatbuffer, usually a few % smaller (more for models with many small tensors).

    Raises
    ------
    ConversionError
        ``content`` is not a ``.tflite`` flatbuffer.
    """
    data = bytes(content) if isinstance(content, (bytes, bytearray, memoryview)) else None
    if data is None:
        raise ConversionError(f"strip_names: got {type(content).__name__}; expected the bytes of a .tflite model")
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise ConversionError(f"strip_names: got {len(data)} bytes starting {data[:8]!r}, not a .tflite flatbuffer "
                              f"(expected the file identifier {_TFLITE_IDENTIFIER!r} at bytes 4-8)")
    from edgelr.tfcompat import tf

    tf()  # sets TF_USE_LEGACY_KERAS and silences the import chatter before the tensorflow package loads
    from tensorflow.lite.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer raises struct/Index/Type errors
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ConversionError(f"strip_names: cannot parse the .tflite flatbuffer ({type(exc).__name__}: "
                              f"{first})") from None
    model.description = None
    for subgraph in model.subgraphs or []:
        subgraph.name = None
        keep = {int(i) for i in list(subgraph.inputs if subgraph.inputs is not None else [])
                + list(subgraph.outputs if subgraph.outputs is not None else [])}
        for index, tensor in enumerate(subgraph.tensors or []):
            if index not in keep:
                tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert(model: Any, quantization: str = "int8", *, io_dtype: str = "float32",
            representative: np.ndarray | None = None, batch_size: int | None = None,
            isolate: bool | None = None, timeout: float = 900.0, strip: bool = True) -> ConversionResult:
    """Convert a tf_keras model to a ``.tflite`` flatbuffer.

    Parameters
    ----------
    model : tf_keras.Model
        A single-input model (may be a tfmot QAT model). Not modified.
    quantization : str
        ``int8`` (full-integer, needs ``representative``), ``dynamic``, ``float16``, ``none``/``float32``.
    io_dtype : str
        For ``int8``: ``int8``/``uint8`` quantized model I/O or ``float32`` I/O. Ignored otherwise.
    representative : ndarray, shape (n, *input_shape[1:])
        Calibration samples drawn from the training data (100-500 is plenty).
    batch_size : int, optional
        Fixed batch size of the signature; default 1 for recurrent models, dynamic otherwise.
    isolate : bool, optional
        Run the converter in a child process; default: only for int8 of recurrent models.
    timeout : float
        Child process timeout, s.
    strip : bool
        Drop internal tensor names, subgraph names and the description (:func:`strip_names`); False keeps
        them (e.g. to read the graph in Netron).

    Returns
    -------
    ConversionResult

    Raises
    ------
    UsageError
        Unknown ``quantization`` or ``io_dtype``.
    ConversionError
        The converter failed, crashed or timed out.
    """
    q = check_quantization(quantization, io_dtype)
    io = io_dtype if q == "int8" else "float32"
    recurrent = is_recurrent(model)
    if batch_size is None and recurrent:
        batch_size = 1
    if isolate is None:
        isolate = recurrent and q == "int8"
    t0 = time.perf_counter()
    pre_notes: list[str] = []
    if q == "int8" and custom_cell_layers(model):
        names = custom_cell_layers(model)
        model = unrolled_copy(model)
        pre_notes.append(f"recurrent layer(s) {names} with custom cells unrolled for full-integer conversion "
                         "(the converter crashes on their WHILE loop)")
    if isolate:
        content, notes = _convert_isolated(model, q, io, representative, batch_size, timeout)
    else:
        from edgelr.tfcompat import tf

        tfm = tf()
        conc = _concrete(model, batch_size)
        content, notes = _run_converter(lambda: tfm.lite.TFLiteConverter.from_concrete_functions([conc], model),
                                        q, io, representative, batch_size)
    if strip:
        before = len(content)
        content = strip_names(content)
        notes.append(f"tensor names stripped ({before - len(content):,} bytes saved)")
    return ConversionResult(content=content, quantization=q, io_dtype=io, batch_size=batch_size,
                            isolated=bool(isolate), seconds=time.perf_counter() - t0, notes=pre_notes + notes)


def _convert_isolated(model: Any, quantization: str, io_dtype: str, representative: np.ndarray | None,
                      batch_size: int | None, timeout: float) -> tuple[bytes, list[str]]:
    from edgelr.tfcompat import tf

    tfm = tf()
    with tempfile.TemporaryDirectory(prefix="edgelr-convert-") as tmp:
        saved = Path(tmp) / "saved_model"
        module = tfm.Module()
        module.model = model
        module.serve = tfm.function(lambda x: {"output": model(x, training=False)},
                                    input_signature=[_input_spec(model, batch_size)])
        tfm.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
        rep_path = Path(tmp) / "rep.npy"
        if representative is not None:
            np.save(rep_path, np.asarray(representative, dtype=np.float32))
        out = Path(tmp) / "model.tflite"
        meta = Path(tmp) / "meta.json"
        cmd = [sys.executable, "-m", "edgelr.compress.convert", "--saved-model", str(saved), "--out", str(out),
               "--quantization", quantization, "--io-dtype", io_dtype, "--meta", str(meta),
               "--batch-size", str(batch_size or 0)]
        if representative is not None:
            cmd += ["--representative", str(rep_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
        except subprocess.TimeoutExpired:
            raise ConversionError(f"TFLite conversion ({quantization}) did not finish in {timeout:.0f} s; "
                                  "try --quantize dynamic") from None
        if proc.returncode != 0 or not out.exists():
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
            how = f"crashed with signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
            raise ConversionError(f"TFLite conversion ({quantization}) in a child process {how}: {tail[0][:300]}; "
                                  "try --quantize dynamic or float16")
        notes = json.loads(meta.read_text()).get("notes", []) if meta.exists() else []
        return out.read_bytes(), notes


def _main(argv: list[str] | None = None) -> int:
    """Child-process entry: convert a SavedModel (see :func:`_convert_isolated`)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--saved-model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quantization", required=True, choices=QUANTIZATIONS)
    p.add_argument("--io-dtype", default="float32", choices=IO_DTYPES)
    p.add_argument("--representative")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--meta")
    a = p.parse_args(argv)
    from edgelr.tfcompat import tf

    tfm = tf()
    rep = np.load(a.representative) if a.representative else None
    content, notes = _run_converter(lambda: tfm.lite.TFLiteConverter.from_saved_model(a.saved_model),
                                    a.quantization, a.io_dtype, rep, a.batch_size or None)
    Path(a.out).write_bytes(content)
    if a.meta:
        Path(a.meta).write_text(json.dumps({"notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
