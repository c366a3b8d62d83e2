"""``edgelr demo``: the whole product on a built-in example (scikit-learn's bundled digits).

Steps: train a small CNN (seconds on 2 cores) -> save it -> compress it for a target with an accuracy
budget -> benchmark the compressed and baseline ``.tflite`` on the ``local`` device -> write a report.
Each step after training runs when its part of edgelr is installed in this version.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelr.data import Dataset, load_data


def build_digits_cnn(input_shape: tuple[int, ...] = (8, 8, 1), num_classes: int = 10) -> Any:
    """The demo's reference CNN (tf_keras): three conv layers and two dense layers, ~40k parameters."""
    from edgelr.tfcompat import keras2

    k = keras2()
    inputs = k.Input(shape=input_shape, name="image")
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = k.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = k.layers.MaxPooling2D(2, name="pool1")(x)
    x = k.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    x = k.layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = k.layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return k.Model(inputs, outputs, name="digits_cnn")


def train_digits_cnn(data: Dataset, epochs: int = 30, seed: int = 0, verbose: bool = True) -> tuple[Any, float]:
    """Train the demo CNN on ``data``; returns ``(model, test accuracy in %)``."""
    from edgelr.compress.attempt import deterministic

    with deterministic(seed):  # Python, NumPy and TF seeds: the same seed trains the same model
        return _train_digits_cnn(data, epochs, verbose)


def _train_digits_cnn(data: Dataset, epochs: int, verbose: bool) -> tuple[Any, float]:
    from edgelr.tfcompat import keras2

    k = keras2()
    model = build_digits_cnn(data.input_shape, data.num_classes or 10)
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [k.callbacks.EarlyStopping(patience=5, restore_best_weights=True, monitor="val_accuracy")]
    if verbose:
        callbacks.append(_StderrEpochs(epochs))
    model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=epochs,
              batch_size=64, verbose=0, callbacks=callbacks)
    _, acc = model.evaluate(data.x_test, data.y_test, verbose=0)
    return model, 100.0 * float(acc)


class _StderrEpochs:
    """A Keras callback printing one progress line per epoch on stderr (created lazily: needs tf_keras)."""

    def __new__(cls, epochs: int) -> Any:
        from edgelr.tfcompat import keras2

        class _Cb(keras2().callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                logs = logs or {}
                print(f"  epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.3f} "
                      f"val_accuracy {100 * logs.get('val_accuracy', float('nan')):.1f}%",
                      file=sys.stderr, flush=True)

        return _Cb()


@dataclass
class DemoResult:
    out_dir: Path
    model_path: Path
    accuracy: float
    steps: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_demo(out_dir: Path, epochs: int = 30, seed: int = 0, target: str = "rpi4",
             max_accuracy_drop: float = 1.0, bench_runs: int = 20, compress_epochs: int = 3,
             bench_sessions: int = 10, targets_file: str | None = None) -> DemoResult:
    """Train the example CNN, compress it for ``target`` within ``max_accuracy_drop`` points, benchmark
    original and compressed ``.tflite`` on the ``local`` device, and write the report.

    Outputs under ``out_dir``: ``digits_cnn.keras``, ``compressed/`` (model.tflite, baseline.tflite,
    report.json, layers.csv, summary.md, ...), ``history/`` (results store), ``report.html``/``report.md``.
    """
    from edgelr.targets import get_target

    get_target(target, targets_file)  # an unknown target fails here, in a second, not after training
    from edgelr.compress.pipeline import compress

    out_dir.mkdir(parents=True, exist_ok=True)
    history = out_dir / "history"
    data = load_data("digits", seed=seed)
    _say(f"[1/4] training a small CNN on digits ({data.sizes()['train']} train / {data.sizes()['test']} test images)")
    model, acc = train_digits_cnn(data, epochs=epochs, seed=seed)
    model_path = out_dir / "digits_cnn.keras"
    model.save(model_path)
    result = DemoResult(out_dir=out_dir, model_path=model_path, accuracy=acc)

    _say(f"[2/4] compressing for {target} with an accuracy budget of {max_accuracy_drop:g} points")
    comp = compress(str(model_path), data, target=target, out_dir=out_dir / "compressed", force=True,
                    max_accuracy_drop=max_accuracy_drop, epochs=compress_epochs, history=str(history), seed=seed,
                    targets_file=targets_file)
    result.message = comp.message
    s = comp.summary
    outputs = s.get("outputs", {})
    compressed_tflite = out_dir / "compressed" / "model.tflite"
    baseline_tflite = out_dir / "compressed" / "baseline.tflite"
    result.steps["compress"] = {"budget_met": comp.budget_met, "message": comp.message,
                                "reduction": s.get("reduction"), "outputs": outputs}

    _say(f"[3/4] benchmarking baseline and compressed .tflite on this machine: {bench_sessions} interleaved "
         f"sessions of {bench_runs} runs each")
    # Bench under the names compress recorded (<model>, <model> (baseline)) so the report joins latency
    # with accuracy, size and MACs. Both are measured in one call: their sessions interleave.
    from edgelr.bench.run import BenchModel
    from edgelr.compress.names import recorded_name

    names = {p: recorded_name(p) or p.name for p in (baseline_tflite, compressed_tflite)}
    bench, frame = _bench_local([BenchModel(n, p) for p, n in names.items()], bench_runs, bench_sessions, history)
    from edgelr.report.stats import paired_speedup

    _, result.steps["speedup"] = paired_speedup(frame, names[compressed_tflite], names[baseline_tflite])

    _say("[4/4] writing the report")
    from edgelr.report.render import write_report

    html, md = out_dir / "report.html", out_dir / "report.md"
    write_report(history, html_out=html, md_out=md)
    result.steps["report"] = {"html": str(html), "md": str(md), "history": str(history)}

    def latency(path: Path, key: str) -> float:
        return bench.get(names[path], {}).get(key, float("nan"))

    for label, part, path in (("original", s["original"], baseline_tflite),
                              ("compressed", s["compressed"], compressed_tflite)):
        result.rows.append({
            "model": label,
            "accuracy_float_%": part.get("score") if label == "original" else part.get("score_float"),
            "accuracy_tflite_%": part.get("tflite_score"),
            "params": part.get("params"),
            "macs": part.get("macs"),
            "tflite_bytes": part.get("tflite_bytes"),
            "latency_median_ms": latency(path, "median_ms"),
            "speedup": result.steps["speedup"]["text"] if label == "compressed" else "reference",
            "peak_memory_mb": latency(path, "peak_mb"),
        })
    result.steps["summary"] = result.rows
    return result


def _bench_local(models: list[Any], runs: int, sessions: int, history: Path) -> tuple[dict[str, dict[str, Any]], Any]:
    """Benchmark ``models`` interleaved on the built-in ``local`` device; record the run in ``history``.

    Returns the summary row per model name and the results frame."""
    from device_agents.inventory import BUILTIN_LOCAL, open_transport
    from edgelr.bench.run import BenchSettings, benchmark
    from edgelr.bench.frame import summarize
    from edgelr.report.history import append_run

    settings = BenchSettings(runs=runs, sessions=sessions, warmup=5, threads=1, cooldown_timeout_s=30.0)
    transport = open_transport(BUILTIN_LOCAL)
    try:
        frame = benchmark(BUILTIN_LOCAL, transport, models, settings, progress=_say)
    finally:
        transport.close()
    append_run(frame, history, kind="bench")
    return {row["model"]: row for row in summarize(frame)}, frame
