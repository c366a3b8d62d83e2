"""Data-aware factorization: whitened decompositions minimise the layer's output error on calibration inputs.

The maths (closed form, spectrum = output error), the im2col patch statistics of convs (ordering, strides,
padding, causal Conv1D), ``factorize_model(calibration=x)`` end to end on a tiny model with every data-aware
rewriter, and one clear error for a calibration batch of the wrong shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgelr.errors import FactorizeError
from edgelr.factorize import (
    layer_spectrum,
    output_error,
    spatial_matrix,
    spatial_svd,
    truncated_svd,
    tucker2,
    whitening,
)

pytestmark = pytest.mark.timeout(300)


def _correlated(rng: np.random.Generator, n_rows: int, dim: int, decay: float = 4.0) -> np.ndarray:
    """Rows with a strongly non-isotropic second moment (a decaying spectrum in a random basis)."""
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (rng.normal(size=(n_rows, dim)) * np.exp(-np.arange(dim) / decay)) @ basis.T


def test_whitened_svd_is_the_closed_form_optimum_and_beats_plain_svd() -> None:
    rng = np.random.default_rng(0)
    n_in, n_out, rank = 48, 32, 6
    x = _correlated(rng, 4000, n_in)
    cov = x.T @ x / len(x)
    w = rng.normal(size=(n_in, n_out))
    plain = truncated_svd(w, rank)
    aware = truncated_svd(w, rank, whitening=cov)
    err_plain = output_error(w, plain.left @ plain.right, cov)
    err_aware = output_error(w, aware.left @ aware.right, cov)
    assert err_aware < 0.5 * err_plain  # correlated inputs: far lower output error at the same rank
    # measured on the inputs themselves, not only by the formula
    measured = np.linalg.norm(x @ (w - aware.left @ aware.right)) / np.linalg.norm(x @ w)
    assert measured == pytest.approx(err_aware, rel=1e-6)
    # the closed-form optimum: C + lambda I = L L^T (Cholesky), W' = L^-T [L^T W]_r
    lam = 1e-6 * np.trace(cov) / n_in
    chol = np.linalg.cholesky(cov + lam * np.eye(n_in))
    u, s, vt = np.linalg.svd(chol.T @ w, full_matrices=False)
    optimum = np.linalg.solve(chol.T, (u[:, :rank] * s[:rank]) @ vt[:rank])
    np.testing.assert_allclose(aware.left @ aware.right, optimum, atol=1e-9 * np.abs(optimum).max())
    # the data-aware spectrum is that of W L and gives the output error at every rank (up to the lambda term)
    spec = layer_spectrum(w, cov)
    np.testing.assert_allclose(spec.singular_values, s, rtol=1e-8)
    assert np.sqrt(spec.values[rank:].sum() / spec.values.sum()) == pytest.approx(err_aware, rel=1e-4)
    assert aware.rel_error == pytest.approx(err_aware, rel=1e-4)
    # full rank is exact; statistics of another size are refused with the sizes named
    full = truncated_svd(w, n_out, whitening=cov)
    np.testing.assert_allclose(full.left @ full.right, w, atol=1e-9)
    with pytest.raises(FactorizeError, match="statistics are for 47 inputs but the weights take 48"):
        truncated_svd(w, rank, whitening=cov[:47, :47])


def test_rank_deficient_statistics_are_regularised() -> None:
    """Inputs after ReLU leave dead directions: C is singular, lambda keeps L invertible and those directions
    fall back to the weight error."""
    rng = np.random.default_rng(1)
    x = np.maximum(_correlated(rng, 300, 24), 0.0)
    x[:, :4] = 0.0  # dead units
    cov = x.T @ x / len(x)
    w = rng.normal(size=(24, 16))
    res = truncated_svd(w, 4, whitening=cov)
    assert np.isfinite(res.left).all() and np.isfinite(res.right).all()
    assert output_error(w, res.left @ res.right, cov) <= output_error(w, truncated_svd(w, 4).left
                                                                      @ truncated_svd(w, 4).right, cov)
    white = whitening(cov)
    assert white.reg == pytest.approx(1e-6 * np.trace(cov) / 24)
    np.testing.assert_allclose(white.factor @ white.factor.T, cov + white.reg * np.eye(24), atol=1e-12)
    # rounding can make C slightly indefinite: Cholesky fails, the eigenvalues are clipped at 0 instead
    basis, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    values = np.array([4.0, 2.0, 1.0, 0.5, 0.0, -1e-3])
    white = whitening((basis * values) @ basis.T)
    clipped = (basis * np.clip(values, 0, None)) @ basis.T
    np.testing.assert_allclose(white.factor @ white.factor.T, clipped + white.reg * np.eye(6), atol=1e-12)
    assert np.allclose(white.factor, np.tril(white.factor))


def test_ledoit_wolf_shrinkage_when_rows_are_few() -> None:
    """Fewer rows than dimensions (a Dense layer on a flattened map): the sample second moment is singular and
    whitening by it ignores directions test inputs reach; the shrunk estimate is closer to the population one
    and its whitened SVD is no worse on new inputs. With many rows it barely changes anything."""
    from edgelr.rewrite.calibration import shrink

    rng = np.random.default_rng(7)
    dim = 200
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scales = np.exp(-np.arange(dim) / 60.0)
    population = (basis * scales ** 2) @ basis.T
    w = rng.normal(size=(dim, 40))

    def sample(n: int) -> np.ndarray:
        return (rng.normal(size=(n, dim)) * scales) @ basis.T

    few = sample(60)
    raw = few.T @ few / len(few)
    shrunk = shrink(raw, len(few), float(np.mean(np.sum(few ** 2, axis=1) ** 2)))
    assert np.linalg.norm(shrunk - population) < 0.7 * np.linalg.norm(raw - population)
    errors = []
    for cov in (raw, shrunk):
        res = truncated_svd(w, 10, whitening=cov)
        errors.append(output_error(w, res.left @ res.right, population))
    assert errors[1] <= errors[0], errors
    many = sample(20000)
    raw = many.T @ many / len(many)
    shrunk = shrink(raw, len(many), float(np.mean(np.sum(many ** 2, axis=1) ** 2)))
    assert np.linalg.norm(shrunk - raw) < 0.05 * np.linalg.norm(raw)


def _conv_output_error(kernel: np.ndarray, approx: np.ndarray, images: np.ndarray, conv: Any) -> float:
    return float(np.linalg.norm(conv(images, kernel - approx)) / np.linalg.norm(conv(images, kernel)))


def test_tucker2_and_spatial_svd_whitening_lower_the_true_conv_output_error(tf_keras: Any) -> None:
    """Tucker-2 (input-channel statistics) and spatial SVD (vertical-patch statistics) are approximations of
    the output optimum: check on a real conv over spatially correlated images that they lower its error."""
    import tensorflow as tf

    from edgelr.rewrite.calibration import InputStatistic, _rows

    rng = np.random.default_rng(2)
    c_in, c_out = 12, 16
    mix = _correlated(rng, c_in, c_in, decay=2.0)
    images = rng.normal(size=(64, 12, 12, c_in)) @ mix
    images = (images + np.roll(images, 1, axis=1) + np.roll(images, 1, axis=2)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, c_in, c_out))

    def conv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
        return tf.nn.conv2d(x, k.astype(np.float32), 1, "SAME").numpy()

    channels = _rows(tf, images, InputStatistic("features")).numpy().astype(np.float64)
    cov_c = channels.T @ channels / len(channels)
    plain_t, aware_t = tucker2(kernel, (4, 8)), tucker2(kernel, (4, 8), whitening=cov_c)

    def composed(t: Any) -> np.ndarray:
        return np.einsum("ap,ijpq,qb->ijab", t.first, t.core, t.last)

    e_plain, e_aware = (_conv_output_error(kernel, composed(t), images, conv) for t in (plain_t, aware_t))
    assert e_aware < 0.9 * e_plain, (e_plain, e_aware)

    vert = _rows(tf, images, InputStatistic("patches", (3, 1), (1, 1), (1, 1), "same")).numpy().astype(np.float64)
    order = np.arange(3 * c_in).reshape(3, c_in).T.ravel()  # (i, c) patch order -> spatial_matrix's (c, i)
    cov_v = (vert.T @ vert / len(vert))[np.ix_(order, order)]
    plain_s, aware_s = spatial_svd(kernel, 6), spatial_svd(kernel, 6, whitening=cov_v)

    def composed_s(s: Any) -> np.ndarray:
        return np.einsum("icr,jrd->ijcd", s.vertical[:, 0], s.horizontal[0])

    e_plain, e_aware = (_conv_output_error(kernel, composed_s(s), images, conv) for s in (plain_s, aware_s))
    assert e_aware < 0.9 * e_plain, (e_plain, e_aware)
    assert spatial_matrix(composed_s(aware_s)).shape == (3 * c_in, 3 * c_out)


@pytest.mark.parametrize("geometry", [
    dict(cls="Conv2D", kernel_size=3, strides=2, padding="same", dilation_rate=1),
    dict(cls="Conv2D", kernel_size=(3, 2), strides=1, padding="valid", dilation_rate=2),
    dict(cls="Conv1D", kernel_size=3, strides=1, padding="causal", dilation_rate=2),
])
def test_conv_patch_statistics_give_the_output_error_of_a_kernel_change(tf_keras: Any, geometry: dict) -> None:
    """The collected im2col second moment C, with the kernel unfolded as kernel.reshape(-1, c_out), predicts the
    conv's output change exactly: tr(E^T C E) = mean ||conv(x, E)||^2 over output positions (ordering, strides,
    dilation and padding all have to match the conv's)."""
    from edgelr.rewrite.calibration import InputStatistic, collect_statistics

    keras = tf_keras
    rng = np.random.default_rng(3)
    cls = getattr(keras.layers, geometry.pop("cls"))
    shape = (10, 5) if cls.__name__ == "Conv1D" else (9, 9, 5)
    inp = keras.Input(shape)
    layer = cls(6, use_bias=False, name="conv", **geometry)
    model = keras.Model(inp, layer(keras.layers.Activation("tanh")(inp)))
    x = rng.normal(size=(40,) + shape).astype(np.float32)
    stats = collect_statistics(model, {"conv": (layer, InputStatistic.conv_patches(layer))}, x, batch_size=16,
                               progress=False, shrinkage=False)
    cov = stats["conv"]
    change = rng.normal(size=layer.kernel.shape).astype(np.float32)
    probe = keras.Model(inp, cls(6, use_bias=False, **geometry)(keras.layers.Activation("tanh")(inp)))
    probe.layers[-1].set_weights([change])
    out = probe(x, training=False).numpy()
    mean_sq = float((out.reshape(-1, 6) ** 2).sum(axis=1).mean())
    e = change.reshape(-1, 6).astype(np.float64)
    assert float(np.einsum("ij,ik,kj->", e, cov, e)) == pytest.approx(mean_sq, rel=1e-4)


