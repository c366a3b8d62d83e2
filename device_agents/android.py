"""Android-specific probes and the benchmark run through ``android_bench/harness.sh``.

Pure parsers (checked against ``tests/fixtures/android/``):

* :func:`parse_getprop` - ``getprop`` output (``[key]: [value]`` lines);
* :func:`parse_thermalservice` - ``dumpsys thermalservice``: the thermal status and ONLY the
  ``Current temperatures from HAL:`` block (the ``Cached temperatures:`` block is stale);
* :func:`normalise_battery` - ``/sys/class/power_supply/battery/{current_now,voltage_now,status}`` with the
  vendor quirks (mA instead of uA, positive while discharging): sign from ``status``, unit from magnitude,
  raw values kept;
* :func:`parse_odpm` / :func:`odpm_power` - Pixel on-device power monitor ``energy_value`` (``t=<ms>``, then
  ``CH3(T=...)[RAIL], <uWs>`` lines) -> average W per rail over a window, and mJ per inference;
* :func:`parse_harness_output` - the record ``harness.sh`` prints.

Device-side work (through any :class:`~device_agents.transport.Transport`, normally ``adb``):

* :class:`AndroidHarness` - registered as ``android/benchmark_model`` in :mod:`edgelr.bench.harness`, so
  ``edgelr bench --device <android device>`` runs through it (push harness + the ABI's binary once, run,
  parse; the harness' temperatures, thermal status, power and per-rail energy go into ``bench.extra``);
* :class:`OdpmProbe`, :class:`AndroidBatteryProbe` - appended to ``device_agents.probes.ENERGY_PROBES``;
* :func:`android_device_info` (``edgelr devices check``) and :func:`run_android_benchmark` (one run
  without the orchestration).
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agents.probes import ENERGY_PROBES, EnergyProbe, EnergyReading
from device_agents.procs import leftover_messages, push_wrapper, wrap_command, wrapper_options
from device_agents.transport import RunResult, Transport
from edgelr.bench.harness import Harness, ProgramInfo, register_harness
from edgelr.bench.harness import HarnessOutput as BenchHarnessOutput
from edgelr.bench.parse import parse_benchmark_output
from edgelr.errors import BenchmarkError, DeviceError

NAN = float("nan")
HARNESS_NAME = "harness.sh"
DEFAULT_WORKDIR = "/data/local/tmp/edgelr"
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


# --- harness output --------------------------------------------------------------------------------------
@dataclass
class HarnessRecord:
    """What ``harness.sh`` printed: named text blocks, the key=value record, and the samples table.

    ``samples`` rows: (uptime_cs, vmhwm_kb, vmrss_kb, current_now, voltage_now, battery_temp, status), the
    sysfs fields kept as raw strings (``-`` when unreadable).
    """

    blocks: dict[str, str] = field(default_factory=dict)
    result: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[int, int, int, str, str, str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return int(self.result.get("exit_code", "-1"))


def parse_harness_output(text: str) -> HarnessRecord:
    """Split the harness' stdout into blocks and the result record.

    Raises
    ------
    BenchmarkError
        No ``EDGELR-RESULT-END`` line: the harness was killed or the output truncated.
    """
    out = HarnessRecord()
    name: str | None = None
    buf: list[str] = []
    in_result = False
    complete = False
    for line in text.splitlines():
        if name is not None:
            if line == "EDGELR-BLOCK-END":
                out.blocks[name] = "\n".join(buf) + ("\n" if buf else "")
                name, buf = None, []
            else:
                buf.append(line)
        elif line.startswith("EDGELR-BLOCK-BEGIN "):
            name = line.split(" ", 1)[1].strip()
        elif line == "EDGELR-RESULT-BEGIN":
            in_result = True
        elif line == "EDGELR-RESULT-END":
            in_result, complete = False, True
        elif in_result and "=" in line:
            k, v = line.split("=", 1)
            out.result[k.strip()] = v
    if not complete:
        raise BenchmarkError("the Android harness output ended without its result record "
                             "(EDGELR-RESULT-END); the harness was killed or the output was cut; rerun")
    for row in out.blocks.get("samples", "").splitlines():
        parts = row.split(" ", 6)
        if len(parts) >= 6 and parts[0].isdigit() and parts[1].isdigit():
            parts += ["-"] * (7 - len(parts))
            out.samples.append((int(parts[0]), int(parts[1]), int(parts[2] or 0), parts[3], parts[4],
                                parts[5], parts[6]))
    return out


# --- device info ------------------------------------------------------------------------------------------
def _q(path: str) -> str:
    return shlex.quote(path)


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
        sha = t.run(f"sha256sum {_q(benchmark_binary)} 2>/dev/null", timeout=timeout).stdout.split()
        info.update(benchmark_binary=benchmark_binary, benchmark_binary_present=bool(sha),
                    benchmark_binary_sha256=sha[0] if sha else "")
    return info


# --- the benchmark run -------------------------------------------------------------------------------------
def harness_path() -> Path:
    """The packaged ``android_bench/harness.sh``."""
    import android_bench  # noqa: PLC0415

    for folder in android_bench.__path__:  # a regular or (old editable installs) namespace package
        candidate = Path(folder) / HARNESS_NAME
        if candidate.is_file():
            return candidate
    raise BenchmarkError(f"android_bench/{HARNESS_NAME} is missing from this installation; reinstall edgelr")


def resolve_binary_local(template: str, abi: str) -> Path:
    """A local ``benchmark_model`` path; ``{abi}`` in it is replaced by the device ABI (``arm64-v8a``)."""
    p = Path(template.replace("{abi}", abi)).expanduser()
    if not p.is_file():
        raise BenchmarkError(f"benchmark_model for ABI {abi} not found at {p}; download LiteRT's "
                             f"android_aarch64_benchmark_model (arm64-v8a) or android_arm (armeabi-v7a) and set "
                             f"benchmark_binary_local in the inventory")
    return p


@dataclass
class AndroidRun:
    """One harness run: the parsed benchmark output plus the harness' own measurements.

    Memory in MB, power in W, energy in mJ, temperatures in degrees C; a NaN figure has its reason in
    ``notes[metric]``.
    """

    bench: Any                       # edgelr.bench.parse.BenchOutput
    harness: HarnessRecord
    abi: str
    binary: str
    binary_sha256: str
    peak_memory_mb: float
    temp_before_c: float
    temp_after_c: float
    throttled: bool | None
    avg_power_w: float
    energy_per_inference_mj: float
    rail_power_w: dict[str, float]
    energy_source: str
    notes: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> list[tuple[str, float, str]]:
        """(metric, value, note) aggregates this run measured (:data:`edgelr.bench.frame.METRICS` names) plus
        the per-rail rows of :meth:`rail_rows`."""
        b = self.bench
        rows: list[tuple[str, float, str]] = [
            ("init", b.init_ms, ""), ("first_inference", b.first_inference_ms, ""),
            ("warmup_avg", b.warmup_avg_ms, ""), ("latency_avg", b.latency_avg_ms, ""),
        ]
        if b.inference is not None:
            rows += [("latency_min", b.inference.min, ""), ("latency_max", b.inference.max, ""),
                     ("latency_std", b.inference.std, ""), ("latency_median", b.inference.median, ""),
                     ("latency_p95", b.inference.p95, "")]
        rows += [("tool_memory_init", b.memory_init_mb, ""), ("tool_memory_overall", b.memory_overall_mb, ""),
                 ("tool_peak_memory", b.peak_memory_mb, ""),
                 ("peak_memory", self.peak_memory_mb, self.notes.get("peak_memory", "VmHWM sampled by harness.sh")),
                 ("temp_before", self.temp_before_c, self.notes.get("temp", "")),
                 ("temp_after", self.temp_after_c, self.notes.get("temp", "")),
                 ("throttled", NAN if self.throttled is None else float(self.throttled),
                  self.notes.get("throttled", "")),
                 ("avg_power", self.avg_power_w, self.notes.get("energy", self.energy_source)),
                 ("energy_per_inference", self.energy_per_inference_mj, self.notes.get("energy", self.energy_source))]
        return rows + self.rail_rows()

    def rail_rows(self) -> list[tuple[str, float, str]]:
        """Per-rail ODPM energy per inference: rows of metric ``rail_energy_per_inference`` (mJ), note
        ``rail=NAME``: the rail's average power over the run x the mean latency."""
        lat = self.bench.latency_avg_ms
        return [("rail_energy_per_inference", w * lat if math.isfinite(lat) else NAN, f"rail={rail} (ODPM)")
                for rail, w in sorted(self.rail_power_w.items())]

    def override_rows(self) -> dict[str, tuple[float, str]]:
        """Aggregates the harness measured better than the generic probes can, {metric: (value, note)}:
        temperatures and thermal status from ``dumpsys thermalservice`` (when the phone has it), power and
        energy per inference from ODPM or the battery samples taken during the run (when measured)."""
        out: dict[str, tuple[float, str]] = {}
        for metric, value, note in self.metrics():
            if metric in ("temp_before", "temp_after", "throttled") and math.isfinite(value):
                out[metric] = (value, (note + "; " if note else "") + "dumpsys thermalservice")
            elif metric in ("avg_power", "energy_per_inference") and math.isfinite(value):
                out[metric] = (value, f"harness.sh: {note}")
        return out


