"""edgelr.bench.run orchestration over the local transport with the stand-in benchmark_model
(tests/fake_benchmark_model.py replaying a golden benchmark_model output) and a fixture /sys tree with RAPL
and thermal zones. Also the memwrap POSIX-sh wrapper under dash and busybox sh."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest

from device_agents.inventory import DeviceSpec
from device_agents.local import LocalTransport
from device_agents.procs import RUNWRAP_SH
from edgelr.bench.harnesses import select_harness
from edgelr.bench.harnesses.linux import LitertRunnerHarness
from edgelr.bench.run import BenchSettings, benchmark
from edgelr.errors import BenchmarkError, DeviceError
from tests.fake_benchmark_model import write_launcher

FIX = Path(__file__).parent / "fixtures"
GOLDEN = FIX / "bench" / "bm_info_percentiles.txt"


@pytest.fixture()
def sysroot(tmp_path: Path) -> Path:
    root = tmp_path / "sysroot"
    shutil.copytree(FIX / "sensors" / "sysfs_x86", root)
    return root


def fake_benchmark_model(tmp_path: Path, sysroot: Path, sleep_s: float = 0.3) -> Path:
    """The stand-in benchmark_model (tests/fake_benchmark_model.py) replaying the golden output: records its
    flags and affinity, bumps the RAPL counter (a wrap-around: +2 J); a model named *corrupt* fails like
    the real tool, one named *slow* takes 30 s."""
    return write_launcher(tmp_path / "fake_benchmark_model.sh", replay=GOLDEN, log=tmp_path / "args.txt",
                          sleep_s=sleep_s,
                          counter=(sysroot / "sys/class/powercap/intel-rapl:0/energy_uj", "671150"))


def device(tmp_path: Path, script: Path, **kw: object) -> DeviceSpec:
    return DeviceSpec(name="fakepi", transport="local", target="rpi4", benchmark_binary=str(tmp_path / "dev" / "bm"),
                      benchmark_binary_local=str(script), workdir=str(tmp_path / "dev"), **kw)  # type: ignore[arg-type]


def settings(sysroot: Path, **kw: object) -> BenchSettings:
    base: dict[str, object] = dict(threads=2, runs=7, warmup=3, sessions=1, use_xnnpack=False, cooldown_c=60.0,
                                   sensor_root=str(sysroot), vcgencmd="edgelr-test-no-vcgencmd")
    base.update(kw)
    return BenchSettings(**base)  # type: ignore[arg-type]


def model(tmp_path: Path, name: str = "m.tflite", data: bytes = b"TFL3 fake model bytes") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.timeout(120)
def test_benchmark_model_harness_rows_energy_temps_and_affinity(tmp_path: Path, sysroot: Path) -> None:
    script = fake_benchmark_model(tmp_path, sysroot)
    spec = device(tmp_path, script, affinity_mask="1")
    msgs: list[str] = []
    frame = benchmark(spec, LocalTransport(), [model(tmp_path)], settings(sysroot), progress=msgs.append)
    v = {m: frame.loc[(frame.metric == m) & (frame["sample"] == -1), "value"].item() for m in frame.metric.unique()}
    notes = dict(zip(frame.metric, frame.note))
    assert (frame.metric == "latency").sum() == 0           # benchmark_model prints no per-run samples
    assert v["latency_avg"] == pytest.approx(33.0718)
    assert (v["latency_min"], v["latency_max"], v["latency_median"], v["latency_p95"]) == (32.687, 33.239, 33.08, 33.23)
    assert math.isnan(v["latency_p90"]) and "no per-run samples" in notes["latency_p90"]
    assert (v["init"], v["first_inference"], v["warmup_avg"]) == (3.501, 156.677, pytest.approx(43.2681))
    assert (v["tool_peak_memory"], v["tool_memory_init"]) == (75.1, 54.2852)
    assert v["peak_memory"] > 0 and "VmHWM sampled" in notes["peak_memory"]
    assert v["temp_before"] == 52.0 and v["temp_after"] == 52.0
    assert "TfLiteXNNPackDelegate 539/548" in notes["latency_avg"]
    # RAPL: the counter wrapped from 262142000000 to 671150 of 262143328850: exactly 2 J in the window
    assert v["avg_power"] > 0 and "rapl counter" in notes["avg_power"]
    assert v["energy_per_inference"] == pytest.approx(v["avg_power"] * 33.0718)
    window_s = 2.0 / v["avg_power"]
    assert 0.3 <= window_s < 30
    assert set(frame.tool) == {"benchmark_model"} and set(frame.threads) == {2} and set(frame.target) == {"rpi4"}
    args = (tmp_path / "args.txt").read_text()
    assert f"--graph={tmp_path}/dev/models/" in args
    assert "--num_threads=2 --num_runs=7 --warmup_runs=3 --use_xnnpack=false" in args
    if shutil.which("taskset"):
        assert "current affinity mask: 1" in args               # pinned with taskset 1
    assert (tmp_path / "dev" / "bm").read_text() == script.read_text()    # pushed from benchmark_binary_local
    assert any("pushed" in m for m in msgs)


@pytest.mark.timeout(120)
def test_second_model_failing_keeps_results_and_out_file(tmp_path: Path, sysroot: Path) -> None:
    script = fake_benchmark_model(tmp_path, sysroot, sleep_s=0.05)
    out = tmp_path / "res.csv"
    good, bad = model(tmp_path, "good.tflite"), model(tmp_path, "corrupt.tflite", b"junk")
    with pytest.raises(BenchmarkError) as info:
        benchmark(device(tmp_path, script), LocalTransport(), [good, bad, model(tmp_path, "third.tflite", b"x")],
                  settings(sysroot, sessions=2, out=out))
    msg = str(info.value)
    assert "1 benchmark(s) failed: corrupt.tflite" in msg and "Failed to mmap model" in msg and str(out) in msg
    partial = info.value.partial_frame  # type: ignore[attr-defined]
    assert set(partial.model) == {"good", "third"} and set(partial["repeat"]) == {0, 1}
    import pandas as pd

    assert len(pd.read_csv(out)) == len(partial)


@pytest.mark.timeout(120)
def test_timeout_raises_device_error_with_partial_results(tmp_path: Path, sysroot: Path) -> None:
    script = fake_benchmark_model(tmp_path, sysroot, sleep_s=0.05)
    out = tmp_path / "res.parquet"
    with pytest.raises(DeviceError, match="timed out") as info:
        benchmark(device(tmp_path, script), LocalTransport(),
                  [model(tmp_path, "good.tflite"), model(tmp_path, "slow.tflite", b"s")],
                  settings(sysroot, timeout_s=2.0, out=out, seed=0))   # seed 0: block 0 runs good, then slow
    assert f"kept in {out}" in str(info.value)
    assert set(info.value.partial_frame.model) == {"good"}  # type: ignore[attr-defined]
    assert out.is_file()


@pytest.mark.timeout(120)
def test_hot_device_runs_after_cooldown_timeout_with_a_note(tmp_path: Path, sysroot: Path) -> None:
    script = fake_benchmark_model(tmp_path, sysroot, sleep_s=0.05)
    frame = benchmark(device(tmp_path, script), LocalTransport(), [model(tmp_path)],
                      settings(sysroot, cooldown_c=45.0, cooldown_timeout_s=0.0))
    note = frame.loc[frame.metric == "latency_avg", "note"].item()
    assert "still 52.0 C >= 45 C" in note


def test_missing_benchmark_binary_and_unknown_harness(tmp_path: Path) -> None:
    spec = DeviceSpec(name="x", transport="local", benchmark_binary=str(tmp_path / "nope"), workdir=str(tmp_path))
    with pytest.raises(BenchmarkError, match="missing or not executable"):
        benchmark(spec, LocalTransport(), [model(tmp_path)], BenchSettings(canary=False))
    with pytest.raises(BenchmarkError, match="needs a 'plan9/runner' harness"):
        select_harness(DeviceSpec(name="p", os="plan9"))
    assert isinstance(select_harness(DeviceSpec(name="l")), LitertRunnerHarness)


def test_device_python_without_litert_says_how_to_install(tmp_path: Path) -> None:
    fake_py = tmp_path / "python3"
    fake_py.write_text("#!/bin/sh\necho \"ERROR: ai-edge-litert is not installed for $0\" >&2\nexit 3\n")
    fake_py.chmod(0o755)
    spec = DeviceSpec(name="bare", transport="local", python=str(fake_py), workdir=str(tmp_path / "dev"))
    with pytest.raises(BenchmarkError, match=r"no ai-edge-litert .* -m pip install ai-edge-litert"):
        benchmark(spec, LocalTransport(), [model(tmp_path)], BenchSettings(canary=False))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shell", [["dash"], ["busybox", "sh"]])
def test_memwrap_is_posix_sh_and_samples_vmhwm(tmp_path: Path, shell: list[str]) -> None:
    if not shutil.which(shell[0]):
        pytest.skip(f"{shell[0]} not installed (make test installs it)")
    wrap = tmp_path / "memwrap.sh"
    wrap.write_text(RUNWRAP_SH)
    # a program that grows to ~40 MB, holds it, and exits 5
    prog = ["python3", "-c", "import time; b = bytearray(40 * 1024 * 1024); time.sleep(0.5); print('done'); raise SystemExit(5)"]
    res = subprocess.run([*shell, str(wrap), "0.05", *prog], capture_output=True, text=True, timeout=30)
    assert res.returncode == 5 and res.stdout == "done\n"
    kb = int(res.stderr.strip().rsplit("EDGELR_VMHWM_KB=", 1)[1])
    assert 40 * 1024 < kb < 400 * 1024
    if shell == ["dash"]:
        check = subprocess.run(["dash", "-n", str(wrap)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


@pytest.mark.timeout(60)
def test_harness_rows_override_and_extend_the_generic_ones(tmp_path: Path, sysroot: Path) -> None:
    """The seam the Android harness uses: extra["override_rows"] replace aggregates, extra["extra_rows"] add."""
    from edgelr.bench.harnesses import HARNESSES
    from edgelr.bench.harnesses.linux import BenchmarkModelHarness

    class PhoneLike(BenchmarkModelHarness):
        def parse(self, prog, result):  # type: ignore[no-untyped-def]
            out = super().parse(prog, result)
            out.bench.extra["override_rows"] = {"temp_before": (61.5, "dumpsys thermalservice")}
            out.bench.extra["extra_rows"] = [("rail_energy_per_inference", 1.25, "rail=S2M_VDD_CPUCL2")]
            return out

        def temperatures(self, t, root="", vcgencmd="vcgencmd"):  # type: ignore[no-untyped-def]
            return {"CPU0": 41.0}  # e.g. from dumpsys, instead of the sysfs tree (52 C)

    HARNESSES.register("testos/benchmark_model")(PhoneLike)
    try:
        script = fake_benchmark_model(tmp_path, sysroot, sleep_s=0.05)
        spec = DeviceSpec(name="phone", transport="local", os="testos", target="host",
                          benchmark_binary=str(script), workdir=str(tmp_path / "dev"))
        frame = benchmark(spec, LocalTransport(), [model(tmp_path)], settings(sysroot, cooldown_c=45.0, canary=False))
    finally:
        HARNESSES.pop("testos/benchmark_model")
    temp = frame.loc[frame.metric == "temp_before"]
    assert temp["value"].item() == 61.5 and temp["note"].item() == "dumpsys thermalservice"
    assert frame.loc[frame.metric == "temp_after", "value"].item() == 41.0
    rail = frame.loc[frame.metric == "rail_energy_per_inference"]
    assert (rail["value"].item(), rail["unit"].item(), rail["note"].item()) == (1.25, "mJ", "rail=S2M_VDD_CPUCL2")


def test_android_devices_get_the_android_harness() -> None:
    pytest.importorskip("device_agents.android")
    spec = DeviceSpec(name="p7", transport="adb", os="android", target="pixel7")
    assert type(select_harness(spec)).__name__ == "AndroidHarness"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("canaries, throttled", [([10.0, 20.0, 20.0], 1.0), ([10.0, 20.0, 10.5], 0.0)])
def test_throttling_canary_cools_down_and_retries(tmp_path: Path, sysroot: Path, monkeypatch: pytest.MonkeyPatch,
                                                  canaries: list[float], throttled: float) -> None:
    import edgelr.bench.run as run_mod

    seq = iter(canaries)  # baseline at setup, before the run, after the extra cool-down
    monkeypatch.setattr(run_mod.probes, "run_canary", lambda t, *a, **k: next(seq))
    msgs: list[str] = []
    script = fake_benchmark_model(tmp_path, sysroot, sleep_s=0.05)
    frame = benchmark(device(tmp_path, script), LocalTransport(), [model(tmp_path)], settings(sysroot),
                      progress=msgs.append)
    row = frame.loc[frame.metric == "throttled"]
    assert row["value"].item() == throttled
    assert f"canary {canaries[2]:.2f} ms vs baseline 10.00 ms" in row["note"].item()
    assert frame.loc[frame.metric == "canary", "value"].item() == canaries[2]
    assert any("> 1.10 x baseline 10.00 ms: cooling down" in m for m in msgs)
    with pytest.raises(StopIteration):
        next(seq)


@pytest.mark.timeout(120)
def test_sessions_are_interleaved_in_randomized_blocks(tmp_path: Path, sysroot: Path) -> None:
    """K sessions per model, block b holding one session of each model in the seeded random order."""
    from edgelr.bench.run import block_orders

    script = fake_benchmark_model(tmp_path, sysroot, sleep_s=0.01)
    a, b = model(tmp_path, "a.tflite", b"A"), model(tmp_path, "b.tflite", b"B")
    frame = benchmark(device(tmp_path, script), LocalTransport(), [a, b], settings(sysroot, sessions=6, seed=3,
                                                                                  canary=False))
    med = frame[frame["metric"] == "latency_median"]
    assert sorted(med.groupby("model")["repeat"].apply(sorted).tolist()) == [list(range(6))] * 2
    order = [row.model for row in med.sort_values("timestamp", kind="stable").itertuples()]
    # the run order of the models: per block, the seeded permutation (timestamps have 1 s resolution,
    # so compare the sequence of the args file instead)
    calls = [ln for ln in (tmp_path / "args.txt").read_text().splitlines() if ".tflite" in ln]
    ran = ["a" if "-a.tflite" in ln else "b" for ln in calls]
    expect = [["a", "b"][i] for blk in block_orders(2, 6, 3) for i in blk]
    assert ran == expect and len(set(order)) == 2
    assert any(blk == [1, 0] for blk in block_orders(2, 6, 3))   # not always A first
