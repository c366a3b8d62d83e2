"""End to end over ADB: `edgelr bench` / `edgelr devices check` -> real adb server -> stand-in phone.

The phone is tests/adb_standin.py (a protocol-level STAND-IN for adbd, not Android); its
"benchmark_model" is tests/fake_benchmark_model.py, a real LiteRT benchmark on this host. The stand-in's
ODPM counters advance as if rails S2M_VDD_CPUCL2 and S3M_VDD_CPUCL1 drew 1.5 W and 0.5 W.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_agents.adb import ADBTransport
from edgelr.bench.harnesses.android import run_android_benchmark
from edgelr.errors import BenchmarkError
from tests.adb_standin import AdbServer, Faults, adb_server, make_device  # noqa: F401  (fixtures)
from tests.fake_benchmark_model import write_launcher

MODEL = Path(__file__).parent / "fixtures" / "android" / "tiny_mlp.tflite"
EDGELR = [sys.executable, "-m", "edgelr.cli.main"]


def _inventory(tmp: Path, dev, server: AdbServer) -> Path:
    bm = write_launcher(tmp / "benchmark_model")
    inv = tmp / "inv.toml"
    inv.write_text(f"""[devices.pixel]
transport = "adb"
target = "pixel7"
serial = "{dev.serial}"
adb_port = {server.port}
benchmark_binary = "/data/local/tmp/edgelr/bin/{{abi}}/benchmark_model"
benchmark_binary_local = "{bm}"
""")
    return inv


def _edgelr(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGELR, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).parent.parent)


def _rows(stdout: str) -> dict[str, dict]:
    doc = json.loads(stdout)
    return {r["metric"]: r for r in doc["rows"] if r["sample"] == -1}


@pytest.mark.timeout(300)
def test_cli_bench_end_to_end_and_pushes_once(adb_server: AdbServer, make_device, tmp_path: Path) -> None:  # noqa: F811
    dev = make_device()
    inv = _inventory(tmp_path, dev, adb_server)
    res = _edgelr("bench", str(MODEL), "--device", "pixel", "--inventory", str(inv), "--runs", "5", "--json")
    assert res.returncode == 0, res.stderr
    rows = _rows(res.stdout)
    first = rows["latency_avg"]
    assert (first["device"], first["transport"], first["target"], first["tool"]) == ("pixel", "adb", "pixel7",
                                                                                      "android_bench")
    assert "(arm64-v8a); harness.sh v1" in first["tool_version"]
    assert 0 < first["value"] < 50                                          # ms, a tiny MLP
    assert rows["latency_min"]["value"] <= rows["latency_median"]["value"] <= rows["latency_max"]["value"]
    assert rows["peak_memory"]["value"] > 20                                # MB: VmHWM of the LiteRT process
    # the harness' own figures replace the generic probes': dumpsys HAL block (BIG 62.5 C, status LIGHT)
    assert rows["temp_before"]["value"] == 62.5 and "dumpsys thermalservice" in rows["temp_before"]["note"]
    assert rows["throttled"]["value"] == 1.0 and "LIGHT" in rows["throttled"]["note"]
    assert rows["avg_power"]["value"] == pytest.approx(2.0, rel=0.2)        # ODPM: 1.5 W + 0.5 W
    assert "ODPM sum of 16 rails" in rows["avg_power"]["note"]
    assert rows["energy_per_inference"]["value"] == pytest.approx(rows["avg_power"]["value"] * first["value"],
                                                                  rel=1e-6)
    rails = {r["note"]: r["value"] for r in json.loads(res.stdout)["rows"]
             if r["metric"] == "rail_energy_per_inference"}
    assert len(rails) == 16 and all(r["unit"] == "mJ" for r in json.loads(res.stdout)["rows"]
                                    if r["metric"] == "rail_energy_per_inference")
    assert rails["rail=S2M_VDD_CPUCL2 (ODPM)"] == pytest.approx(1.5 * first["value"], rel=0.2)
    assert rails["rail=VSYS_PWR_DISPLAY (ODPM)"] == 0.0
    assert (dev.tmp_dir / "edgelr" / "bin" / "arm64-v8a" / "benchmark_model").is_file()
    # second run: binary, harness and model already there (sha256 skip): no sync session at all
    n_sync = dev.log.count("sync:")
    res = _edgelr("bench", str(MODEL), "--device", "pixel", "--inventory", str(inv), "--runs", "5", "--json")
    assert res.returncode == 0, res.stderr
    assert dev.log.count("sync:") == n_sync
    assert "already on the device" in res.stderr


@pytest.mark.timeout(240)
def test_cli_devices_check_android(adb_server: AdbServer, make_device, tmp_path: Path) -> None:  # noqa: F811
    dev = make_device()
    inv = _inventory(tmp_path, dev, adb_server)
    res = _edgelr("devices", "check", "pixel", "--inventory", str(inv), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ready"] is True and report["abi"] == "arm64-v8a" and report["cores"] == 8
    assert report["power_sensor"] == "pixel_odpm"
    assert report["program"]["tool"] == "android_bench"
    assert report["android"]["model"] == "Pixel 7" and report["android"]["thermal_status"] == "LIGHT"
    assert report["android"]["max_freq_khz"]["cpu6"] == 2850000


@pytest.mark.timeout(240)
def test_cli_bench_bad_model_fails_clearly(adb_server: AdbServer, make_device, tmp_path: Path) -> None:  # noqa: F811
    dev = make_device()
    inv = _inventory(tmp_path, dev, adb_server)
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00" * 64)
    res = _edgelr("bench", str(bad), "--device", "pixel", "--inventory", str(inv), "--runs", "2")
    assert res.returncode == 1
    assert "Benchmarking failed." in res.stderr and "Traceback" not in res.stderr


@pytest.mark.timeout(240)
def test_cli_bench_device_lost_mid_run(adb_server: AdbServer, make_device, tmp_path: Path) -> None:  # noqa: F811
    dev = make_device(Faults(drop_run_on="harness.sh", drop_run_delay=1.0))
    inv = _inventory(tmp_path, dev, adb_server)
    t0 = time.monotonic()
    res = _edgelr("bench", str(MODEL), "--device", "pixel", "--inventory", str(inv), "--runs", "5")
    assert res.returncode == 1
    assert "ended without an exit status" in res.stderr and "Traceback" not in res.stderr
    assert time.monotonic() - t0 < 120


@pytest.mark.timeout(120)
def test_cli_bench_unauthorized(adb_server: AdbServer, make_device, tmp_path: Path) -> None:  # noqa: F811
    dev = make_device(Faults(unauthorized=True), connect=False)
    inv = _inventory(tmp_path, dev, adb_server)
    res = _edgelr("bench", str(MODEL), "--device", "pixel", "--inventory", str(inv), "--runs", "2")
    assert res.returncode == 1
    assert "unauthorized" in res.stderr and "RSA key prompt" in res.stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_run_android_benchmark_directly(adb_server: AdbServer, make_device, tmp_path: Path,  # noqa: F811
                                        shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (apt-get install {shell}); make test installs it")
    dev = make_device(shell=["dash"] if shell == "dash" else ["busybox", "sh"])
    t = ADBTransport(serial=dev.serial, adb_port=adb_server.port)
    bm = write_launcher(tmp_path / "benchmark_model")
    run = run_android_benchmark(t, MODEL, runs=5, threads=1, affinity_mask="c0", benchmark_binary_local=str(bm),
                                interval_s=0.05)
    assert run.abi == "arm64-v8a" and run.harness.result["pinned"] == "c0"
    assert run.bench.inference is not None and run.bench.inference.count >= 5
    assert run.peak_memory_mb > 20 and len(run.harness.samples) >= 3
    # the stand-in's dumpsys: BIG 62.5 C and thermal status LIGHT (the harness reads them before/after)
    assert (run.temp_before_c, run.throttled) == (62.5, True)
    assert run.rail_power_w["S2M_VDD_CPUCL2"] == pytest.approx(1.5, rel=0.2)
    assert run.rail_power_w["S3M_VDD_CPUCL1"] == pytest.approx(0.5, rel=0.2)
    rails = {n: v for m, v, n in run.rail_rows()}
    assert rails["rail=S2M_VDD_CPUCL2 (ODPM)"] == pytest.approx(run.rail_power_w["S2M_VDD_CPUCL2"]
                                                                 * run.bench.latency_avg_ms)
    over = run.override_rows()
    assert over["temp_before"][0] == 62.5 and over["throttled"][0] == 1.0
    assert math.isfinite(over["energy_per_inference"][0])
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"junk")
    with pytest.raises(BenchmarkError, match="Benchmarking failed"):
        run_android_benchmark(t, bad, runs=2, benchmark_binary_local=str(bm))


@pytest.mark.timeout(60)
def test_android_device_info(adb_server: AdbServer, make_device) -> None:  # noqa: F811
    from device_agents.android import android_device_info

    dev = make_device()
    t = ADBTransport(serial=dev.serial, adb_port=adb_server.port)
    info = android_device_info(t, "/data/local/tmp/edgelr/bin/arm64-v8a/benchmark_model")
    assert (info["model"], info["android"], info["abi"], info["soc"]) == ("Pixel 7", "14", "arm64-v8a", "GS201")
    assert info["cores"] == 8 and info["max_freq_khz"]["cpu7"] == 2850000 and info["max_freq_khz"]["cpu0"] == 1803000
    assert set(info["governors"].values()) == {"sched_pixel"}
    assert info["battery"]["status"] == "Discharging" and info["battery"]["power_w"] == pytest.approx(1.5963, abs=1e-3)
    assert (info["thermal_status"], info["hottest_c"]) == ("LIGHT", 62.5)
    assert len(info["odpm_rails"]) == 16 and info["odpm_rails"]["S2M_VDD_CPUCL2"] == "CPU(BIG)"
    assert info["benchmark_binary_present"] is False
