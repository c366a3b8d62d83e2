"""``strip_names``: smaller ``.tflite`` files with the same outputs, I/O names and signatures."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgelr.compress.validate import run_tflite
from edgelr.errors import ConversionError

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cnn() -> Any:
    """A small untrained CNN (conv, pooling, two Dense layers); weights from a fixed seed."""
    from edgelr.tfcompat import keras2

    k2 = keras2()
    from tests.keras_util import small_cnn

    k2.utils.set_random_seed(0)
    return small_cnn(k2, 16)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).random((64, 8, 8, 1), np.float32)


def _interpreter(content: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    it.allocate_tensors()
    return it


@pytest.mark.parametrize("quantization,io_dtype", [("none", "float32"), ("int8", "int8")])
def test_stripped_file_is_smaller_and_behaves_the_same(cnn: Any, x: np.ndarray, quantization: str,
                                                       io_dtype: str) -> None:
    from edgelr.compress.convert import convert

    stripped = convert(cnn, quantization, io_dtype=io_dtype, representative=x, strip=True)
    kept = convert(cnn, quantization, io_dtype=io_dtype, representative=x, strip=False)
    saved = kept.size_bytes - stripped.size_bytes
    assert saved > 0
    assert f"tensor names stripped ({saved:,} bytes saved)" in stripped.notes
    assert not any("stripped" in n for n in kept.notes)
    assert stripped.io_dtype == kept.io_dtype == io_dtype

    # bit-identical outputs
    np.testing.assert_array_equal(run_tflite(stripped.content, x), run_tflite(kept.content, x))

    a, b = _interpreter(stripped.content), _interpreter(kept.content)
    names = lambda ds: [(d["name"], d["index"]) for d in ds]  # noqa: E731
    assert names(a.get_input_details()) == names(b.get_input_details())
    assert names(a.get_output_details()) == names(b.get_output_details())
    assert all(d["name"] for d in a.get_input_details() + a.get_output_details())
    # every other tensor lost its name; the unstripped file has them all
    io = {d["index"] for d in a.get_input_details() + a.get_output_details()}
    internal = [d for d in a.get_tensor_details() if d["index"] not in io]
    assert internal and all(d["name"] == "" for d in internal)
    assert all(d["name"] for d in b.get_tensor_details())

    # signatures survive (unlike flatbuffer_utils.strip_strings) and their runner works
    assert a.get_signature_list() == b.get_signature_list() and a.get_signature_list()
    key = next(iter(a.get_signature_list()))
    run_a, run_b = a.get_signature_runner(key), b.get_signature_runner(key)
    in_name = a.get_signature_list()[key]["inputs"][0]
    sample = _interpreter(stripped.content).get_input_details()[0]
    value = x[:1] if sample["dtype"] == np.float32 else np.zeros((1, 8, 8, 1), np.int8)
    out_a, out_b = run_a(**{in_name: value}), run_b(**{in_name: value})
    assert out_a.keys() == out_b.keys()
    for k in out_a:
        np.testing.assert_array_equal(out_a[k], out_b[k])


def test_strip_names_is_idempotent_and_keeps_io_names(cnn: Any) -> None:
    from edgelr.compress.convert import convert, strip_names

    kept = convert(cnn, "none", strip=False).content
    once = strip_names(kept)
    assert len(once) < len(kept)
    assert strip_names(once) == once


@pytest.mark.parametrize("content", [b"junk", b"", b"\x00\x00\x00\x00TFL3" + b"\xff" * 24])
def test_strip_names_refuses_bytes_that_are_not_tflite(content: bytes) -> None:
    from edgelr.compress.convert import strip_names

    with pytest.raises(ConversionError) as info:
        strip_names(content)
    message = str(info.value)
    assert "\n" not in message and "strip_names" in message
    assert "not a .tflite flatbuffer" in message or "cannot parse" in message


def test_strip_names_refuses_non_bytes() -> None:
    from edgelr.compress.convert import strip_names

    with pytest.raises(ConversionError, match="got str"):
        strip_names("model.tflite")  # type: ignore[arg-type]