def _benchmark_flags(model_remote: str, runs: int, warmup: int, threads: int, extra: list[str]) -> list[str]:
    return [f"--graph={model_remote}", f"--num_threads={threads}", f"--num_runs={runs}",
            f"--warmup_runs={warmup}", *extra]


def run_android_benchmark(t: Transport, model: Path, *, runs: int = 50, warmup: int = 1, threads: int = 1,
                          affinity_mask: str = "", workdir: str = DEFAULT_WORKDIR,
                          benchmark_binary: str = "", benchmark_binary_local: str = "",
                          use_xnnpack: bool = True, interval_s: float = 0.1, timeout: float = 900.0) -> AndroidRun:
    """One benchmark without the orchestration of :mod:`edgelr.bench.run` (no cool-down, no canary):
    :class:`AndroidHarness` pushes the harness, the ABI's ``benchmark_model`` and ``model`` (each skipped
    when the sha256 matches), runs it and parses everything it printed.

    Parameters
    ----------
    benchmark_binary
        Path of ``benchmark_model`` on the device (``{abi}`` replaced); default
        ``<workdir>/bin/<abi>/benchmark_model``.
    benchmark_binary_local
        A local ``benchmark_model`` (``{abi}`` replaced) pushed to ``benchmark_binary`` first.
    interval_s
        Sampling period (s) of VmHWM and the battery while the benchmark runs.

    Raises
    ------
    BenchmarkError
        The benchmark failed (non-zero exit, ``Benchmarking failed.``, unknown flags, no timing).
    DeviceError
        The device or the link failed (from the transport).
    """
    from device_agents.inventory import DeviceSpec  # noqa: PLC0415

    spec = DeviceSpec(name=getattr(t, "serial", None) or "android", transport=t.name, os="android",
                      benchmark_binary=benchmark_binary or f"{workdir}/bin/{{abi}}/benchmark_model",
                      benchmark_binary_local=benchmark_binary_local, workdir=workdir)
    harness = AndroidHarness(spec)
    prog = harness.prepare(t, workdir, timeout)
    model = Path(model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    remote_model = f"{workdir}/models/{digest[:12]}-{model.name}"
    t.push(model, remote_model, timeout=timeout, mode=0o644)
    cmd = harness.command(prog, remote_model, threads, runs, warmup, use_xnnpack, affinity_mask, interval_s, workdir)
    out = harness.parse(prog, t.run(cmd, timeout=timeout))
    run = out.bench.extra["android"]
    assert isinstance(run, AndroidRun)
    return run


def _assemble(bench: Any, h: HarnessRecord, abi: str, remote_bin: str, bin_sha: str) -> AndroidRun:
    notes: dict[str, str] = {}
    hwm_kb = int(h.result.get("vmhwm_kb", "0") or 0)
    peak_mb = hwm_kb / 1024.0 if hwm_kb > 0 else NAN
    if not hwm_kb:
        notes["peak_memory"] = "no VmHWM sample: the benchmark ended before the first sample"
    if h.result.get("pin_note"):
        notes["peak_memory"] = notes.get("peak_memory", "VmHWM sampled by harness.sh") + "; " + h.result["pin_note"]
    states: list[ThermalState | None] = []
    for name in ("thermal_before", "thermal_after"):
        try:
            states.append(parse_thermalservice(h.blocks.get(name, "")))
        except ValueError:
            states.append(None)
    before, after = states
    temp_before = before.hottest_c if before else NAN
    temp_after = after.hottest_c if after else NAN
    if before is None or after is None:
        notes["temp"] = "no 'dumpsys thermalservice' on the device"
        throttled: bool | None = None
        notes["throttled"] = notes["temp"]
    else:
        throttled = before.throttled or after.throttled
        notes["throttled"] = f"thermal status {before.status_name} -> {after.status_name}"
    latency = bench.latency_avg_ms
    rails = odpm_power(parse_odpm(h.blocks.get("odpm_before", "")), parse_odpm(h.blocks.get("odpm_after", "")))
    if rails:
        power = sum(rails.values())
        source = f"ODPM sum of {len(rails)} rails"
    else:
        readings = [normalise_battery(s[3], s[4], s[6]) for s in h.samples]
        good = [r.power_w for r in readings if math.isfinite(r.power_w)]
        if good:
            power = sum(good) / len(good)
            quirks = sorted({r.note for r in readings if r.note})
            source = "battery current_now x voltage_now, mean of %d samples%s" % (
                len(good), ("; " + "; ".join(quirks)) if quirks else "")
        else:
            power = NAN
            reasons = sorted({r.note for r in readings if r.note})
            source = ("no energy sensor: no ODPM rails and " +
                      ("; ".join(reasons) if reasons else "no battery samples"))
            notes["energy"] = source
    energy = power * latency if math.isfinite(power) and math.isfinite(latency) else NAN
    return AndroidRun(bench=bench, harness=h, abi=abi, binary=remote_bin, binary_sha256=bin_sha,
                      peak_memory_mb=peak_mb, temp_before_c=temp_before, temp_after_c=temp_after,
                      throttled=throttled, avg_power_w=power, energy_per_inference_mj=energy,
                      rail_power_w=rails, energy_source=source, notes=notes)


# --- energy probes for the orchestrator (device_agents.probes.ENERGY_PROBES) ---------------------------------
class OdpmProbe(EnergyProbe):
    """Pixel on-device power monitor: the sum over every rail of ``iio:device*/energy_value`` (uWs = uJ)."""

    name = "pixel_odpm"
    kind = "energy"

    def command(self) -> str:
        d = _probe_path(self.root, "/sys/bus/iio/devices/iio:device")
        return f"cat {d}*/energy_value 2>/dev/null"

    def parse(self, text: str, t_s: float) -> EnergyReading:
        reading = parse_odpm(text)
        if not reading.rails:
            raise ValueError("no ODPM /sys/bus/iio/devices/iio:device*/energy_value (Pixel 6 and later only)")
        return EnergyReading(self.name, t_s, energy_uj=float(sum(e for _, e in reading.rails.values())), raw=text)


class AndroidBatteryProbe(EnergyProbe):
    """Android battery ``current_now`` x ``voltage_now``, normalised (:func:`normalise_battery`)."""

    name = "android_battery"
    kind = "power"

    def command(self) -> str:
        d = _probe_path(self.root, "/sys/class/power_supply/battery")
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


def _probe_path(root: str, path: str) -> str:
    return shlex.quote(root) + path if root else path


for _probe in (OdpmProbe, AndroidBatteryProbe):
    if _probe not in ENERGY_PROBES:
        ENERGY_PROBES.append(_probe)


# --- the harness for edgelr.bench.run ------------------------------------------------------------------------
@register_harness("android/benchmark_model")
class AndroidHarness(Harness):
    """LiteRT ``benchmark_model`` on an Android device, run by ``android_bench/harness.sh``.

    ``benchmark_binary`` is the path on the phone; with ``benchmark_binary_local`` the local file is pushed
    there first (``{abi}`` in either path is replaced by ``getprop ro.product.cpu.abi``), once per device
    and ABI (sha256 skip). The harness samples VmHWM and the battery while the benchmark runs and reads
    ODPM and ``dumpsys thermalservice`` before and after; :meth:`parse` puts those in ``bench.extra``:
    ``extra["android"]`` (the :class:`AndroidRun`), ``extra["override_rows"]`` ({metric: (value, note)}:
    dumpsys temperatures and thermal status, harness-measured power and energy) and ``extra["extra_rows"]``
    ((metric, value, note) rows: per-rail ODPM energy per inference).
    """

    tool = "android_bench"

    def prepare(self, t: Transport, workdir: str, timeout: float) -> ProgramInfo:
        res = t.run("getprop ro.product.cpu.abi", timeout=timeout)
        abi = res.stdout.strip()
        if res.exit_code != 0 or not abi:
            raise BenchmarkError(f"device '{self.device.name}' answers no 'getprop ro.product.cpu.abi' "
                                 f"(exit {res.exit_code}); is it an Android device? Set os = \"linux\" otherwise")
        binary = (self.device.benchmark_binary or f"{workdir}/bin/{{abi}}/benchmark_model").replace("{abi}", abi)
        if self.device.benchmark_binary_local:
            t.push(resolve_binary_local(self.device.benchmark_binary_local, abi), binary, timeout=timeout,
                   mode=0o755)
        t.push(harness_path(), f"{workdir}/{HARNESS_NAME}", timeout=timeout, mode=0o755)
        push_wrapper(t, workdir, timeout)
        messages = leftover_messages(t, self.device.name, workdir, timeout)
        sha = t.run(f"test -x {_q(binary)} && sha256sum {_q(binary)}", timeout=timeout).stdout.split()
        if not sha:
            raise BenchmarkError(f"benchmark_binary {binary} is missing or not executable on device "
                                 f"'{self.device.name}'; push LiteRT's benchmark_model for {abi} there (or set "
                                 f"benchmark_binary_local to have edgelr push it)")
        return ProgramInfo(self.tool, f"benchmark_model sha256:{sha[0][:12]} ({abi}); harness.sh v1",
                           [binary], taskset=True, notes=[], messages=messages,
                           wrapper_options=wrapper_options(t, workdir))

    def command(self, prog: ProgramInfo, model: str, threads: int, runs: int, warmup: int, use_xnnpack: bool,
                affinity_mask: str, poll_s: float, workdir: str) -> str:
        argv = ["sh", f"{workdir}/{HARNESS_NAME}", "--bin", prog.argv[0], "--interval", f"{max(poll_s, 0.02):g}",
                "--workdir", workdir]
        if affinity_mask:
            argv += ["--mask", affinity_mask]
        flags = _benchmark_flags(model, runs, warmup, threads, [f"--use_xnnpack={str(use_xnnpack).lower()}"])
        # under edgelr's wrapper (no sampling of its own: harness.sh samples the binary): its own process
        # group and a pid file, stopped on adbd's SIGHUP when the host goes away, found by the next run
        return wrap_command(workdir, prog.wrapper_options, 0, [*argv, "--", *flags])

    def parse(self, prog: ProgramInfo, result: RunResult) -> BenchHarnessOutput:
        if result.exit_code != 0:
            raise BenchmarkError(f"the Android harness exited with {result.exit_code}: "
                                 f"{(result.stderr.strip() or result.stdout.strip())[-300:]}")
        h = parse_harness_output(result.stdout)
        bench = parse_benchmark_output(h.blocks.get("bench_stdout", ""), h.blocks.get("bench_stderr", ""),
                                       h.exit_code, program=f"benchmark_model on device '{self.device.name}'")
        abi = prog.version.rpartition("(")[2].partition(")")[0]
        sha = prog.version.partition("sha256:")[2].split(" ")[0]
        run = _assemble(bench, h, abi, prog.argv[0], sha)
        bench.extra["android"] = run
        bench.extra["override_rows"] = run.override_rows()
        bench.extra["extra_rows"] = run.rail_rows()
        note = run.notes.get("peak_memory", f"VmHWM sampled by harness.sh every {h.result.get('interval_s', '?')} s")
        return BenchHarnessOutput(bench, run.peak_memory_mb, note)
