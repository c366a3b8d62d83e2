"""Android probe parsers against fixtures in the formats real phones print (tests/fixtures/android/)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from device_agents.android import (
    normalise_battery, odpm_power, parse_enabled_rails, parse_getprop, parse_odpm, parse_thermalservice,
)
from edgelr.bench.harnesses.android import HarnessRecord, _assemble, parse_harness_output
from edgelr.bench.parse import parse_benchmark_output
from edgelr.errors import BenchmarkError

FIX = Path(__file__).parent / "fixtures" / "android"
IIO = FIX / "sys" / "bus" / "iio" / "devices"


def test_getprop() -> None:
    props = parse_getprop((FIX / "getprop.txt").read_text())
    assert props["ro.product.model"] == "Pixel 7"
    assert props["ro.product.cpu.abi"] == "arm64-v8a"
    assert props["ro.product.cpu.abilist"] == "arm64-v8a,armeabi-v7a,armeabi"
    assert len(props) == 13


def test_thermalservice_reads_only_the_current_hal_block() -> None:
    state = parse_thermalservice((FIX / "dumpsys_thermalservice.txt").read_text())
    names = [t.name for t in state.temperatures]
    assert names == ["battery", "BIG", "MID", "LITTLE", "G3D", "VIRTUAL-SKIN", "TPU"]
    big = next(t for t in state.temperatures if t.name == "BIG")
    assert (big.value_c, big.type_name, big.status) == (62.5, "CPU", 1)   # cached block says 31.0
    assert state.max_c("SKIN") == 41.3                                     # cached block says 29.5
    assert state.hottest_c == 62.5
    assert state.max_c("BATTERY") == 38.25
    assert (state.status, state.status_name, state.throttled) == (1, "LIGHT", True)


def test_thermalservice_status_none_and_garbage() -> None:
    text = "Thermal Status: 0\nCached temperatures:\n\tTemperature{mValue=99.0, mType=0, mName=X, mStatus=0}\n"
    state = parse_thermalservice(text)
    assert (state.throttled, state.temperatures) == (False, ())
    assert math.isnan(state.hottest_c)
    with pytest.raises(ValueError, match="not a 'dumpsys thermalservice'"):
        parse_thermalservice("Can't find service: thermalservice\n")


def _battery(name: str):
    d = FIX / "power_supply" / name
    return normalise_battery(*((d / f).read_text() for f in ("current_now", "voltage_now", "status")))


def test_battery_kernel_abi_uA_negative_discharging() -> None:
    r = _battery("pixel_discharging")
    assert (r.current_a, r.voltage_v, r.note) == (-0.412345, 3.87125, "")
    assert r.power_w == pytest.approx(0.412345 * 3.87125)
    assert (r.raw_current, r.raw_voltage) == ("-412345", "3871250")


def test_battery_vendor_mA_positive_while_discharging() -> None:
    r = _battery("vendor_ma_positive")
    assert r.current_a == pytest.approx(-0.523)                            # sign from status, unit from size
    assert r.power_w == pytest.approx(0.523 * 3.95)
    assert "mA" in r.note and "positive current while discharging" in r.note
    assert r.raw_current == "523"


def test_battery_charging_gives_nan_with_the_reason() -> None:
    for name in ("usb_charging", "vendor_ma_negative_charging"):
        r = _battery(name)
        assert math.isnan(r.power_w)
        assert "ADB over Wi-Fi" in r.note
    r = _battery("vendor_ma_negative_charging")
    assert (r.voltage_v, r.current_a) == (4.2, -0.8) and "voltage_now in mV" in r.note
    bad = normalise_battery("", "3800000", "Discharging")
    assert math.isnan(bad.power_w) and "unreadable" in bad.note


def test_odpm_energy_value_and_rails() -> None:
    r0 = parse_odpm((IIO / "iio:device0" / "energy_value").read_text())
    assert len(r0.rails) == 8
    assert r0.rails["S2M_VDD_CPUCL2"] == (473164, 27837125)
    both = parse_odpm("file=a\n" + (IIO / "iio:device0" / "energy_value").read_text() + "file=b\n"
                      + (IIO / "iio:device1" / "energy_value").read_text())
    assert len(both.rails) == 16 and both.rails["VSYS_PWR_DISPLAY"] == (473165, 63226589)
    rails = parse_enabled_rails((IIO / "iio:device0" / "enabled_rails").read_text())
    assert rails["VSYS_PWR_RFFE"] == "Cellular" and len(rails) == 8


def test_odpm_power_from_two_readings() -> None:
    before = parse_odpm("t=1000\nCH3(T=1000)[S2M_VDD_CPUCL2], 5000000\nCH4(T=1000)[S3M_VDD_CPUCL1], 10\n"
                        "CH5(T=1000)[GONE], 1\n")
    # 2.5 s later: CPUCL2 +3.75 J (1.5 W), CPUCL1 +0 J, a new rail appears, one disappears
    after = parse_odpm("t=3500\nCH3(T=3500)[S2M_VDD_CPUCL2], 8750000\nCH4(T=3500)[S3M_VDD_CPUCL1], 10\n"
                       "CH6(T=3500)[NEW], 5\n")
    assert odpm_power(before, after) == {"S2M_VDD_CPUCL2": pytest.approx(1.5), "S3M_VDD_CPUCL1": 0.0}
    assert odpm_power(after, after) == {}                                 # clock did not advance


HARNESS_TEXT = """EDGELR-BLOCK-BEGIN thermal_before
Thermal Status: 0
Current temperatures from HAL:
\tTemperature{mValue=40.0, mType=0, mName=BIG, mStatus=0}
EDGELR-BLOCK-END
EDGELR-BLOCK-BEGIN odpm_before
EDGELR-BLOCK-END
EDGELR-BLOCK-BEGIN odpm_after
EDGELR-BLOCK-END
EDGELR-BLOCK-BEGIN thermal_after
Thermal Status: 2
Current temperatures from HAL:
\tTemperature{mValue=71.5, mType=0, mName=BIG, mStatus=2}
EDGELR-BLOCK-END
EDGELR-BLOCK-BEGIN bench_stdout
INFO: count=3 first=2000 curr=1000 min=1000 max=2000 avg=1500 std=400
INFO: count=4 first=1000 curr=1000 min=900 max=1100 avg=1000 std=50
INFO: Inference timings in us: Init: 500, First inference: 2000, Warmup (avg): 1500, Inference (avg): 1000
EDGELR-BLOCK-END
EDGELR-BLOCK-BEGIN bench_stderr
EDGELR-BLOCK-END
EDGELR-BLOCK-BEGIN samples
100 2048 2000 {cur} 4000000 301 {status}
110 4096 3000 {cur} 4000000 302 {status}
EDGELR-BLOCK-END
EDGELR-RESULT-BEGIN
harness_version=1
exit_code=0
pinned=none
pin_note=taskset c0 failed (cores offline or mask invalid); ran unpinned
vmhwm_kb=4096
samples=2
EDGELR-RESULT-END
"""


def _text(cur: str, status: str) -> str:
    return HARNESS_TEXT.replace("{cur}", cur).replace("{status}", status)


def _run_from(text: str):
    h = parse_harness_output(text)
    bench = parse_benchmark_output(h.blocks["bench_stdout"], h.blocks["bench_stderr"], h.exit_code)
    return _assemble(bench, h, "arm64-v8a", "/data/local/tmp/bm", "abc")


def test_harness_record_battery_energy_when_no_odpm() -> None:
    run = _run_from(_text("-500000", "Discharging"))
    assert len(run.harness.samples) == 2 and run.harness.samples[1][:3] == (110, 4096, 3000)
    assert run.peak_memory_mb == 4.0
    assert (run.temp_before_c, run.temp_after_c, run.throttled) == (40.0, 71.5, True)
    assert run.avg_power_w == pytest.approx(2.0)                          # 0.5 A x 4 V
    assert run.energy_per_inference_mj == pytest.approx(2.0)              # 2 W x 1.0 ms
    assert "battery current_now x voltage_now" in run.energy_source
    metrics = {m: (v, n) for m, v, n in run.metrics()}
    assert metrics["latency_avg"][0] == 1.0 and metrics["latency_min"][0] == 0.9
    assert "ran unpinned" in metrics["peak_memory"][1]


def test_harness_record_usb_charging_energy_is_nan_with_reason() -> None:
    run = _run_from(_text("900000", "Charging"))
    assert math.isnan(run.energy_per_inference_mj) and math.isnan(run.avg_power_w)
    metrics = {m: (v, n) for m, v, n in run.metrics()}
    assert "no energy sensor" in metrics["energy_per_inference"][1]
    assert "ADB over Wi-Fi" in metrics["energy_per_inference"][1]


def test_harness_record_truncated_is_an_error() -> None:
    text = _text("1", "Full")
    with pytest.raises(BenchmarkError, match="without its result record"):
        parse_harness_output(text[: text.index("EDGELR-RESULT-END")])
    assert isinstance(parse_harness_output(text), HarnessRecord)
