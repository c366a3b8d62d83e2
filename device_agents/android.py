"""Android device-side probes and parsers (everything here runs over any transport, normally ``adb``).

Pure parsers (checked against ``tests/fixtures/android/``):

* :func:`parse_getprop` - ``getprop`` output (``[key]: [value]`` lines);
* :func:`parse_thermalservice` - ``dumpsys thermalservice``: the thermal status and ONLY the
  ``Current temperatures from HAL:`` block (the ``Cached temperatures:`` block is stale);
* :func:`normalise_battery` - ``/sys/class/power_supply/battery/{current_now,voltage_now,status}`` with the
  vendor quirks (mA instead of uA, positive while discharging): sign from ``status``, unit from magnitude,
  raw values kept;
* :func:`parse_odpm` / :func:`odpm_power` - Pixel on-device power monitor ``energy_value`` (``t=<ms>``, then
  ``CH3(T=...)[RAIL], <uWs>`` lines) -> average W per rail over a window, and mJ per inference.

Device-side work:

* :class:`OdpmProbe`, :class:`AndroidBatteryProbe` - registered in ``device_agents.probes.ENERGY_PROBES``
  (this module is imported by :mod:`device_agents.builtin`);
* :func:`android_device_info` (``edgelr devices check``).

The benchmark run through ``android_bench/harness.sh`` is host-side orchestration and lives in
:mod:`edgelr.bench.harnesses.android`.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import Any

from device_agents.probes import ENERGY_PROBES, EnergyProbe, EnergyReading, rooted_path
from device_agents.transport import Transport
from edgelr.errors import DeviceError

NAN = float("nan")
USB_CHARGING_NOTE = ("battery is charging (USB): current_now is meaningless for power; use ADB over Wi-Fi "
                     "('adb tcpip 5555', unplug) or a bypassed battery")
THERMAL_STATUS = {0: "NONE", 1: "LIGHT", 2: "MODERATE", 3: "SEVERE", 4: "CRITICAL", 5: "EMERGENCY",
                  6: "SHUTDOWN"}
TEMPERATURE_TYPES = {-1: "UNKNOWN", 0: "CPU", 1: "GPU", 2: "BATTERY", 3: "SKIN", 4: "USB_PORT",
                     5: "POWER_AMPLIFIER", 6: "BCL_VOLTAGE", 7: "BCL_CURRENT", 8: "BCL_PERCENTAGE", 9: "NPU"}


# --- getprop -----------------------------------------------------------------------------------------
def parse_getprop(text: str) -> dict[str, str]:
    """``getprop`` output -> {key: value}: ``[ro.product.model]: [Pixel 7]`` -> {"ro.product.model": "Pixel 7"}."""
    return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text, flags=re.M))


# --- thermal -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Temperature:
    """One ``Temperature{mValue=62.5, mType=0, mName=CPU0, mStatus=0}`` entry (degrees C)."""

    name: str
    value_c: float
    type: int
    status: int

    @property
    def type_name(self) -> str:
        return TEMPERATURE_TYPES.get(self.type, str(self.type))


@dataclass(frozen=True)
class ThermalState:
    """``dumpsys thermalservice``: the platform thermal status (-1 when absent) and the live HAL temperatures."""

    status: int
    temperatures: tuple[Temperature, ...]

    @property
    def status_name(self) -> str:
        return THERMAL_STATUS.get(self.status, "UNKNOWN")

    @property
    def throttled(self) -> bool:
        """Status LIGHT or worse: the platform has started to limit performance."""
        return self.status >= 1

    def max_c(self, type_name: str | None = None) -> float:
        """Hottest temperature (of one type: ``CPU``, ``SKIN``...), NaN when there is none."""
        vals = [t.value_c for t in self.temperatures if type_name is None or t.type_name == type_name]
        vals = [v for v in vals if math.isfinite(v)]
        return max(vals) if vals else NAN

    def by_name(self) -> dict[str, float]:
        """{sensor name: degrees C} of the live HAL temperatures."""
        return {t.name: t.value_c for t in self.temperatures}

    @property
    def hottest_c(self) -> float:
        """Hottest CPU temperature, else the hottest of any type (degrees C)."""
        cpu = self.max_c("CPU")
        return cpu if math.isfinite(cpu) else self.max_c()


_TEMP_RX = re.compile(r"Temperature\{mValue=([^,]+), mType=(-?\d+), mName=([^,]*), mStatus=(-?\d+)\}")


def parse_thermalservice(text: str) -> ThermalState:
    """Parse ``dumpsys thermalservice``; only the ``Current temperatures from HAL:`` block is read.

    Raises
    ------
    ValueError
        The text has neither a ``Thermal Status:`` line nor the HAL block (not a thermalservice dump).
    """
    status_m = re.search(r"^\s*Thermal Status:\s*(-?\d+)", text, flags=re.M)
    temps: list[Temperature] = []
    in_block = False
    seen_block = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Current temperatures from HAL"):
            in_block = seen_block = True
            continue
        if not in_block:
            continue
        m = _TEMP_RX.search(stripped)
        if m:
            try:
                value = float(m.group(1))
            except ValueError:
                value = NAN
            temps.append(Temperature(m.group(3), value, int(m.group(2)), int(m.group(4))))
        elif stripped:
            in_block = False
    if status_m is None and not seen_block:
        raise ValueError("not a 'dumpsys thermalservice' output: no 'Thermal Status:' line and no "
                         "'Current temperatures from HAL:' block")
    return ThermalState(int(status_m.group(1)) if status_m else -1, tuple(temps))


# --- battery ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatteryReading:
    """One battery sample normalised to SI units, with the raw sysfs strings kept.

    ``power_w`` is the power drawn from the battery (positive), NaN while charging or when unreadable;
    ``note`` says what was assumed (units, sign convention) or why it is NaN.
    """

    current_a: float
    voltage_v: float
    power_w: float
    status: str
    raw_current: str
    raw_voltage: str
    note: str


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"[-+]?\d+", text) else None


def normalise_battery(current_now: str, voltage_now: str, status: str) -> BatteryReading:
    """Normalise ``current_now`` / ``voltage_now`` (kernel ABI: uA, uV, negative = discharging).

    Vendors differ: some report mA (|value| < 10000 is read as mA: no phone draws under 10 mA while
    benchmarking, nor more than 10 A), some report a positive current while discharging. The sign comes
    from ``status`` (``Discharging`` / ``Not charging`` = drawing from the battery), not from the value.
    Voltage: > 100000 is uV, > 100 is mV, else V.
    """
    cur, volt, st = _int_or_none(current_now), _int_or_none(voltage_now), status.strip()
    notes: list[str] = []
    if cur is None or volt is None:
        return BatteryReading(NAN, NAN, NAN, st, current_now.strip(), voltage_now.strip(),
                              "battery current_now/voltage_now unreadable")
    if abs(cur) < 10000 and cur != 0:
        amps = cur / 1e3
        notes.append("current_now in mA (vendor quirk)")
    else:
        amps = cur / 1e6
    volts = volt / 1e6 if abs(volt) > 100000 else (volt / 1e3 if abs(volt) > 100 else float(volt))
    if volt and abs(volt) <= 100000:
        notes.append("voltage_now in mV" if abs(volt) > 100 else "voltage_now in V")
    low = st.lower()
    if low in ("discharging", "not charging"):
        if cur > 0:
            notes.append("positive current while discharging (vendor sign convention)")
        power = abs(amps) * abs(volts)
        amps = -abs(amps)
    elif low in ("charging", "full"):
        power = NAN
        notes.append(USB_CHARGING_NOTE)
    else:
        power = NAN
        notes.append(f"battery status {st!r} unknown; cannot tell charging from discharging")
    return BatteryReading(amps, volts, power, st, current_now.strip(), voltage_now.strip(), "; ".join(notes))


# --- ODPM ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OdpmReading:
    """Cumulative energy per rail: {rail: (t_ms, uWs)} over every ``iio:deviceN/energy_value``."""

    rails: dict[str, tuple[int, int]]


_ODPM_LINE = re.compile(r"^CH\d+\(T=(\d+)\)\[([^\]]+)\],\s*(\d+)\s*$")


def parse_odpm(text: str) -> OdpmReading:
    """One or more ``energy_value`` files (``t=473164`` then ``CH3(T=473164)[S2M_VDD_CPUCL2], 27837125``).

    Other lines (``file=...`` headers of the harness) are ignored.
    """
    rails: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        m = _ODPM_LINE.match(line.strip())
        if m:
            rails[m.group(2)] = (int(m.group(1)), int(m.group(3)))
    return OdpmReading(rails)


def parse_enabled_rails(text: str) -> dict[str, str]:
    """``enabled_rails`` (``CH2[VSYS_PWR_RFFE]:Cellular``) -> {rail: subsystem}."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^CH\d+\[([^\]]+)\]:?(.*)$", text, flags=re.M)}


