"""``bench --profile-ops`` (issue 15, part 4): per-node timings from ``benchmark_model
--enable_op_profiling`` travel into the frame, the history and the report; edgelr's own LiteRT runner says
plainly that it cannot give them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_agents.inventory import DeviceSpec
from device_agents.local import LocalTransport
from edgelr.bench.frame import parse_op_note, top_ops
from edgelr.bench.run import BenchSettings, benchmark
from tests.fake_benchmark_model import write_launcher
from tests.local_device import write_local_inventory

FIX = Path(__file__).parent / "fixtures"
OP_GOLDEN = FIX / "bench" / "bm_op_profiling.txt"


def _setup(tmp_path: Path) -> tuple[DeviceSpec, Path, Path]:
    root = tmp_path / "sysroot"
    shutil.copytree(FIX / "sensors" / "sysfs_none", root)
    log = tmp_path / "args.txt"
    script = write_launcher(tmp_path / "bm.sh", replay=OP_GOLDEN, log=log, sleep_s=0.05)
    spec = DeviceSpec(name="fakepi", transport="local", target="rpi4", benchmark_binary=str(tmp_path / "dev" / "bm"),
                      benchmark_binary_local=str(script), workdir=str(tmp_path / "dev"))
    model = tmp_path / "mobilenet.tflite"
    model.write_bytes(b"TFL3 fake model bytes")
    return spec, model, log


def _settings(tmp_path: Path, **kw: object) -> BenchSettings:
    return BenchSettings(threads=1, runs=3, warmup=1, sessions=2, cooldown_c=200.0, canary=False,
                         sensor_root=str(tmp_path / "sysroot"), vcgencmd="edgelr-test-no-vcgencmd", **kw)  # type: ignore[arg-type]


@pytest.mark.timeout(120)
def test_benchmark_model_op_table_reaches_the_frame_only_when_asked(tmp_path: Path) -> None:
    spec, model, log = _setup(tmp_path)
    frame = benchmark(spec, LocalTransport(), [model], _settings(tmp_path, profile_ops=True), progress=lambda m: None)
    assert "--enable_op_profiling=true" in log.read_text()
    ops = frame[frame.metric == "op_latency"]
    assert len(ops) == 2                                  # one node per session, two sessions
    assert set(ops["sample"]) == {0} and set(ops["value"]) == {0.874} and set(ops["unit"]) == {"ms"}
    assert {parse_op_note(n) for n in ops["note"]} == {("CONV_2D", "[MobilenetV1/MobilenetV1/Conv2d_0/Relu6]:0")}
    # the init section's Run Order (ModifyGraphWithDelegate, AllocateTensors) is not taken for the model's ops
    assert not any("AllocateTensors" in n for n in ops["note"])
    lat = frame.loc[(frame.metric == "latency_avg"), "value"]
    assert set(lat) == {16.0104}                          # the timings are not disturbed by the op tables
    top = top_ops(frame)
    assert [(r["type"], r["ms"], r["share"]) for r in top] == [("CONV_2D", 0.874, "100.0%")]

    log.write_text("")
    plain = benchmark(spec, LocalTransport(), [model], _settings(tmp_path), progress=lambda m: None)
    assert "--enable_op_profiling" not in log.read_text()
    assert not (plain.metric == "op_latency").any()


@pytest.mark.timeout(180)
def test_litert_runner_says_it_has_no_op_profiler_and_report_shows_top_ops(tmp_path: Path) -> None:
    from edgelr.cli.bench import bench
    from edgelr.report.history import append_or_spool
    from edgelr.report.render import write_report

    inv = write_local_inventory(tmp_path / "inventory.toml")
    model = tmp_path / "tiny_mlp.tflite"
    shutil.copy(FIX / "android" / "tiny_mlp.tflite", model)
    hist = tmp_path / "history"
    res = CliRunner().invoke(bench, [str(model), "--device", "testbox", "--inventory", str(inv), "--sessions", "1",
                                     "--runs", "2", "--no-canary", "--no-lock", "--profile-ops", "--json",
                                     "--history", str(hist)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    ops = [r for r in out["rows"] if r["metric"] == "op_latency"]
    assert len(ops) == 1 and (ops[0]["value"] is None or math.isnan(ops[0]["value"]))
    assert "not available in litert_runner" in ops[0]["note"]
    assert out["top_ops"][0]["op"] == "" and "no per-op profiler" in out["top_ops"][0]["why"]
    assert any(r["metric"] == "latency" for r in out["rows"])   # the latency samples are still there

    # a benchmark_model run with op rows, stored beside it: the report lists the top ops per model
    spec, fake_model, _ = _setup(tmp_path / "bm")
    frame = benchmark(spec, LocalTransport(), [fake_model], _settings(tmp_path / "bm", profile_ops=True),
                      progress=lambda m: None)
    append_or_spool(frame, str(hist), kind="bench")
    md = tmp_path / "report.md"
    data = write_report(str(hist), md_out=md)
    text = md.read_text()
    assert "Slowest ops per model" in text
    assert "CONV_2D" in text and "[MobilenetV1/MobilenetV1/Conv2d_0/Relu6]:0" in text
    assert "none: op profiling is" in text.replace("<br>", " ")
    assert list(data["ops"]["model"]) == ["mobilenet", "tiny_mlp"]
