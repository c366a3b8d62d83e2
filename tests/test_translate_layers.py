"""Keras 3 models saved to .keras/.h5 load through edgelr.load_model as equivalent tf_keras models."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgelr.errors import ModelLoadError
from tests.keras_util import perturb_batchnorm

pytestmark = pytest.mark.timeout(300)

ATOL = 1e-5


def _as_list(y: Any) -> list[np.ndarray]:
    if isinstance(y, dict):
        return [np.asarray(y[k]) for k in sorted(y)]
    if isinstance(y, (list, tuple)):
        return [np.asarray(v) for v in y]
    return [np.asarray(y)]


def _roundtrip(model: Any, x: Any, path: Path, **load_kwargs: Any) -> tuple[Any, Any]:
    """Save a Keras 3 model, load it with edgelr and assert same outputs and parameter count."""
    from edgelr.models.load import load_model_with_info
    from edgelr.tfcompat import keras2

    model.save(path)
    loaded, info = load_model_with_info(path, **load_kwargs)
    assert isinstance(loaded, keras2().Model)
    assert info.translated is True
    assert loaded.count_params() == model.count_params()
    expected = _as_list(model(x, training=False))
    got = _as_list(loaded(x, training=False))
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, atol=ATOL, rtol=0)
    return loaded, info


def test_conv_stack_with_batchnorm_pooling_and_merges(keras3: Any, tmp_path: Path) -> None:
    L = keras3.layers
    rng = np.random.default_rng(0)
    inp = keras3.Input((16, 16, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.BatchNormalization()(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = L.ReLU(max_value=6.0)(x)
    x = L.SeparableConv2D(8, 3, activation="tanh")(x)
    a = L.MaxPooling2D()(x)
    b = L.AveragePooling2D(2)(x)
    x = L.Add()([a, b])
    x = L.Concatenate()([x, a])
    x = L.Dropout(0.4)(x)
    g = L.GlobalAveragePooling2D()(x)
    m = L.Flatten()(L.GlobalMaxPooling2D(keepdims=True)(x))
    x = L.Concatenate()([g, m])
    x = L.Dense(12, activation="swish")(x)
    x = L.Reshape((3, 4))(x)
    x = L.LeakyReLU(negative_slope=0.1)(x)
    x = L.Activation("softmax")(x)
    model = keras3.Model(inp, x)
    assert perturb_batchnorm(model, rng) == 1
    xs = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    _roundtrip(model, xs, tmp_path / "conv.keras")
    _roundtrip(model, xs, tmp_path / "conv.h5")


def test_batchnorm_stats_after_a_training_step(keras3: Any, tmp_path: Path) -> None:
    L = keras3.layers
    rng = np.random.default_rng(1)
    model = keras3.Sequential(
        [keras3.Input((6,)), L.Dense(8), L.BatchNormalization(momentum=0.5), L.Activation("relu"), L.Dense(2)]
    )
    model.compile(optimizer="sgd", loss="mse")
    x = rng.normal(3.0, 2.0, (32, 6)).astype("float32")
    model.fit(x, rng.normal(size=(32, 2)).astype("float32"), epochs=2, verbose=0)
    moving_mean = model.layers[1].get_weights()[2]
    assert np.abs(moving_mean).max() > 0.1  # the step really moved the statistics
    _roundtrip(model, x, tmp_path / "bn.keras")


def test_embedding_lstm_gru_sequential(keras3: Any, tmp_path: Path) -> None:
    L = keras3.layers
    rng = np.random.default_rng(2)
    model = keras3.Sequential(
        [
            keras3.Input((10,), dtype="int32"),
            L.Embedding(50, 8),
            L.LSTM(6, return_sequences=True),
            L.GRU(5, return_sequences=True),
            L.GRU(4, reset_after=False),
            L.Dense(3, activation="softmax"),
        ]
    )
    xs = rng.integers(0, 50, (4, 10)).astype("int32")
    loaded, _ = _roundtrip(model, xs, tmp_path / "rnn.keras")
    assert [type(la).__name__ for la in loaded.layers] == ["Embedding", "LSTM", "GRU", "GRU", "Dense"]


def test_wrappers_bidirectional_and_time_distributed(keras3: Any, tmp_path: Path) -> None:
    L = keras3.layers
    rng = np.random.default_rng(3)
    inp = keras3.Input((7, 5))
    x = L.Bidirectional(L.LSTM(4, return_sequences=True))(inp)
    x = L.TimeDistributed(L.Dense(3, activation="relu"))(x)
    x = L.Bidirectional(L.GRU(3), merge_mode="sum")(x)
    model = keras3.Model(inp, x)
    _roundtrip(model, rng.normal(size=(2, 7, 5)).astype("float32"), tmp_path / "wrap.keras")


def test_nested_model_shared_by_two_inputs_and_multi_output(keras3: Any, tmp_path: Path) -> None:
    L = keras3.layers
    rng = np.random.default_rng(4)
    inner_in = keras3.Input((8,))
    h = L.Dense(6, activation="relu", kernel_regularizer=keras3.regularizers.L2(1e-3))(inner_in)
    h = L.BatchNormalization()(h)
    inner = keras3.Model(inner_in, L.Dense(4)(h), name="encoder")
    seq = keras3.Sequential([keras3.Input((4,)), L.Dense(4, activation="sigmoid")], name="head")
    a = keras3.Input((8,), name="a")
    b = keras3.Input((8,), name="b")
    za, zb = inner(a), inner(b)
    s = L.Add(name="sum")([za, zb])
    c = L.Concatenate(name="cat")([za, seq(s)])
    model = keras3.Model([a, b], [s, L.Dense(2, name="out2")(c)])
    perturb_batchnorm(model, rng)
    xs = [rng.normal(size=(3, 8)).astype("float32"), rng.normal(size=(3, 8)).astype("float32")]
    loaded, _ = _roundtrip(model, xs, tmp_path / "nested.keras")
    assert {la.name for la in loaded.layers} >= {"encoder", "head", "sum", "cat", "out2"}
    assert len(loaded.inputs) == 2 and len(loaded.outputs) == 2
    # the shared encoder is one layer with one set of weights
    assert loaded.get_layer("encoder").count_params() == inner.count_params()


def test_sequential_inside_sequential_and_dict_inputs(keras3: Any, tmp_path: Path) -> None:
    L = keras3.layers
    rng = np.random.default_rng(6)
    block = keras3.Sequential([L.Dense(5, activation="relu"), L.Dense(3)], name="block")
    outer = keras3.Sequential([keras3.Input((4,)), block, L.Dense(2)], name="outer")
    _roundtrip(outer, rng.normal(size=(3, 4)).astype("float32"), tmp_path / "seqseq.keras")

    p = keras3.Input((3,), name="p")
    q = keras3.Input((2,), name="q")
    out = L.Dense(1, name="y")(L.Concatenate()([p, q]))
    model = keras3.Model({"p": p, "q": q}, out)
    xs = {"p": rng.normal(size=(2, 3)).astype("float32"), "q": rng.normal(size=(2, 2)).astype("float32")}
    _roundtrip(model, xs, tmp_path / "dict.keras")


def test_lambda_layer_is_a_clear_error(keras3: Any, tmp_path: Path) -> None:
    import edgelr

    model = keras3.Sequential([keras3.Input((3,)), keras3.layers.Lambda(lambda t: t * 2.0)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelLoadError) as err:
        edgelr.load_model(tmp_path / "lambda.keras")
    msg = str(err.value)
    assert "Lambda" in msg and "--custom-objects" in msg and "\n" not in msg


def test_more_layer_kinds(keras3: Any, tmp_path: Path) -> None:
    """Adapted Normalization, transposed/1-D/grouped convs, attention, padding/cropping, PReLU, SimpleRNN."""
    L = keras3.layers
    rng = np.random.default_rng(7)
    x2 = rng.normal(2.0, 3.0, size=(2, 12, 12, 4)).astype("float32")
    norm = L.Normalization()
    norm.adapt(x2)
    image = keras3.Sequential(
        [
            keras3.Input((12, 12, 4)),
            norm,
            L.ZeroPadding2D(1),
            L.Conv2D(8, 3, groups=2, kernel_regularizer="l2", activity_regularizer=keras3.regularizers.L1(0.01)),
            L.Conv2DTranspose(4, 3, strides=2),
            L.UpSampling2D(),
            L.PReLU(),
            L.LayerNormalization(),
            L.Cropping2D(1),
            L.SpatialDropout2D(0.1),
            L.GaussianNoise(0.1),
            L.ELU(),
            L.Permute((3, 1, 2)),
            L.Softmax(),
        ]
    )
    _roundtrip(image, x2, tmp_path / "image.keras")

    x1 = rng.normal(size=(2, 10, 4)).astype("float32")
    seq_in = keras3.Input((10, 4))
    h = L.Conv1D(5, 3, padding="causal", dilation_rate=2)(seq_in)
    h = L.MultiHeadAttention(num_heads=2, key_dim=3)(h, h)
    h = L.Attention()([h, h])
    h = L.SimpleRNN(3, return_sequences=True)(L.MaxPooling1D()(h))
    h = L.Dense(2, kernel_constraint=keras3.constraints.MaxNorm(2.0))(L.GlobalAveragePooling1D()(h))
    _roundtrip(keras3.Model(seq_in, h), x1, tmp_path / "seq.keras")


def test_rnn_cells_built_sequential_and_nested_h5(keras3: Any, tmp_path: Path) -> None:
    L = keras3.layers
    rng = np.random.default_rng(8)
    x1 = rng.normal(size=(2, 10, 4)).astype("float32")
    cells = keras3.Sequential([keras3.Input((10, 4)), L.RNN(L.LSTMCell(3), return_sequences=True),
                               L.RNN([L.GRUCell(3), L.LSTMCell(2)])])
    _roundtrip(cells, x1, tmp_path / "cells.keras")
    built = keras3.Sequential([L.Dense(3), L.Dense(2)])  # no Input: built by build()
    built.build((None, 4))
    _roundtrip(built, rng.normal(size=(2, 4)).astype("float32"), tmp_path / "built.keras")
    inp = keras3.Input((4,))
    inner = keras3.Sequential([keras3.Input((4,)), L.Dense(3, activation="hard_silu")], name="inner")
    nested = keras3.Model(inp, L.Dense(2)(inner(inp)))
    _roundtrip(nested, rng.normal(size=(2, 4)).astype("float32"), tmp_path / "nested.h5")


def test_layers_private_to_keras_applications(keras3: Any, tmp_path: Path) -> None:
    """ConvNeXt's LayerScale/StochasticDepth and InceptionResNet's CustomScaleLayer map to tf_keras' twins."""
    from keras.src.applications.convnext import LayerScale, StochasticDepth
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    L = keras3.layers
    inp = keras3.Input((5, 5, 4))
    h = LayerScale(0.5, 4, name="ls")(L.Conv2D(4, 1)(inp))
    h = StochasticDepth(0.1)(h)
    model = keras3.Model(inp, CustomScaleLayer(0.3)([inp, h]))
    model.get_layer("ls").set_weights([np.array([1.0, -2.0, 3.0, 0.5], "float32")])
    x = np.random.default_rng(9).normal(size=(2, 5, 5, 4)).astype("float32")
    _roundtrip(model, x, tmp_path / "apps.keras")