def _tiny_model(keras: Any) -> Any:
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(inp)
    x = keras.layers.Conv2D(16, 1, name="conv1")(x)
    x = keras.layers.SeparableConv2D(16, 3, padding="same", name="sep")(x)
    x = keras.layers.Conv2D(12, 3, padding="same", name="spatial")(x)
    x = keras.layers.Flatten(name="flat")(x)
    out = keras.layers.Dense(10, name="head")(x)
    model = keras.Model(inp, out, name="tiny")
    rng = np.random.default_rng(4)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in layer.get_weights()])
    return model


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth, channel-correlated images: the regime where output-aware factorization pays."""
    x = rng.normal(size=(n, 8, 8, 3)) @ np.array([[1.0, 0.9, 0.8], [0.0, 0.3, 0.2], [0.0, 0.0, 0.1]])
    x = x + np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tf_keras: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return _tiny_model(tf_keras), _images(rng, 256), _images(rng, 128)


LAYERS = [  # layer, method, ranks, the chain element that produces the layer's output
    ("conv3", "tucker2", (2, 6), "conv3/tucker_out"),
    ("conv1", "svd", (4,), "conv1/svd_out"),
    ("sep", "svd", (4,), "sep/svd_out"),
    ("spatial", "spatial-svd", (6,), "spatial/spatial_horizontal"),
    ("head", "svd", (3,), "head/svd_out"),
]


def test_factorize_model_with_calibration_lowers_every_layers_output_error(tf_keras: Any, tiny: Any) -> None:
    """End to end: factorize_model(calibration=x) at the same ranks as the weights-only rewrite; each data-aware
    rewriter's layer output is closer to the original's on held-out inputs (same distribution)."""
    from edgelr import factorize_model
    from edgelr.rewrite import build_factorized, plan_factorization

    keras = tf_keras
    model, calib, held_out = tiny
    ranks = {name: r for name, _, r, _ in LAYERS}
    methods = {"tucker2": ["conv3"], "spatial-svd": ["spatial"], "svd": ["conv1", "sep", "head"]}
    errors: dict[str, list[float]] = {name: [] for name in ranks}
    for calibration in (None, calib):
        for method, names in methods.items():
            plan = plan_factorization(model, method=method, rank_policy="rank:4", include=names,
                                      min_reduction=None, progress=False, calibration=calibration)
            assert all((plan.layers[n].stats is not None) == (calibration is not None) for n in names)
            new, report = build_factorized(model, plan, {n: ranks[n] for n in names}, progress=False)
            for name, _, _, out_name in LAYERS:
                if name not in names:
                    continue
                want = keras.Model(model.inputs, model.get_layer(name).output)(held_out, training=False).numpy()
                got = keras.Model(new.inputs, new.get_layer(out_name).output)(held_out, training=False).numpy()
                errors[name].append(float(np.linalg.norm(got - want) / np.linalg.norm(want)))
    for name, (weights_only, data_aware) in errors.items():
        assert data_aware < 0.9 * weights_only, (name, weights_only, data_aware)
    # the public entry point: data-aware ranks from the data-aware spectrum, a working model
    new, report = factorize_model(model, rank_policy="energy:0.9", calibration=calib, progress=False,
                                  min_reduction=None)
    assert set(report.layer) == {"conv3", "conv1", "sep", "spatial", "head"}
    out = new(held_out[:8], training=False).numpy()
    assert out.shape == (8, 10) and np.isfinite(out).all()


def test_calibration_of_the_wrong_shape_gives_one_clear_error(tf_keras: Any, tiny: Any) -> None:
    from edgelr import factorize_model

    model, calib, _ = tiny
    with pytest.raises(FactorizeError) as info:
        factorize_model(model, calibration=calib[:, :, :4], progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "calibration: got an array of shape (256, 8, 4, 3)" in message and "(None, 8, 8, 3)" in message
    with pytest.raises(FactorizeError, match="NaN or Inf"):
        factorize_model(model, calibration=np.full((4, 8, 8, 3), np.nan, np.float32), progress=False)


def test_compress_is_data_aware_by_default_and_no_data_aware_turns_it_off(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Any) -> None:
    """The decision is made once (compress.options.with_calibration) and reaches the plan through PlanOptions
    (so the plain path and the rank search alike); --no-data-aware reaches the options."""
    from click.testing import CliRunner

    import edgelr.compress.pipeline as pipeline
    from edgelr.cli.compress import compress
    from edgelr.compress.options import CompressOptions, resolve_plan_options, with_calibration
    from edgelr.errors import UsageError
    from edgelr.targets import get_target

    plan = resolve_plan_options(CompressOptions(), get_target("host"))
    x = np.zeros((4, 3), np.float32)
    assert plan.calibration is None
    assert with_calibration(plan, CompressOptions(), x).kwargs()["calibration"] is x
    assert with_calibration(plan, CompressOptions(data_aware=False), x).kwargs()["calibration"] is None

    seen: list[dict] = []

    def fake(*args: object, **kwargs: object) -> None:
        seen.append(kwargs)
        raise UsageError("stop here")

    monkeypatch.setattr(pipeline, "compress", fake)
    base = ["m.keras", "--data", "digits", "--out", str(tmp_path / "o")]
    CliRunner().invoke(compress, base)
    CliRunner().invoke(compress, [*base, "--no-data-aware"])
    assert [s["data_aware"] for s in seen] == [True, False]


def test_layers_of_a_nested_model_stay_weights_only(tf_keras: Any) -> None:
    from edgelr.rewrite import plan_factorization

    keras = tf_keras
    inner = keras.Sequential([keras.layers.Dense(12, name="inner_dense")], name="inner")
    inp = keras.Input((16,))
    model = keras.Model(inp, inner(keras.layers.Dense(16, name="outer")(inp)))
    x = np.random.default_rng(6).normal(size=(32, 16)).astype(np.float32)
    plan = plan_factorization(model, rank_policy="rank:2", min_reduction=None, progress=False, calibration=x)
    assert plan.layers["outer"].stats.shape == (16, 16)
    assert plan.layers["inner/inner_dense"].stats is None and plan.layers["inner/inner_dense"].decomposition is not None
