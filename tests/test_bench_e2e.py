"""End to end: a real .tflite (built with TF in a subprocess, cached in tmp) benchmarked by
device_agents/runner.py through the local transport, via the API and via the `edgelr bench` CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.local_device import write_local_inventory

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "device_agents" / "runner.py"
PY = sys.executable

BUILD_MODEL = """
import sys
from edgelr.tfcompat import tf, keras2
k = keras2()
k.utils.set_random_seed(0)
m = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Conv2D(4, 3, activation="relu"),
                  k.layers.Flatten(), k.layers.Dense(10)])
open(sys.argv[1], "wb").write(tf().lite.TFLiteConverter.from_keras_model(m).convert())
"""


@pytest.fixture(scope="session")
def tiny_tflite() -> Path:
    """A small Conv+Dense float model; cached in the temp dir across sessions (keyed by the builder)."""
    key = hashlib.sha256(BUILD_MODEL.encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / "edgelr-test-models" / f"tiny-{key}.tflite"
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        subprocess.run([PY, "-c", BUILD_MODEL, str(tmp)], check=True, capture_output=True, timeout=300)
        os.replace(tmp, cache)
    return cache


@pytest.fixture()
def inventory(tmp_path: Path) -> Path:
    return write_local_inventory(tmp_path / "inventory.toml")


def edgelr(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    code = "import sys; from edgelr.cli.main import main; sys.argv = ['edgelr', *sys.argv[1:]]; main()"
    return subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# --- the runner on its own ----------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_runner_output_parses_and_has_one_sample_per_run(tiny_tflite: Path) -> None:
    from edgelr.bench.parse import parse_benchmark_output

    res = subprocess.run([PY, str(RUNNER), f"--graph={tiny_tflite}", "--num_runs=7", "--warmup_runs", "2",
                          "--num_threads=1", "--use_xnnpack=false"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = parse_benchmark_output(res.stdout, res.stderr, res.returncode)
    assert out.tool == "litert_runner" and out.tool_version.startswith("litert_runner 1 (ai-edge-litert ")
    assert len(out.samples_ms) == 7 and all(s > 0 for s in out.samples_ms)
    assert out.inference is not None and out.inference.count == 7
    assert out.warmup is not None and out.warmup.count == 2
    assert out.inference.min == pytest.approx(min(out.samples_ms), abs=1e-3)
    assert out.inference_avg_ms == pytest.approx(sum(out.samples_ms) / 7, rel=1e-3)
    rec = out.extra["runner"]
    assert isinstance(rec, dict) and rec["use_xnnpack"] is False and rec["num_threads"] == 1
    assert rec["inputs"] == [{"name": rec["inputs"][0]["name"], "shape": [1, 8, 8, 1], "dtype": "float32"}]


def test_runner_version_and_bad_input(tmp_path: Path) -> None:
    res = subprocess.run([PY, str(RUNNER), "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("litert_runner 1 (ai-edge-litert 2.")
    res = subprocess.run([PY, str(RUNNER), "--graph=x.tflite", "--num_thread=2"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "unrecognized arguments: --num_thread=2" in res.stderr
    assert "Traceback" not in res.stderr
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 10)
    res = subprocess.run([PY, str(RUNNER), f"--graph={bad}"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"ERROR: cannot load model {bad}: The model is not a valid Flatbuffer buffer" in res.stderr
    assert res.stderr.rstrip().endswith("Benchmarking failed.")


def test_runner_reports_missing_litert(tmp_path: Path) -> None:
    """A device python without ai-edge-litert: exit 3 and the pip command (simulated by a blocking path entry)."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "ai_edge_litert").mkdir()
    (block / "ai_edge_litert" / "__init__.py").write_text("raise ImportError('No module named ai_edge_litert')\n")
    res = subprocess.run([PY, str(RUNNER), "--version"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(block)})
    assert res.returncode == 3
    assert "ai-edge-litert is not installed" in res.stderr and "-m pip install ai-edge-litert" in res.stderr