def test_frozen_nested_model_stays_frozen(keras3: Any, tmp_path: Path) -> None:
    L = keras3.layers
    base = keras3.Sequential([keras3.Input((4,)), L.Dense(5), L.BatchNormalization()], name="base")
    base.trainable = False
    inp = keras3.Input((4,))
    model = keras3.Model(inp, L.Dense(2, name="head")(base(inp)))
    loaded, _ = _roundtrip(model, np.ones((2, 4), "float32"), tmp_path / "frozen.keras")
    assert len(loaded.trainable_weights) == len(model.trainable_weights) == 2  # only the head
    assert len(loaded.non_trainable_weights) == len(model.non_trainable_weights) == 6
    assert not any(layer.trainable for layer in loaded.get_layer("base").layers)


def test_keras3_activation_semantics_are_kept(keras3: Any, tmp_path: Path) -> None:
    """hard_sigmoid is relu6(x+3)/6 in Keras 3 but 0.2x+0.5 in tf_keras: the translation keeps Keras 3's."""
    L = keras3.layers
    inp = keras3.Input((101,))
    outs = [L.Activation(name)(inp) for name in ("hard_sigmoid", "hard_silu", "gelu", "relu6", "elu")]
    model = keras3.Model(inp, outs)
    xs = np.linspace(-6, 6, 101, dtype="float32")[None]
    loaded, _ = _roundtrip(model, xs, tmp_path / "act.keras")
    got = np.asarray(loaded(xs)[0])
    assert got[0, 50] == pytest.approx(0.5) and got[0, 55] == pytest.approx(0.6 / 6 + 0.5, abs=1e-6)


