"""Sensors on a device: temperatures, throttling, power/energy, CPU governor and cores, peak memory.

Every reader runs shell commands through a :class:`~device_agents.transport.Transport` (so the same
code works locally and over ssh/adb) and hands the text to a pure parser (``parse_*``), which the tests
check against files in the exact formats of REFERENCE.md section 4 (``tests/fixtures/sensors/``).
Paths take a ``root`` prefix (default ``""``, the real ``/sys``; :func:`rooted_path`), so a fixture
tree can stand in for ``/sys`` in tests.

Two registries (:mod:`device_agents.registry`) hold the sensor families:

* :data:`THERMAL_PROBES` - temperature sources, all read in one round trip by :func:`read_temperatures`
  (sysfs thermal zones, ``vcgencmd measure_temp``);
* :data:`ENERGY_PROBES` - energy/power sensors, tried in priority order by :func:`find_energy_meter`
  (x86 RAPL counter, INA2xx hwmon power, Raspberry Pi 5 PMIC ADCs here; Pixel ODPM and the Android
  battery in :mod:`device_agents.android`), read before and after a benchmark.

A new sensor is one ``@ENERGY_PROBES.register(name, priority=...)`` (or ``THERMAL_PROBES``) class in a
module imported by :mod:`device_agents.builtin`. A device without a sensor gets NaN with the reason in
``note``; no figure is ever estimated from a model.
"""

from __future__ import annotations

import math
import re
import shlex
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from device_agents.registry import Registry
from device_agents.transport import Transport

NAN = float("nan")
PROBE_TIMEOUT_S = 30.0


def _run(t: Transport, cmd: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """stdout of ``cmd`` (exit status ignored: probes print what they find)."""
    return t.run(cmd, timeout=timeout).stdout


def rooted_path(root: str, path: str) -> str:
    """``root + path`` as one shell word: ``root`` quoted, ``path`` left as is so its globs expand."""
    return shlex.quote(root) + path if root else path


# --- temperatures ------------------------------------------------------------------------------------
def parse_millidegrees(text: str) -> float:
    """``/sys/class/thermal/thermal_zoneN/temp`` content (``48850``) -> degrees C (48.85)."""
    text = text.strip()
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"thermal zone temp {text!r} is not an integer in millidegrees C")
    return int(text) / 1000.0


def parse_vcgencmd_temp(text: str) -> float:
    """``vcgencmd measure_temp`` output (``temp=48.8'C``) -> 48.8 (degrees C)."""
    m = re.search(r"temp=(-?\d+(?:\.\d+)?)'C", text)
    if not m:
        raise ValueError(f"vcgencmd measure_temp printed {text.strip()!r}, expected temp=NN.N'C")
    return float(m.group(1))


def parse_zone_listing(text: str) -> dict[str, float]:
    """Lines ``thermal_zone0|cpu-thermal|48850`` (see :func:`read_temperatures`) -> {``zone0:cpu-thermal``: 48.85}.

    Zones whose temp is unreadable or not an integer (some report ``-ENODATA``) are skipped.
    """
    temps: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0].startswith("thermal_zone"):
            continue
        try:
            temps[f"{parts[0].replace('thermal_', '')}:{parts[1] or 'unknown'}"] = parse_millidegrees(parts[2])
        except ValueError:
            continue
    return temps


class Probe(ABC):
    """One sensor family on a device; ``root`` prefixes its ``/sys`` paths, ``vcgencmd`` names that tool."""

    name: str = "abstract"  # set by the registry's decorator

    def __init__(self, root: str = "", vcgencmd: str = "vcgencmd") -> None:
        self.root = root
        self.vcgencmd = vcgencmd

    @abstractmethod
    def command(self) -> str:
        """Shell command printing the raw reading (nothing when the device lacks the sensor)."""


class ThermalProbe(Probe):
    """A temperature source: ``parse`` turns its output into {name: degrees C} ({} when absent)."""

    @abstractmethod
    def parse(self, text: str) -> dict[str, float]:
        """Raw text -> {name: degrees C}; {} when the device lacks the source."""


#: Temperature sources by name, all read by :func:`read_temperatures` (in priority order).
THERMAL_PROBES: Registry[type[ThermalProbe]] = Registry("thermal probe", name_attr="name")