def odpm_power(before: OdpmReading, after: OdpmReading) -> dict[str, float]:
    """Average power (W) per rail between two readings: delta uWs / delta ms / 1000.

    Rails missing in either reading, or whose clock did not advance, are left out.
    """
    out: dict[str, float] = {}
    for rail, (t1, e1) in after.rails.items():
        if rail not in before.rails:
            continue
        t0, e0 = before.rails[rail]
        if t1 > t0 and e1 >= e0:
            out[rail] = (e1 - e0) / 1e6 / ((t1 - t0) / 1000.0)
    return out


# --- device info ------------------------------------------------------------------------------------------
def android_device_info(t: Transport, benchmark_binary: str = "", timeout: float = 30.0) -> dict[str, Any]:
    """What ``edgelr devices check`` shows for an Android device.

    Keys: model, manufacturer, android, sdk, abi, soc, cores, max_freq_khz {cpuN: kHz}, governors
    {cpuN: name}, battery (normalised reading as a dict), thermal_status, hottest_c, odpm_rails
    {rail: subsystem}, benchmark_binary, benchmark_binary_present, benchmark_binary_sha256.
    """
    script = ("echo '##getprop'; getprop; "
              "echo '##cpus'; for c in /sys/devices/system/cpu/cpu[0-9]*; do "
              "f=$(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null); g=$(cat $c/cpufreq/scaling_governor 2>/dev/null); "
              "echo \"${c##*/} ${f:--} ${g:--}\"; done; "
              "echo '##battery'; for k in current_now voltage_now status; do "
              "cat /sys/class/power_supply/battery/$k 2>/dev/null || echo -; done; "
              "echo '##thermal'; dumpsys thermalservice 2>/dev/null; "
              "echo '##rails'; cat /sys/bus/iio/devices/iio:device*/enabled_rails 2>/dev/null; "
              "echo '##end'")
    res = t.run(script, timeout=timeout)
    sections: dict[str, str] = {}
    cur = None
    for line in res.stdout.splitlines():
        if line.startswith("##"):
            cur = line[2:]
            sections[cur] = ""
        elif cur:
            sections[cur] += line + "\n"
    if "end" not in sections:
        raise DeviceError(f"device info script did not finish on {getattr(t, 'serial', 'the device')} "
                          f"(exit {res.exit_code}): {res.stderr.strip()[:200]}")
    props = parse_getprop(sections.get("getprop", ""))
    freqs: dict[str, int] = {}
    governors: dict[str, str] = {}
    for line in sections.get("cpus", "").splitlines():
        parts = line.split()
        if len(parts) == 3:
            if parts[1].isdigit():
                freqs[parts[0]] = int(parts[1])
            if parts[2] != "-":
                governors[parts[0]] = parts[2]
    bat_lines = (sections.get("battery", "").splitlines() + ["-", "-", "-"])[:3]
    battery = normalise_battery(*bat_lines)
    try:
        thermal: ThermalState | None = parse_thermalservice(sections.get("thermal", ""))
    except ValueError:
        thermal = None
    info: dict[str, Any] = {
        "model": props.get("ro.product.model", ""),
        "manufacturer": props.get("ro.product.manufacturer", ""),
        "android": props.get("ro.build.version.release", ""),
        "sdk": props.get("ro.build.version.sdk", ""),
        "abi": props.get("ro.product.cpu.abi", ""),
        "soc": props.get("ro.soc.model", ""),
        "cores": len(freqs) or len(sections.get("cpus", "").splitlines()),
        "max_freq_khz": freqs,
        "governors": governors,
        "battery": {"status": battery.status, "current_a": battery.current_a, "voltage_v": battery.voltage_v,
                    "power_w": battery.power_w, "raw_current": battery.raw_current,
                    "raw_voltage": battery.raw_voltage, "note": battery.note},
        "thermal_status": thermal.status_name if thermal else "unavailable",
        "hottest_c": thermal.hottest_c if thermal else NAN,
        "odpm_rails": parse_enabled_rails(sections.get("rails", "")),
    }
    if benchmark_binary:
        sha = t.run(f"sha256sum {shlex.quote(benchmark_binary)} 2>/dev/null", timeout=timeout).stdout.split()
        info.update(benchmark_binary=benchmark_binary, benchmark_binary_present=bool(sha),
                    benchmark_binary_sha256=sha[0] if sha else "")
    return info