def test_model_loaded_twice_and_saved_again_by_tf_keras(keras3: Any, tf_keras: Any, tmp_path: Path) -> None:
    import edgelr

    L = keras3.layers
    model = keras3.Sequential([keras3.Input((4,)), L.Dense(3, activation="hard_sigmoid")])
    model.save(tmp_path / "m.keras")
    first = edgelr.load_model(tmp_path / "m.keras")
    second = edgelr.load_model(str(tmp_path / "m.keras"))
    x = np.ones((1, 4), "float32")
    np.testing.assert_array_equal(np.asarray(first(x)), np.asarray(second(x)))
    first.save(tmp_path / "again.keras")  # a translated model is a normal tf_keras model
    again, info = __import__("edgelr.models.load", fromlist=["x"]).load_model_with_info(tmp_path / "again.keras")
    assert info.format == "tf_keras-keras" and info.translated is False
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), atol=ATOL)


# ------------------------------------------------------------------------------------------------
# Custom layers and things that cannot be translated

_CUSTOM_MODULE = textwrap.dedent(
    '''
    import keras
    import tf_keras


    @keras.saving.register_keras_serializable(package="demo")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}


    class TfScale(tf_keras.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    '''
)


@pytest.fixture(scope="module")
def custom_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("custom") / "custom_layers.py"
    path.write_text(_CUSTOM_MODULE + "CUSTOM_OBJECTS = {'Scale': TfScale}\n")
    return path