@THERMAL_PROBES.register("thermal_zones", priority=20)
class ThermalZonesProbe(ThermalProbe):
    """Every readable ``/sys/class/thermal/thermal_zone*`` -> {``zoneN:type``: C} (see :func:`parse_zone_listing`)."""

    def command(self) -> str:
        zones = rooted_path(self.root, "/sys/class/thermal/thermal_zone*")
        return (f'for z in {zones}; do [ -r "$z/temp" ] || continue; '
                f'printf "%s|%s|%s\\n" "${{z##*/}}" "$(cat "$z/type" 2>/dev/null)" "$(cat "$z/temp" 2>/dev/null)"; '
                f"done")

    def parse(self, text: str) -> dict[str, float]:
        return parse_zone_listing(text)


@THERMAL_PROBES.register("vcgencmd", priority=10)
class VcgencmdTempProbe(ThermalProbe):
    """Raspberry Pi ``vcgencmd measure_temp`` -> {``vcgencmd``: C}."""

    def command(self) -> str:
        v = shlex.quote(self.vcgencmd)
        return f"if command -v {v} >/dev/null 2>&1; then {v} measure_temp; fi"

    def parse(self, text: str) -> dict[str, float]:
        try:
            return {"vcgencmd": parse_vcgencmd_temp(text)}
        except ValueError:
            return {}


_SECTION = "##edgelr-probe "


def read_temperatures(t: Transport, root: str = "", vcgencmd: str = "vcgencmd") -> dict[str, float]:
    """Every :data:`THERMAL_PROBES` source in one round trip, merged into {name: degrees C}; {} when none."""
    sources = [cls(root=root, vcgencmd=vcgencmd) for cls in THERMAL_PROBES.values()]
    script = "; ".join(f"echo '{_SECTION}{i}'; {p.command()}" for i, p in enumerate(sources))
    parts: dict[int, list[str]] = {}
    current: list[str] | None = None
    for line in _run(t, script).splitlines():
        if line.startswith(_SECTION) and line[len(_SECTION):].isdigit():
            current = parts.setdefault(int(line[len(_SECTION):]), [])
        elif current is not None:
            current.append(line)
    temps: dict[str, float] = {}
    for i, probe in enumerate(sources):
        temps.update(probe.parse("\n".join(parts.get(i, []))))
    return temps


def max_temperature(temps: dict[str, float]) -> float:
    """Hottest reading in degrees C, NaN when there is none."""
    return max(temps.values()) if temps else NAN


# --- Raspberry Pi throttling ----------------------------------------------------------------------------
THROTTLE_BITS = {0: "under-voltage", 1: "arm frequency capped", 2: "throttled", 3: "soft temperature limit"}


@dataclass(frozen=True)
class ThrottleState:
    """Decoded ``vcgencmd get_throttled``: bits 0-3 now, bits 16-19 the same since boot."""

    raw: int
    now: tuple[str, ...]
    since_boot: tuple[str, ...]

    @property
    def throttled_now(self) -> bool:
        return bool(self.raw & 0b1110)  # capped, throttled or soft limit (under-voltage alone is not)


def decode_throttled(text: str) -> ThrottleState:
    """``throttled=0x50005`` -> ThrottleState(raw=0x50005, now=(under-voltage, throttled), since_boot=...)."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text)
    if not m:
        raise ValueError(f"vcgencmd get_throttled printed {text.strip()!r}, expected throttled=0xN")
    raw = int(m.group(1), 0)
    now = tuple(name for bit, name in THROTTLE_BITS.items() if raw & (1 << bit))
    since = tuple(name for bit, name in THROTTLE_BITS.items() if raw & (1 << (bit + 16)))
    return ThrottleState(raw, now, since)


def read_throttled(t: Transport, vcgencmd: str = "vcgencmd") -> ThrottleState | None:
    """``vcgencmd get_throttled`` decoded, None when the device has no vcgencmd."""
    text = _run(t, f"command -v {shlex.quote(vcgencmd)} >/dev/null 2>&1 && {shlex.quote(vcgencmd)} get_throttled")
    try:
        return decode_throttled(text)
    except ValueError:
        return None


# --- CPU ---------------------------------------------------------------------------------------------------
def parse_cpu_list(text: str) -> int:
    """``/sys/devices/system/cpu/online`` (``0-3,6``) -> number of CPUs (5)."""
    n = 0
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            n += int(hi) - int(lo) + 1
        else:
            int(part)
            n += 1
    if n == 0:
        raise ValueError(f"CPU list {text.strip()!r} names no CPU")
    return n


@dataclass(frozen=True)
class CpuInfo:
    """Cores online and the cpufreq governor of each CPU (empty when cpufreq is absent)."""

    cores: int
    governors: dict[str, str]

    @property
    def governor(self) -> str:
        values = sorted(set(self.governors.values()))
        return ",".join(values) if values else "unknown"


def read_cpu(t: Transport, root: str = "") -> CpuInfo:
    """Cores online (``/sys/devices/system/cpu/online``, else ``nproc``) and per-CPU governors."""
    online = rooted_path(root, "/sys/devices/system/cpu/online")
    govs = rooted_path(root, "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")
    text = _run(t, f"echo \"online=$(cat {online} 2>/dev/null)\"; echo \"nproc=$(nproc 2>/dev/null)\"; "
                   f"for g in {govs}; do [ -r \"$g\" ] && echo \"gov=$g=$(cat \"$g\")\"; done")
    cores = 0
    governors: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("online=") and line[7:].strip():
            try:
                cores = parse_cpu_list(line[7:])
            except ValueError:
                pass
        elif line.startswith("nproc=") and not cores and line[6:].strip().isdigit():
            cores = int(line[6:].strip())
        elif line.startswith("gov="):
            path, _, gov = line[4:].rpartition("=")
            m = re.search(r"/(cpu\d+)/cpufreq/", path)
            governors[m.group(1) if m else path] = gov.strip()
    return CpuInfo(cores, governors)


# --- peak memory ------------------------------------------------------------------------------------------
def parse_proc_status(text: str) -> dict[str, int]:
    """``/proc/PID/status`` -> {``VmHWM``: kB, ``VmRSS``: kB, ...} for every ``Vm*`` line."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^(Vm\w+):\s+(\d+) kB", line)
        if m:
            values[m.group(1)] = int(m.group(2))
    return values


