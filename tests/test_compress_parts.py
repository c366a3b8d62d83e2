"""The parts of ``edgelr compress``: distillation, QAT, TFLite conversion and validation, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from edgelr.errors import ConversionError, UsageError


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    b = load_digits()
    x = (b.images.astype(np.float32) / 16.0)[..., None]
    y = b.target.astype(np.int64)
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="module")
def cnn(tf_keras, digits):
    """A small CNN trained on digits for a few epochs (~95 % test accuracy)."""
    from tests.keras_util import small_cnn

    tf_keras.utils.set_random_seed(0)
    model = small_cnn(tf_keras, 32)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y, _, _ = digits
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return model


@pytest.mark.timeout(300)
def test_float32_tflite_matches_keras(cnn, digits):
    from edgelr.compress.convert import convert
    from edgelr.compress.evaluate import predict
    from edgelr.compress.validate import run_tflite

    _, _, xt, _ = digits
    res = convert(cnn, "float32")
    assert res.quantization == "none" and res.io_dtype == "float32" and not res.isolated
    out = run_tflite(res.content, xt)
    np.testing.assert_allclose(out, predict(cnn, xt), atol=1e-5)


@pytest.mark.timeout(300)
def test_int8_full_integer_has_int8_ops_and_runs(cnn, digits):
    from ai_edge_litert.interpreter import Interpreter

    from edgelr.compress.convert import convert
    from edgelr.compress.evaluate import predict
    from edgelr.compress.validate import validate_tflite

    x, _, xt, yt = digits
    res = convert(cnn, "int8", io_dtype="int8", representative=x[:200])
    it = Interpreter(model_content=res.content)
    it.allocate_tensors()
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert it.get_output_details()[0]["dtype"] == np.int8
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    compute = [op for op in ops if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(compute) == 3
    for op in compute:  # activations and weights int8, bias int32: really full-integer
        assert tensors[op["inputs"][0]]["dtype"] == np.int8
        assert tensors[op["inputs"][1]]["dtype"] == np.int8
        assert tensors[op["outputs"][0]]["dtype"] == np.int8
    ref = predict(cnn, xt)
    val = validate_tflite(res.content, xt, yt, reference=ref)
    keras_acc = 100.0 * np.mean(ref.argmax(-1) == yt)
    assert val.agreement >= 95.0
    assert abs(val.accuracy - keras_acc) <= 2.0
    assert val.size_bytes == len(res.content)
    assert val.ops.ops["CONV_2D"] == 1 and val.ops.ops["FULLY_CONNECTED"] == 2
    assert val.ops.custom_ops == []
    # XNNPACK takes the int8 conv and fully-connected nodes
    assert val.ops.delegated.get("CONV_2D") == 1 and val.ops.delegated.get("FULLY_CONNECTED") == 2
    assert val.ops.num_delegated + sum(val.ops.not_delegated.values()) == val.ops.num_nodes


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_float16_and_dynamic_are_smaller_and_close(cnn, digits):
    from edgelr.compress.convert import convert
    from edgelr.compress.evaluate import predict
    from edgelr.compress.validate import validate_tflite

    _, _, xt, yt = digits
    f32 = convert(cnn, "none").size_bytes
    ref = predict(cnn, xt)
    for q in ("float16", "dynamic"):
        res = convert(cnn, q, io_dtype="int8")  # io_dtype only applies to int8
        assert res.io_dtype == "float32"
        assert res.size_bytes < 0.75 * f32
        val = validate_tflite(res.content, xt, yt, reference=ref)
        assert val.input_dtype == "float32" and val.agreement >= 98.0


def test_bad_quantization_name():
    from edgelr.compress.convert import check_quantization

    with pytest.raises(UsageError, match="int4"):
        check_quantization("int4")
    assert check_quantization("float32") == "none"


def test_int8_without_representative_data_is_refused(cnn):
    from edgelr.compress.convert import convert

    with pytest.raises(ConversionError, match="representative"):
        convert(cnn, "int8")


@pytest.mark.timeout(300)
def test_distillation_loss_values(tf_keras):
    from edgelr.compress.distill import distillation_loss
    from edgelr.compress.evaluate import Task

    task = Task(True, 3, "probs")
    t = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    y = np.array([0, 2])
    ce = -np.mean(np.log([0.7, 0.8]))
    # student == teacher: the KL term is 0, only the weighted cross-entropy remains
    assert float(distillation_loss(t, t, y, task, 4.0, 0.5)) == pytest.approx(0.5 * ce, rel=1e-5)
    s = np.array([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]], np.float32)
    pt = t ** 0.5 / (t ** 0.5).sum(-1, keepdims=True)
    ps = s ** 0.5 / (s ** 0.5).sum(-1, keepdims=True)
    kl = np.mean(np.sum(pt * np.log(pt / ps), -1))
    assert float(distillation_loss(s, t, y, task, 2.0, 1.0)) == pytest.approx(4.0 * kl, rel=1e-4)


@pytest.mark.timeout(300)
def test_distillation_moves_student_towards_teacher(tf_keras, cnn, digits):
    from edgelr.compress.distill import DistillConfig, distill, teacher_outputs
    from edgelr.compress.evaluate import Task, predict

    x, y, xt, yt = digits
    tf_keras.utils.set_random_seed(1)
    inp = tf_keras.Input((8, 8, 1))
    h = tf_keras.layers.Flatten()(inp)
    h = tf_keras.layers.Dense(16, activation="relu")(h)
    student = tf_keras.Model(inp, tf_keras.layers.Dense(10, activation="softmax")(h))
    task = Task(True, 10, "probs")

    def kl_to_teacher() -> float:
        p, q = predict(cnn, xt), predict(student, xt)
        return float(np.mean(np.sum(p * (np.log(p + 1e-9) - np.log(q + 1e-9)), -1)))

    before = kl_to_teacher()
    t_out = teacher_outputs(cnn, x)
    res = distill(student, t_out, x, y, xt, yt, task,
                  DistillConfig(epochs=8, batch_size=32, learning_rate=1e-2, alpha=1.0, temperature=2.0, patience=8), progress=False)
    after = kl_to_teacher()
    assert after < 0.5 * before
    assert len(res.history) >= 1 and res.best_val is not None and res.best_val > res.initial_val


@pytest.mark.timeout(300)
def test_qat_lists_recurrent_layers_as_float(tf_keras):
    from edgelr.compress.qat import quantize_aware

    inp = tf_keras.Input((6, 4))
    h = tf_keras.layers.LSTM(8, name="lstm")(inp)
    h = tf_keras.layers.Dense(8, activation="relu", name="fc")(h)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3, activation="softmax", name="head")(h))
    before = [w.copy() for w in model.get_weights()]
    res = quantize_aware(model)
    assert res.applied, res.error
    assert res.quantized_layers == ["fc", "head"]
    assert res.float_layers == ["lstm"]
    assert "LSTM" in next(layer.reason for layer in res.layers if layer.name == "lstm")
    wrapped = [type(layer).__name__ for layer in res.model.layers]
    assert wrapped.count("QuantizeWrapperV2") == 2 and "LSTM" in wrapped
    # the QAT model owns its weights: training it does not touch the float model
    res.model.layers[-1].trainable_weights[0].assign_add(np.ones_like(res.model.layers[-1].trainable_weights[0]))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((4, 6, 4), np.float32)
    assert res.model.predict(x, verbose=0).shape == (4, 3)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lstm_int8_converts_in_child_process_with_batch_one(tf_keras):
    from edgelr.compress.convert import convert
    from edgelr.compress.validate import validate_tflite

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((10, 4))
    h = tf_keras.layers.LSTM(8)(inp)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3, activation="softmax")(h))
    x = np.random.default_rng(0).random((40, 10, 4), np.float32)
    res = convert(model, "int8", io_dtype="float32", representative=x)
    assert res.isolated and res.batch_size == 1
    val = validate_tflite(res.content, x, reference=model.predict(x, verbose=0))
    assert val.ops.ops.get("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1
    assert val.max_abs_diff < 0.05


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fused_lstm_state_does_not_leak_between_samples(tf_keras):
    """The fused LSTM op keeps its state in variable tensors: each sample must start from a zero state."""
    from edgelr.compress.convert import convert
    from edgelr.compress.validate import run_tflite

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((12, 3))
    h = tf_keras.layers.LSTM(16)(inp)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(4)(h))
    for w in model.weights:  # large weights: a leaked state would change the outputs a lot
        w.assign(w * 3.0)
    x = np.random.default_rng(1).normal(0, 2, (16, 12, 3)).astype(np.float32)
    out = run_tflite(convert(model, "none").content, x)
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-4)


def test_history_rows_of_a_compress_run(tmp_path):
    from edgelr.compress.outputs import append_history
    from edgelr.compress.result import CompressResult
    from edgelr.report.history import load

    summary = {"metric": "accuracy", "quantization": "int8",
               "original": {"params": 1000, "macs": 5000, "tflite_bytes": 4000, "tflite_score": 91.5},
               "compressed": {"params": 400, "macs": 2000, "tflite_bytes": 1500, "tflite_score": 90.25}}
    res = CompressResult(summary=summary, report={}, layers=None, model=None, tflite=b"", baseline_tflite=b"",
                         out_dir=None, budget_met=None, message="")
    append_history(str(tmp_path / "hist"), res, "cnn", "rpi4")
    frame = load(tmp_path / "hist", kinds=["compress"])
    got = {(r.model, r.metric): (r.value, r.unit) for r in frame.itertuples()}
    b = "cnn (baseline)"   # the names compress writes to names.json: bench picks them up
    assert got == {(b, "accuracy"): (91.5, "%"), (b, "model_size"): (4000.0, "bytes"),
                   (b, "params"): (1000.0, "count"), (b, "macs"): (5000.0, "count"),
                   ("cnn", "accuracy"): (90.25, "%"), ("cnn", "model_size"): (1500.0, "bytes"),
                   ("cnn", "params"): (400.0, "count"), ("cnn", "macs"): (2000.0, "count")}
    assert set(frame["target"]) == {"rpi4"} and set(frame["tool"]) == {"compress"}
