"""device_agents.probes: parsers on REFERENCE.md section 4 fixtures, readers over a real local transport
against fixture /sys trees, energy arithmetic, canary and cool-down."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from device_agents import probes
from device_agents.local import LocalTransport

FIX = Path(__file__).parent / "fixtures" / "sensors"


def read(name: str) -> str:
    return (FIX / name).read_text()


@pytest.fixture()
def t() -> LocalTransport:
    return LocalTransport()


# --- pure parsers -----------------------------------------------------------------------------------------
def test_millidegrees_and_vcgencmd_temp() -> None:
    assert probes.parse_millidegrees((FIX / "sysfs_pi/sys/class/thermal/thermal_zone0/temp").read_text()) == 48.85
    assert probes.parse_millidegrees("-1500\n") == -1.5
    with pytest.raises(ValueError):
        probes.parse_millidegrees("-ENODATA")
    assert probes.parse_vcgencmd_temp(read("vcgencmd_measure_temp.txt")) == 48.8
    with pytest.raises(ValueError):
        probes.parse_vcgencmd_temp("VCHI initialization failed")


@pytest.mark.parametrize("name, raw, now, since", [
    ("vcgencmd_get_throttled_0x0.txt", 0, (), ()),
    ("vcgencmd_get_throttled_0x50005.txt", 0x50005, ("under-voltage", "throttled"), ("under-voltage", "throttled")),
    ("vcgencmd_get_throttled_0xe0000.txt", 0xE0000, (),
     ("arm frequency capped", "throttled", "soft temperature limit")),
])
def test_decode_throttled(name: str, raw: int, now: tuple[str, ...], since: tuple[str, ...]) -> None:
    st = probes.decode_throttled(read(name))
    assert (st.raw, st.now, st.since_boot) == (raw, now, since)
    assert st.throttled_now == (raw == 0x50005)


def test_pmic_read_adc_sums_v_times_a_over_rails_with_both() -> None:
    total, rails = probes.parse_pmic_read_adc(read("vcgencmd_pmic_read_adc.txt"))
    expected = {
        "3V7_WL_SW": 0.0 * 3.71902100, "3V3_SYS": 0.05171748 * 3.30524400, "1V8_SYS": 0.17274760 * 1.79820200,
        "DDR_VDD2": 0.02049246 * 1.11098800, "DDR_VDDQ": 0.0 * 0.60439440, "1V1_SYS": 0.18934930 * 1.10878900,
        "0V8_SYS": 0.34066160 * 0.80036610, "VDD_CORE": 1.42880000 * 0.90659250, "3V3_DAC": 0.0 * 3.30402300,
        "3V3_ADC": 0.00061050 * 3.30402300, "0V8_AON": 0.0 * 0.79916610, "HDMI": 0.02002032 * 5.12808000,
    }
    assert set(rails) == set(expected)  # EXT5V and BATT have a voltage only
    for rail, watts in expected.items():
        assert rails[rail] == pytest.approx(watts)
    assert total == pytest.approx(sum(expected.values()))
    assert total == pytest.approx(2.3870, abs=1e-3)


def test_proc_status_and_time_v() -> None:
    st = probes.parse_proc_status(read("proc_status.txt"))
    assert st["VmHWM"] == 76928 and st["VmRSS"] == 75100 and st["VmPeak"] == 312676
    assert probes.parse_time_v(read("time_v_gnu.txt")) == pytest.approx(76928 / 1024)
    assert probes.parse_time_v(read("time_v_toybox.txt")) == pytest.approx(50.0)
    assert math.isnan(probes.parse_time_v("real 0m1s"))


def test_dumpsys_thermal_reads_the_hal_block_not_the_cache() -> None:
    from device_agents.android import parse_thermalservice

    temps = parse_thermalservice(read("dumpsys_thermalservice.txt")).by_name()
    assert temps == {"CPU0": 62.5, "CPU1": 60.25, "battery": 34.1, "skin": 38.9}


def test_cpu_list_and_hwmon_power() -> None:
    assert probes.parse_cpu_list("0-3") == 4
    assert probes.parse_cpu_list("0-5,7\n") == 7
    assert probes.parse_cpu_list("0") == 1
    with pytest.raises(ValueError):
        probes.parse_cpu_list("")
    assert probes.parse_hwmon_power("ina219", "2345000") == pytest.approx(2.345)
    assert probes.parse_hwmon_power("ina226", "", "812", "5120") == pytest.approx(0.812 * 5.120)
    with pytest.raises(ValueError):
        probes.parse_hwmon_power("ina226", "", "812", "")


def test_rapl_wraps_at_max_energy_range() -> None:
    assert probes.rapl_delta_uj(1000, 4000, 10_000) == 3000
    assert probes.rapl_delta_uj(9000, 500, 10_000) == 1500
    with pytest.raises(ValueError):
        probes.rapl_delta_uj(9000, 500, math.nan)


# --- readers over the local transport against fixture /sys trees --------------------------------------------
def test_read_temperatures_skips_unreadable_zones(t: LocalTransport) -> None:
    temps = probes.read_temperatures(t, root=str(FIX / "sysfs_x86"), vcgencmd="edgelr-test-no-vcgencmd")
    assert temps == {"zone0:acpitz": 27.8, "zone1:x86_pkg_temp": 52.0}
    assert probes.max_temperature(temps) == 52.0
    assert probes.read_temperatures(t, root=str(FIX / "sysfs_none"), vcgencmd="edgelr-test-no-vcgencmd") == {}
    assert math.isnan(probes.max_temperature({}))


def test_a_registered_thermal_probe_is_read_in_the_same_round_trip(t: LocalTransport) -> None:
    class FixedProbe(probes.ThermalProbe):
        def command(self) -> str:
            return "echo 41500"

        def parse(self, text: str) -> dict[str, float]:
            return {"fixed": probes.parse_millidegrees(text)} if text.strip() else {}

    probes.THERMAL_PROBES.register("fixed", priority=0)(FixedProbe)
    try:
        temps = probes.read_temperatures(t, root=str(FIX / "sysfs_x86"), vcgencmd="edgelr-test-no-vcgencmd")
    finally:
        probes.THERMAL_PROBES.pop("fixed")
    assert temps == {"zone0:acpitz": 27.8, "zone1:x86_pkg_temp": 52.0, "fixed": 41.5}


def test_vcgencmd_readers_with_a_stand_in_vcgencmd(t: LocalTransport, tmp_path: Path) -> None:
    fake = tmp_path / "vcgencmd"
    fake.write_text(f"#!/bin/sh\ncase \"$1\" in\n"
                    f"  measure_temp) cat {FIX / 'vcgencmd_measure_temp.txt'} ;;\n"
                    f"  get_throttled) cat {FIX / 'vcgencmd_get_throttled_0x50005.txt'} ;;\n"
                    f"  pmic_read_adc) cat {FIX / 'vcgencmd_pmic_read_adc.txt'} ;;\n"
                    f"esac\n")
    fake.chmod(0o755)
    temps = probes.read_temperatures(t, root=str(FIX / "sysfs_pi"), vcgencmd=str(fake))
    assert temps == {"zone0:cpu-thermal": 48.85, "vcgencmd": 48.8}
    st = probes.read_throttled(t, vcgencmd=str(fake))
    assert st is not None and st.raw == 0x50005
    assert probes.read_throttled(t, vcgencmd="edgelr-test-no-vcgencmd") is None
    meter = probes.find_energy_meter(t, root=str(FIX / "sysfs_none"), vcgencmd=str(fake))
    assert meter.probe is not None and meter.probe.name == "pi5_pmic"
    reading = meter.read(t)
    assert reading is not None and reading.power_w == pytest.approx(2.3870, abs=1e-3)


def test_read_cpu_cores_and_governors(t: LocalTransport) -> None:
    pi = probes.read_cpu(t, root=str(FIX / "sysfs_pi"))
    assert pi.cores == 4 and pi.governor == "ondemand" and len(pi.governors) == 4
    x86 = probes.read_cpu(t, root=str(FIX / "sysfs_x86"))
    assert x86.cores == 7
    assert x86.governors["cpu7"] == "performance" and x86.governor == "performance,powersave"


@pytest.mark.parametrize("tree, probe, watts", [("sysfs_ina219", "ina2xx", 2.345),
                                                 ("sysfs_ina226", "ina2xx", 0.812 * 5.120)])
def test_ina_probes(t: LocalTransport, tree: str, probe: str, watts: float) -> None:
    meter = probes.find_energy_meter(t, root=str(FIX / tree), vcgencmd="edgelr-test-no-vcgencmd")
    assert meter.probe is not None and meter.probe.name == probe
    reading = meter.read(t)
    assert reading is not None and reading.power_w == pytest.approx(watts)


def test_rapl_probe_and_energy_between(t: LocalTransport, tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    shutil.copytree(FIX / "sysfs_x86", root)
    meter = probes.find_energy_meter(t, root=str(root), vcgencmd="edgelr-test-no-vcgencmd")
    assert meter.probe is not None and meter.probe.name == "rapl"
    before = meter.read(t)
    assert before is not None and before.energy_uj == 262142000000 and before.max_range_uj == 262143328850
    # the counter wraps: 262143328850 - 262142000000 + 671150 = 2_000_000 uJ = 2 J
    (root / "sys/class/powercap/intel-rapl:0/energy_uj").write_text("671150\n")
    after = meter.read(t)
    res = probes.energy_between(before, after)
    assert res.energy_mj == pytest.approx(2000.0)
    assert res.avg_power_w == pytest.approx(2.0 / res.duration_s)
    assert res.per_inference_mj(4.0) == pytest.approx(res.avg_power_w * 4.0)


def test_no_sensor_gives_nan_with_reason(t: LocalTransport) -> None:
    meter = probes.find_energy_meter(t, root=str(FIX / "sysfs_none"), vcgencmd="edgelr-test-no-vcgencmd")
    assert meter.probe is None
    assert "no /sys/class/powercap/intel-rapl:0/energy_uj" in meter.note
    assert "no INA2xx hwmon device" in meter.note and "pmic_read_adc" in meter.note
    res = probes.energy_between(meter.read(t), meter.read(t), meter.note)
    assert math.isnan(res.energy_mj) and math.isnan(res.avg_power_w) and math.isnan(res.per_inference_mj(3.0))
    assert res.note == meter.note


def test_power_probe_energy_is_a_two_point_estimate() -> None:
    b = probes.EnergyReading("ina2xx", 10.0, power_w=2.0)
    a = probes.EnergyReading("ina2xx", 12.0, power_w=3.0)
    res = probes.energy_between(b, a)
    assert res.avg_power_w == 2.5 and res.energy_mj == pytest.approx(5000.0) and "before/after" in res.note


# --- canary and cool-down ------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_canary_runs_in_posix_sh(t: LocalTransport) -> None:
    for shell in ("/bin/sh", "/usr/bin/dash", "/usr/bin/busybox"):
        if not Path(shell).exists():
            continue
        sh = LocalTransport(shell=shell) if "busybox" not in shell else None
        if sh is None:
            res = t.run(f"busybox sh -c '{probes.canary_command(2000, 2)}'", timeout=30)
            ms = probes.parse_canary(res.stdout)
        else:
            ms = probes.run_canary(sh, loops=2000, reps=2)
        assert math.isfinite(ms) and ms > 0, shell
    assert math.isnan(probes.parse_canary("%s%N"))
    assert probes.parse_canary("canary_ns=7000000\ncanary_ns=5000000\n") == 5.0
    assert probes.is_throttled(11.1, 10.0) and not probes.is_throttled(10.9, 10.0)
    assert not probes.is_throttled(math.nan, 10.0)


def test_cooldown_waits_until_cool_then_times_out(t: LocalTransport, tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    shutil.copytree(FIX / "sysfs_pi", root)
    temp_file = root / "sys/class/thermal/thermal_zone0/temp"
    temp_file.write_text("80000\n")
    sleeps: list[float] = []

    def fake_sleep(s: float) -> None:  # the device cools while we wait
        sleeps.append(s)
        temp_file.write_text("44000\n")

    res = probes.wait_for_cooldown(t, 45.0, timeout_s=60, poll_s=5, root=str(root),
                                   vcgencmd="edgelr-test-no-vcgencmd", sleep=fake_sleep)
    assert res.reached and res.temp_c == 44.0 and sleeps == [5]
    temp_file.write_text("80000\n")
    res = probes.wait_for_cooldown(t, 45.0, timeout_s=0, root=str(root), vcgencmd="edgelr-test-no-vcgencmd")
    assert not res.reached and res.temp_c == 80.0 and "still 80.0 C" in res.note
    res = probes.wait_for_cooldown(t, 45.0, root=str(FIX / "sysfs_none"), vcgencmd="edgelr-test-no-vcgencmd")
    assert res.reached and math.isnan(res.temp_c) and "no temperature sensor" in res.note