def parse_time_v(text: str) -> float:
    """Peak RSS in MB from GNU ``/usr/bin/time -v`` or Android toybox ``time -v``; NaN when absent."""
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text) or re.search(r"Max RSS \(KiB\):\s*(\d+)", text)
    return int(m.group(1)) / 1024.0 if m else NAN


# --- energy -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnergyReading:
    """One reading: a cumulative counter (``energy_uj``) or an instantaneous power (``power_w``)."""

    probe: str
    t_s: float
    energy_uj: float = NAN
    max_range_uj: float = NAN
    power_w: float = NAN
    raw: str = ""


@dataclass(frozen=True)
class EnergyResult:
    """Energy over a window: total mJ, average W, and how it was obtained (or why it is NaN)."""

    energy_mj: float
    avg_power_w: float
    duration_s: float
    note: str

    def per_inference_mj(self, latency_ms: float) -> float:
        """Average power x mean latency (W x ms = mJ): the energy of one inference."""
        return self.avg_power_w * latency_ms if math.isfinite(self.avg_power_w) else NAN


def rapl_delta_uj(before: float, after: float, max_range_uj: float) -> float:
    """Counter difference with one wrap-around at ``max_energy_range_uj``."""
    if after >= before:
        return after - before
    if not math.isfinite(max_range_uj) or max_range_uj <= 0:
        raise ValueError(f"RAPL counter went back ({before} -> {after}) and max_energy_range_uj is unknown")
    return after + max_range_uj - before


