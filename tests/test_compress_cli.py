"""``edgelr compress`` end to end: outputs, report fields, exit codes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgelr.cli.main import main

FAST = ["--epochs", "1", "--max-train", "384", "--target", "host"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rv = main(args)  # click returns ctx.exit(N)'s code (standalone_mode=False); the console script exits with it
        code = rv if isinstance(rv, int) else 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained on digits (~96 % test accuracy), saved by tf_keras."""
    from edgelr.data import load_data
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.backend.clear_session()  # layer names (conv2d, dense, ...) must not depend on the tests run before
    k2.utils.set_random_seed(0)
    d = load_data("digits")
    inp = k2.Input((8, 8, 1))
    h = k2.layers.Conv2D(16, 3, activation="relu", padding="same")(inp)
    h = k2.layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = k2.layers.MaxPooling2D()(h)
    h = k2.layers.Flatten()(h)
    h = k2.layers.Dense(64, activation="relu")(h)
    model = k2.Model(inp, k2.layers.Dense(10, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(d.x_train, d.y_train, epochs=8, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("model") / "cnn.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def compressed(cnn_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, dict]:
    """One CLI run with --json (rank policy macs:0.5, params:0.2 for layer 'dense'), shared by the assertions below."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("run") / "out"
    buf = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buf):
        try:
            rv = main(["compress", str(cnn_path), "--data", "digits", "--out", str(out), "--rank-policy", "macs:0.5",
                       "--layer-policy", "dense=params:0.2", "--json", *FAST])
            code = rv if isinstance(rv, int) else 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return out, code, json.loads(buf.getvalue())


@pytest.mark.timeout(600)
def test_cli_writes_every_output(compressed: tuple[Path, int, dict]) -> None:
    out, code, summary = compressed
    assert code == 0
    for name in ("model.tflite", "model.keras", "baseline.tflite", "report.json", "layers.csv", "summary.md",
                 "names.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "search.csv").exists()  # no budget, no search
    # bench picks up the names compress recorded: the model's name, not the file stem "model"
    from edgelr.cli.bench import named_models

    stem = summary["model"]
    got = named_models([str(out / "model.tflite"), str(out / "baseline.tflite"), f"mine={out / 'model.tflite'}"])
    assert [m.name for m in got] == [stem, f"{stem} (baseline)", "mine"] and stem != "model"
    assert summary["outputs"]["model.tflite"] == str(out / "model.tflite")
    assert summary["compressed"]["tflite_bytes"] == (out / "model.tflite").stat().st_size
    assert summary["original"]["tflite_bytes"] == (out / "baseline.tflite").stat().st_size
    # both files are stripped alike: only the input and output tensors keep their names
    from ai_edge_litert.interpreter import Interpreter

    for name in ("model.tflite", "baseline.tflite"):
        it = Interpreter(model_path=str(out / name))
        io = {d["index"] for d in it.get_input_details() + it.get_output_details()}
        assert all(d["name"] for d in it.get_input_details()), name
        assert all(d["name"] == "" for d in it.get_tensor_details() if d["index"] not in io), name


@pytest.mark.timeout(600)
def test_cli_summary_and_report_fields(compressed: tuple[Path, int, dict]) -> None:
    out, _, s = compressed
    assert s["target"] == "host" and s["quantization"] == "int8" and s["metric"] == "accuracy"
    # macs:0.5 on every factorizable layer: the model has fewer MACs and params than the original
    assert s["compressed"]["macs"] < s["original"]["macs"] and s["compressed"]["params"] < s["original"]["params"]
    assert s["reduction"]["macs_x"] == pytest.approx(s["original"]["macs"] / s["compressed"]["macs"])
    assert s["budget_met"] is None and s["max_accuracy_drop"] is None
    assert 80.0 <= s["original"]["score"] <= 100.0
    assert s["compressed"]["tflite_score"] > 50.0  # a working model, not a broken conversion
    assert s["drop_points"] == pytest.approx(s["original"]["score"] - s["compressed"]["tflite_score"])
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["compressed"]["macs"] == s["compressed"]["macs"]
    val = report["tflite"]["validation"]
    assert val["input_dtype"] == "float32"  # the host profile asks for float I/O
    assert val["ops"]["custom_ops"] == [] and val["ops"]["num_nodes"] >= 5
    assert 0 <= val["agreement"] <= 100
    assert report["qat"]["applied"] is True and report["qat"]["float"] == []
    assert report["tflite"]["int8_path"]["used"] in ("qat", "post-training")
    assert len(report["finetune"]["history"]) == 1
    assert report["data"]["sizes"]["test"] == 359


@pytest.mark.timeout(600)
def test_cli_layers_table_and_keras_model(compressed: tuple[Path, int, dict]) -> None:
    import pandas as pd

    from edgelr.compress.evaluate import predict
    from edgelr.compress.validate import run_tflite
    from edgelr.data import load_data
    from edgelr.tfcompat import keras2

    out, _, s = compressed
    layers = pd.read_csv(out / "layers.csv")
    assert list(layers["layer"]) == ["conv2d", "conv2d_1", "dense", "dense_1"]
    assert {"method", "ranks", "params_before", "params_after", "macs_after", "qat", "reason"} <= set(layers.columns)
    done = layers[~layers["skipped"]]
    assert len(done) >= 1 and (done["macs_after"] < done["macs_before"]).all()
    policy = dict(zip(layers["layer"], layers["policy"].fillna("")))
    assert policy["dense"] == "params:0.2" and policy["conv2d_1"] == "macs:0.5"
    dense = layers.set_index("layer").loc["dense"]
    # Dense 512 -> 64: params:0.2 allows rank 11 (576 r + 64 <= 0.2 * 32832), rounded up to host's multiple
    # of 8: 16 (macs:0.5 would give 32)
    assert not dense["skipped"] and str(dense["ranks"]) == "16" and dense["params_after"] == 16 * 576 + 64
    model = keras2().models.load_model(out / "model.keras")
    from edgelr.rewrite.cost import model_cost

    assert model_cost(model) == (s["compressed"]["params"], s["compressed"]["macs"])
    # the float32 conversion of the saved factorized model matches it
    from edgelr.compress.convert import convert

    x = load_data("digits").x_test[:64]
    np.testing.assert_allclose(run_tflite(convert(model, "none").content, x), predict(model, x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_budget_impossible_exits_1_and_writes_best(cnn_path: Path, compressed: tuple[Path, int, dict],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = compressed[0].parent / "budget"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    code, stdout, err = run_cli(["compress", str(cnn_path), "--data", "digits", "--out", str(out), "--force",
                                 "--max-accuracy-drop", "-50", "--no-qat", *FAST], capsys)
    assert code == 1
    assert "budget NOT met" in err and "written anyway" in err
    assert not (out / "stale.txt").exists()  # --force replaced the directory
    for name in ("model.tflite", "model.keras", "baseline.tflite", "report.json", "layers.csv", "summary.md",
                 "search.csv", "search.png"):
        assert (out / name).is_file(), name
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    assert search["budget_met"] is False and report["summary"]["budget_met"] is False
    assert len(search["trials"]) >= 1 and any(c["tried"] for c in search["candidates"])
    assert len(search["sensitivity"]) >= 4  # several shares of several layers were scored
    assert all({"macs", "params", "val_score"} <= set(c) for c in search["candidates"])
    assert report["qat"]["applied"] is False and "--no-qat" in report["qat"]["error"]


def test_cli_refuses_existing_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.tflite").write_bytes(b"x")
    code, _, err = run_cli(["compress", str(tmp_path / "any.keras"), "--data", "digits", "--out", str(out)], capsys)
    assert code == 2
    assert "already exists" in err and "--force" in err
    assert (out / "model.tflite").read_bytes() == b"x"


def test_cli_unknown_target_lists_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["compress", str(tmp_path / "m.keras"), "--data", "digits", "--out", str(tmp_path / "o"),
                            "--target", "toaster"], capsys)
    assert code == 1
    assert "unknown target 'toaster'" in err and "rpi4" in err
    assert not (tmp_path / "o").exists()


def test_cli_bad_rank_policy_and_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["compress", str(tmp_path / "m.keras"), "--data", "digits", "--out", str(tmp_path / "o"),
                            "--rank-policy", "half"], capsys)
    assert code == 2 and "half" in err
    code, _, err = run_cli(["compress", str(tmp_path / "m.keras"), "--data", "digits", "--out", str(tmp_path / "o")],
                           capsys)
    assert code == 1 and "does not exist" in err


@pytest.mark.timeout(300)
def test_cli_data_that_does_not_fit(cnn_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.zeros((20, 28, 28, 1), np.float32)
    y = np.zeros(20, np.int64)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    code, _, err = run_cli(["compress", str(cnn_path), "--data", str(tmp_path / "d.npz"), "--out",
                            str(tmp_path / "o")], capsys)
    assert code == 1 and "(28, 28, 1)" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rank_search_meets_a_reachable_budget(cnn_path: Path, tmp_path: Path) -> None:
    from edgelr.compress.pipeline import compress

    res = compress(str(cnn_path), "digits", "host", tmp_path / "out", max_accuracy_drop=5.0, epochs=2,
                   progress=False)
    s, search = res.summary, res.report["search"]
    assert res.exit_code == 0 and s["budget_met"] is True and search["budget_met"] is True
    assert s["drop_points"] <= 5.0
    assert s["compressed"]["macs"] < s["original"]["macs"]
    chosen = next(c for c in search["candidates"] if c["label"] == search["chosen"])
    assert chosen["tried"] and chosen["macs"] == s["compressed"]["macs"]
    assert chosen["tflite_drop"] == pytest.approx(s["drop_points"])
    # candidates are sorted by MACs and include uniform and greedy configurations
    macs = [c["macs"] for c in search["candidates"]]
    assert macs == sorted(macs) and any(c["label"].startswith("uniform") for c in search["candidates"])
    assert (tmp_path / "out" / "search.png").is_file() and (tmp_path / "out" / "search.csv").is_file()


def test_cli_help_lists_layer_policy_and_keep_names() -> None:
    from click.testing import CliRunner

    from edgelr.cli.compress import compress

    res = CliRunner().invoke(compress, ["--help"])
    assert res.exit_code == 0
    assert "--layer-policy" in res.output and "PATTERN=POLICY" in res.output and "--keep-names" in res.output


def test_cli_passes_layer_policies_and_keep_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    import edgelr.compress.pipeline as pipeline
    from edgelr.cli.compress import compress
    from edgelr.errors import UsageError

    seen: list[dict] = []

    def fake(*args: object, **kwargs: object) -> None:
        seen.append(kwargs)
        raise UsageError("stop here")

    monkeypatch.setattr(pipeline, "compress", fake)
    base = ["m.keras", "--data", "digits", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(compress, [*base, "--layer-policy", "dense*=params:0.2", "--layer-policy",
                                        "conv2d=rank:4", "--keep-names", "--allocate", "latency"])
    assert isinstance(res.exception, UsageError)
    assert seen[-1]["allocate"] == "latency"
    assert seen[-1]["layer_policies"] == {"dense*": "params:0.2", "conv2d": "rank:4"}
    assert list(seen[-1]["layer_policies"]) == ["dense*", "conv2d"]  # order kept: the first match wins
    assert seen[-1]["strip_names"] is False
    CliRunner().invoke(compress, base)
    assert seen[-1]["layer_policies"] is None and seen[-1]["strip_names"] is True
    assert seen[-1]["allocate"] == "layer"


@pytest.mark.parametrize("value", ["dense", "=rank:4", "dense="])
def test_cli_layer_policy_without_pattern_or_policy(value: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["compress", str(tmp_path / "m.keras"), "--data", "digits", "--out", str(tmp_path / "o"),
                            "--layer-policy", value], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "--layer-policy" in err and "PATTERN=POLICY" in err and repr(value) in err


def test_cli_layer_policy_bad_spec_or_repeated_pattern(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compress", str(tmp_path / "m.keras"), "--data", "digits", "--out", str(tmp_path / "o")]
    code, _, err = run_cli([*args, "--layer-policy", "dense=half"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--layer-policy" in err and "'dense'" in err and "half" in err
    code, _, err = run_cli([*args, "--layer-policy", "dense=rank:2", "--layer-policy", "dense=rank:3"], capsys)
    assert code == 2 and "given twice" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_cli_bad_min_efficiency_is_one_line_before_any_work(value: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A --min-efficiency outside (0, 1] is refused up front (exit 2), even before the model is read."""
    code, _, err = run_cli(["compress", str(tmp_path / "missing.keras"), "--data", "digits", "--out",
                            str(tmp_path / "o"), "--min-efficiency", value], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "--min-efficiency" in err and "(0, 1]" in err
    assert not (tmp_path / "o").exists()


def test_cli_bad_allocate_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["compress", str(tmp_path / "missing.keras"), "--data", "digits", "--out",
                            str(tmp_path / "o"), "--allocate", "model"], capsys)
    assert code == 2  # click's usage error: one 'Error:' line naming the option and the valid choices
    error = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "--allocate" in error[0] and "'layer', 'latency'" in error[0]
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_pipeline_refuses_bad_allocate_before_any_work(tmp_path: Path) -> None:
    from edgelr.compress.pipeline import compress as run
    from edgelr.errors import UsageError

    with pytest.raises(UsageError, match="--allocate: allocate: got 'global'"):
        run(str(tmp_path / "missing.keras"), "digits", "host", tmp_path / "o", allocate="global", progress=False)
    assert not (tmp_path / "o").exists()