def _custom_model(keras: Any, module_path: Path) -> Any:
    from edgelr.models.custom_objects import _import_file

    mod = _import_file(module_path)
    L = keras.layers
    inp = keras.Input((5,))
    out = L.Dense(3)(mod.Scale(3.0, name="scale")(inp))
    model = keras.Model(inp, out)
    model.get_layer("scale").set_weights([np.arange(5, dtype="float32")])
    return model


def test_custom_layer_without_tf_keras_version_is_one_clear_error(
    keras3: Any, custom_module: Path, tmp_path: Path
) -> None:
    import edgelr

    model = _custom_model(keras3, custom_module)
    model.save(tmp_path / "custom.keras")
    with pytest.raises(ModelLoadError) as err:
        edgelr.load_model(tmp_path / "custom.keras")
    msg = str(err.value)
    assert "Scale" in msg and "--custom-objects" in msg and "\n" not in msg


def test_custom_layer_from_module_file(keras3: Any, custom_module: Path, tmp_path: Path) -> None:
    model = _custom_model(keras3, custom_module)
    xs = np.random.default_rng(5).normal(size=(2, 5)).astype("float32")
    loaded, _ = _roundtrip(model, xs, tmp_path / "custom.keras", custom_objects=custom_module)
    assert type(loaded.get_layer("scale")).__name__ == "TfScale"
    assert loaded.get_layer("scale").factor == 3.0