def parse_pmic_read_adc(text: str) -> tuple[float, dict[str, float]]:
    """Raspberry Pi 5 ``vcgencmd pmic_read_adc`` -> (total W, {rail: W}) summing V*A over rails with both.

    Lines: ``VDD_CORE_A current(7)=1.42880000A`` and ``VDD_CORE_V volt(15)=0.90659250V``. Rails with only a
    voltage (EXT5V_V) are left out, so USB/peripheral load is not included.
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(\S+)_([AV]) (?:current|volt)\(\d+\)=([-+\d.eE]+)[AV]\s*$", line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    rails = {rail: amps[rail] * volts[rail] for rail in sorted(amps) if rail in volts}
    if not rails:
        raise ValueError("vcgencmd pmic_read_adc printed no rail with both a current and a voltage")
    return sum(rails.values()), rails


def parse_hwmon_power(name: str, power_uw: str = "", curr_ma: str = "", in_mv: str = "") -> float:
    """INA2xx hwmon -> W: ``power1_input`` (uW) when present, else ``curr1_input`` (mA) x ``in1_input`` (mV)."""
    if power_uw.strip():
        return int(power_uw.strip()) / 1e6
    if curr_ma.strip() and in_mv.strip():
        return int(curr_ma.strip()) * int(in_mv.strip()) / 1e6
    raise ValueError(f"hwmon device {name!r} has neither power1_input nor curr1_input and in1_input")


class EnergyProbe(Probe):
    """One energy/power sensor family; :meth:`read` raises ValueError when the device lacks it."""

    kind: str = "power"  # "energy": cumulative counter; "power": instantaneous

    @abstractmethod
    def parse(self, text: str, t_s: float) -> EnergyReading:
        """Raw text -> reading; ValueError when the sensor is absent or unreadable."""

    def read(self, t: Transport) -> EnergyReading:
        now = time.monotonic()
        text = _run(t, self.command())
        return self.parse(text, now)


#: Energy/power sensors by name, tried in priority order (higher first) by :func:`find_energy_meter`.
ENERGY_PROBES: Registry[type[EnergyProbe]] = Registry("energy probe", name_attr="name")


@ENERGY_PROBES.register("rapl", priority=50)
class RaplProbe(EnergyProbe):
    """x86 RAPL package counter ``/sys/class/powercap/intel-rapl:0/energy_uj`` (often root only)."""

    kind = "energy"

    def command(self) -> str:
        d = rooted_path(self.root, "/sys/class/powercap/intel-rapl:0")
        return f'echo "energy_uj=$(cat {d}/energy_uj 2>&1)"; echo "max=$(cat {d}/max_energy_range_uj 2>/dev/null)"'

    def parse(self, text: str, t_s: float) -> EnergyReading:
        e = re.search(r"^energy_uj=(\d+)\s*$", text, re.M)
        if not e:
            detail = re.search(r"^energy_uj=(.*)$", text, re.M)
            why = detail.group(1) if detail else text
            if "ermission denied" in why:
                raise ValueError("intel-rapl:0/energy_uj is readable by root only (run as root or "
                                 "chmod o+r it)")
            if "No such file" in why or not why.strip():
                raise ValueError("no /sys/class/powercap/intel-rapl:0/energy_uj")
            raise ValueError(f"intel-rapl:0/energy_uj unreadable ({why.strip()[:80]})")
        mx = re.search(r"^max=(\d+)\s*$", text, re.M)
        return EnergyReading(self.name, t_s, energy_uj=float(e.group(1)),
                             max_range_uj=float(mx.group(1)) if mx else NAN, raw=text)


@ENERGY_PROBES.register("ina2xx", priority=40)
class Ina2xxProbe(EnergyProbe):
    """INA219/INA226/INA3221... through hwmon (``/sys/class/hwmon/hwmon*/name`` starting with ``ina``)."""

    def command(self) -> str:
        h = rooted_path(self.root, "/sys/class/hwmon/hwmon*")
        return (f'for d in {h}; do n=$(cat "$d/name" 2>/dev/null); case "$n" in ina*) '
                f'printf "%s|%s|%s|%s\\n" "$n" "$(cat "$d/power1_input" 2>/dev/null)" '
                f'"$(cat "$d/curr1_input" 2>/dev/null)" "$(cat "$d/in1_input" 2>/dev/null)"; break;; esac; done')

    def parse(self, text: str, t_s: float) -> EnergyReading:
        for line in text.splitlines():
            parts = line.split("|")
            if len(parts) == 4:
                return EnergyReading(self.name, t_s, power_w=parse_hwmon_power(*parts), raw=text)
        raise ValueError("no INA2xx hwmon device")


@ENERGY_PROBES.register("pi5_pmic", priority=30)
class PmicProbe(EnergyProbe):
    """Raspberry Pi 5 PMIC ADCs via ``vcgencmd pmic_read_adc``."""

    def command(self) -> str:
        v = shlex.quote(self.vcgencmd)
        return f"command -v {v} >/dev/null 2>&1 && {v} pmic_read_adc"

    def parse(self, text: str, t_s: float) -> EnergyReading:
        if not text.strip():
            raise ValueError("no vcgencmd pmic_read_adc (a Raspberry Pi 5 only sensor)")
        total, _ = parse_pmic_read_adc(text)
        return EnergyReading(self.name, t_s, power_w=total, raw=text)


@dataclass
class EnergyMeter:
    """The first working probe of a device, or the reasons none works."""

    probe: EnergyProbe | None
    reasons: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        if self.probe is not None:
            return f"sensor {self.probe.name}"
        return "no energy sensor: " + "; ".join(self.reasons)

    def read(self, t: Transport) -> EnergyReading | None:
        if self.probe is None:
            return None
        try:
            return self.probe.read(t)
        except ValueError:
            return None


def find_energy_meter(t: Transport, root: str = "", vcgencmd: str = "vcgencmd") -> EnergyMeter:
    """Try :data:`ENERGY_PROBES` in priority order; the first that reads is used."""
    reasons = []
    for cls in ENERGY_PROBES.values():
        probe = cls(root=root, vcgencmd=vcgencmd)
        try:
            probe.read(t)
            return EnergyMeter(probe)
        except ValueError as exc:
            reasons.append(f"{probe.name}: {exc}")
    return EnergyMeter(None, reasons)


def energy_between(before: EnergyReading | None, after: EnergyReading | None, note: str = "") -> EnergyResult:
    """Energy and average power between two readings of one probe; NaN with the reason when unknown.

    Counters: exact difference (wrap-around handled). Power sensors: mean of the two readings times
    the window, a two-point estimate, said so in the note.
    """
    if before is None or after is None:
        return EnergyResult(NAN, NAN, NAN, note or "no energy reading")
    dt = after.t_s - before.t_s
    if dt <= 0:
        return EnergyResult(NAN, NAN, dt, f"{before.probe}: empty time window")
    if math.isfinite(before.energy_uj) and math.isfinite(after.energy_uj):
        try:
            d_uj = rapl_delta_uj(before.energy_uj, after.energy_uj, after.max_range_uj)
        except ValueError as exc:
            return EnergyResult(NAN, NAN, dt, f"{before.probe}: {exc}")
        return EnergyResult(d_uj / 1000.0, d_uj / 1e6 / dt, dt,
                            f"{before.probe} counter over {dt:.2f} s (includes model load)")
    p = (before.power_w + after.power_w) / 2.0
    return EnergyResult(p * dt * 1000.0, p, dt,
                        f"{before.probe}: mean of power readings before/after ({before.power_w:.3f}, "
                        f"{after.power_w:.3f} W) over {dt:.2f} s")


# --- throttling canary --------------------------------------------------------------------------------
CANARY_LOOPS = 5000


def canary_command(loops: int = CANARY_LOOPS, reps: int = 3) -> str:
    """POSIX-sh busy loop timed with ``date +%s%N``, ``reps`` times: one ns figure per line."""
    return (f'r=0; while [ $r -lt {reps} ]; do s=$(date +%s%N); i=0; '
            f'while [ $i -lt {loops} ]; do i=$((i+1)); done; e=$(date +%s%N); '
            f'echo "canary_ns=$((e-s))"; r=$((r+1)); done')


def parse_canary(text: str) -> float:
    """Minimum canary time in ms; NaN when ``date`` lacks ``%N`` (no numbers)."""
    values = [int(v) for v in re.findall(r"^canary_ns=(\d+)\s*$", text, re.M)]
    return min(values) / 1e6 if values else NAN


def run_canary(t: Transport, loops: int = CANARY_LOOPS, reps: int = 2) -> float:
    """Time the fixed canary workload on the device (ms, minimum of ``reps``); NaN when not measurable."""
    return parse_canary(_run(t, canary_command(loops, reps), timeout=120))


def is_throttled(canary_ms: float, baseline_ms: float, factor: float = 1.10) -> bool:
    """A canary slower than ``factor`` x the session's baseline means the CPU is throttled."""
    return math.isfinite(canary_ms) and math.isfinite(baseline_ms) and canary_ms > factor * baseline_ms