def test_runner_has_no_edgelr_or_tensorflow_imports() -> None:
    src = RUNNER.read_text()
    assert "import edgelr" not in src and "from edgelr" not in src and "tensorflow" not in src.replace(
        "no TensorFlow", "")


# --- the CLI, end to end ---------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_cli_bench_json_end_to_end(tiny_tflite: Path, inventory: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "results.parquet"
    res = edgelr("bench", str(tiny_tflite), "--device", "testbox", "--inventory", str(inventory), "--runs", "5",
                 "--warmup", "2", "--sessions", "2", "--json", "--out", str(out_file))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    rows = data["rows"]
    from edgelr.bench.frame import COLUMNS, METRICS

    assert all(set(r) == set(COLUMNS) for r in rows)
    for rep in (0, 1):
        lat = [r for r in rows if r["metric"] == "latency" and r["repeat"] == rep]
        assert sorted(r["sample"] for r in lat) == [0, 1, 2, 3, 4]   # one sample per --runs
        assert all(r["value"] > 0 and r["unit"] == "ms" for r in lat)
        agg = {r["metric"]: r for r in rows if r["repeat"] == rep and r["sample"] == -1}
        assert set(agg) == set(METRICS) - {"latency", "accuracy", "params", "macs", "rail_energy_per_inference",
                                           "op_latency"}  # op_latency only with --profile-ops
        mean = sum(r["value"] for r in lat) / 5
        assert agg["latency_avg"]["value"] == pytest.approx(mean)
        assert agg["latency_min"]["value"] == min(r["value"] for r in lat)
        assert agg["peak_memory"]["value"] > 5            # a python process with the runtime: tens of MB
        assert agg["model_size"]["value"] == tiny_tflite.stat().st_size
        assert agg["energy_per_inference"]["value"] is None  # no sensor here: NaN -> null, with a reason
        assert "no energy sensor" in agg["energy_per_inference"]["note"]
    r0 = rows[0]
    assert (r0["device"], r0["target"], r0["transport"], r0["tool"], r0["threads"]) == (
        "testbox", "host", "local", "litert_runner", 1)
    assert r0["model"] == tiny_tflite.stem
    assert r0["model_sha256"] == hashlib.sha256(tiny_tflite.read_bytes()).hexdigest()
    assert data["summary"][0]["samples"] == 10 and data["summary"][0]["repeats"] == 2
    import pandas as pd

    frame = pd.read_parquet(out_file)
    assert len(frame) == len(rows) and list(frame.columns) == COLUMNS
    assert (tmp_path / "device" / "runner.py").is_file()                        # pushed into the workdir
    assert len(list((tmp_path / "device" / "models").iterdir())) == 1
    assert "pushed" in res.stderr or "already on the device" in res.stderr      # progress on stderr


@pytest.mark.timeout(300)
def test_cli_failing_model_keeps_earlier_results(tiny_tflite: Path, inventory: Path, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(tiny_tflite.read_bytes()[:200])
    out_file = tmp_path / "results.csv"
    res = edgelr("bench", str(tiny_tflite), str(bad), "--device", "testbox", "--inventory", str(inventory),
                 "--runs", "3", "--sessions", "1", "--out", str(out_file))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("edgelr: error:")]
    assert len(errors) == 1
    assert "corrupt.tflite" in errors[0] and "Benchmarking failed" in errors[0] and "kept in" in errors[0]
    import pandas as pd

    frame = pd.read_csv(out_file)
    assert set(frame["model"]) == {tiny_tflite.stem}
    assert (frame["metric"] == "latency").sum() == 3
    assert tiny_tflite.stem in res.stdout                  # the summary of what did run is still printed


@pytest.mark.timeout(120)
def test_cli_single_corrupt_model_is_one_line(inventory: Path, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(b"\x00" * 64)
    res = edgelr("bench", str(bad), "--device", "testbox", "--inventory", str(inventory), "--runs", "3")
    assert res.returncode == 1 and "Traceback" not in res.stderr and res.stdout == ""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("edgelr: error:")]
    assert len(errors) == 1 and "corrupt.tflite" in errors[0]