def test_custom_layer_from_dict(keras3: Any, custom_module: Path, tmp_path: Path) -> None:
    from edgelr.models.custom_objects import _import_file

    mod = _import_file(custom_module)
    model = _custom_model(keras3, custom_module)
    xs = np.ones((1, 5), "float32")
    _roundtrip(model, xs, tmp_path / "c.keras", custom_objects={"Scale": (mod.Scale, mod.TfScale)})


def test_untranslatable_option_names_the_layer(keras3: Any, tmp_path: Path) -> None:
    import edgelr

    L = keras3.layers
    model = keras3.Sequential([keras3.Input((4,)), L.Dense(8, name="lora_dense"), L.Dense(2)])
    model.get_layer("lora_dense").enable_lora(2)
    model.save(tmp_path / "lora.keras")
    with pytest.raises(ModelLoadError, match=r"lora_dense.*Dense.*lora_rank"):
        edgelr.load_model(tmp_path / "lora.keras")


def test_subclassed_keras3_model_is_rejected(keras3: Any, tmp_path: Path) -> None:
    from edgelr.models.translate import translate_model

    class Tiny(keras3.Model):
        def __init__(self) -> None:
            super().__init__()
            self.d = keras3.layers.Dense(2)

        def call(self, x: Any) -> Any:
            return self.d(x)

    m = Tiny()
    m(np.ones((1, 3), "float32"))
    with pytest.raises(ModelLoadError, match="subclassed"):
        translate_model(m)


def test_custom_objects_file_errors(tmp_path: Path) -> None:
    from edgelr.models.custom_objects import resolve_custom_objects

    with pytest.raises(ModelLoadError, match="not found"):
        resolve_custom_objects(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ModelLoadError, match="boom"):
        resolve_custom_objects(bad)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("CUSTOM_OBJECTS = [1, 2]\n")
    with pytest.raises(ModelLoadError, match="expected a dict"):
        resolve_custom_objects(wrong)


def test_translated_model_is_accepted_by_tfmot_qat(keras3: Any, tmp_path: Path) -> None:
    """The point of translating: tfmot's quantize_model takes the result (it rejects Keras 3 models)."""
    import edgelr
    import tensorflow_model_optimization as tfmot

    L = keras3.layers
    model = keras3.Sequential(
        [keras3.Input((8, 8, 1)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(), L.Flatten(), L.Dense(3)]
    )
    model.save(tmp_path / "q.keras")
    with pytest.raises(Exception):
        tfmot.quantization.keras.quantize_model(model)
    qat = tfmot.quantization.keras.quantize_model(edgelr.load_model(tmp_path / "q.keras"))
    x = np.random.default_rng(10).normal(size=(2, 8, 8, 1)).astype("float32")
    y = np.asarray(qat(x))
    assert y.shape == (2, 3) and np.isfinite(y).all()


def test_mixed_precision_policy_is_kept(keras3: Any, tmp_path: Path) -> None:
    L = keras3.layers
    model = keras3.Sequential([keras3.Input((4,)), L.Dense(3, dtype="mixed_float16"), L.Dense(2, dtype="float32")])
    loaded, _ = _roundtrip(model, np.random.default_rng(11).normal(size=(2, 4)).astype("float32"), tmp_path / "mp.keras")
    assert loaded.layers[0].dtype_policy.name == "mixed_float16"
    assert loaded.layers[1].dtype_policy.name == "float32"