# --- cool-down --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cooldown:
    """Outcome of waiting for the device to cool: reached, the last max temperature, the wait (s)."""

    reached: bool
    temp_c: float
    waited_s: float
    note: str


def wait_for_cooldown(t: Transport, limit_c: float, timeout_s: float = 300.0, poll_s: float = 5.0,
                      root: str = "", vcgencmd: str = "vcgencmd",
                      sleep: Callable[[float], None] | None = None,
                      reader: Callable[[], dict[str, float]] | None = None) -> Cooldown:
    """Poll temperatures until the hottest is below ``limit_c`` or ``timeout_s`` passes.

    ``reader`` replaces :func:`read_temperatures` (an OS harness may read ``dumpsys`` instead).
    """
    sleep_fn = sleep or time.sleep
    read = reader or (lambda: read_temperatures(t, root, vcgencmd))
    t0 = time.monotonic()
    while True:
        temp = max_temperature(read())
        waited = time.monotonic() - t0
        if not math.isfinite(temp):
            return Cooldown(True, NAN, waited, "no temperature sensor: cool-down not checked")
        if temp < limit_c:
            return Cooldown(True, temp, waited, "")
        if waited >= timeout_s:
            return Cooldown(False, temp, waited, f"still {temp:.1f} C >= {limit_c:g} C after {waited:.0f} s "
                                                 f"cool-down; measured hot")
        sleep_fn(min(poll_s, max(0.0, timeout_s - waited)) or poll_s)