# --- energy probes (device_agents.probes.ENERGY_PROBES, after the generic sysfs ones) -----------------------
@ENERGY_PROBES.register("pixel_odpm", priority=20)
class OdpmProbe(EnergyProbe):
    """Pixel on-device power monitor: the sum over every rail of ``iio:device*/energy_value`` (uWs = uJ)."""

    kind = "energy"

    def command(self) -> str:
        d = rooted_path(self.root, "/sys/bus/iio/devices/iio:device")
        return f"cat {d}*/energy_value 2>/dev/null"

    def parse(self, text: str, t_s: float) -> EnergyReading:
        reading = parse_odpm(text)
        if not reading.rails:
            raise ValueError("no ODPM /sys/bus/iio/devices/iio:device*/energy_value (Pixel 6 and later only)")
        return EnergyReading(self.name, t_s, energy_uj=float(sum(e for _, e in reading.rails.values())), raw=text)


@ENERGY_PROBES.register("android_battery", priority=10)
class AndroidBatteryProbe(EnergyProbe):
    """Android battery ``current_now`` x ``voltage_now``, normalised (:func:`normalise_battery`)."""

    kind = "power"

    def command(self) -> str:
        d = rooted_path(self.root, "/sys/class/power_supply/battery")
        return (f'[ -d {d} ] && printf "%s|%s|%s\\n" "$(cat {d}/current_now 2>/dev/null)" '
                f'"$(cat {d}/voltage_now 2>/dev/null)" "$(cat {d}/status 2>/dev/null)"')

    def parse(self, text: str, t_s: float) -> EnergyReading:
        parts = text.strip().split("|")
        if len(parts) != 3:
            raise ValueError("no /sys/class/power_supply/battery")
        r = normalise_battery(*parts)
        if not math.isfinite(r.power_w):
            raise ValueError(r.note)
        return EnergyReading(self.name, t_s, power_w=r.power_w, raw=text)
