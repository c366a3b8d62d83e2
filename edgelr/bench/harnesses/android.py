"""The Android harness: LiteRT ``benchmark_model`` on a phone, run by ``android_bench/harness.sh``.

* :class:`AndroidHarness` - registered as ``android/benchmark_model``, so ``edgelr bench --device <android
  device>`` runs through it (push harness + the ABI's binary once, run, parse; the harness' temperatures,
  thermal status, power and per-rail energy go into ``bench.extra``);
* :func:`parse_harness_output` - the record ``harness.sh`` prints;
* :func:`run_android_benchmark` - one run without the orchestration.

The device-side parsers and probes it uses (``dumpsys thermalservice``, battery, ODPM) are in
:mod:`device_agents.android`.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from device_agents.android import ThermalState, normalise_battery, odpm_power, parse_odpm, parse_thermalservice
from device_agents.files import sha256_file
from device_agents.inventory import DEFAULT_WORKDIR, DeviceSpec
from device_agents.procs import leftover_messages, push_wrapper, wrap_command, wrapper_options
from device_agents.transport import RunResult, Transport
from edgelr.bench.harnesses.base import HARNESSES, Harness, HarnessOutput, ProgramInfo, benchmark_flags
from edgelr.bench.output import BenchOutput
from edgelr.bench.parse import parse_benchmark_output
from edgelr.errors import BenchmarkError

NAN = float("nan")
HARNESS_NAME = "harness.sh"
ANDROID_WORKDIR = DEFAULT_WORKDIR["android"]


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

    bench: BenchOutput
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


def run_android_benchmark(t: Transport, model: Path, *, runs: int = 50, warmup: int = 1, threads: int = 1,
                          affinity_mask: str = "", workdir: str = ANDROID_WORKDIR,
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
    spec = DeviceSpec(name=getattr(t, "serial", None) or "android", transport=t.name, os="android",
                      benchmark_binary=benchmark_binary or f"{workdir}/bin/{{abi}}/benchmark_model",
                      benchmark_binary_local=benchmark_binary_local, workdir=workdir)
    harness = AndroidHarness(spec)
    prog = harness.prepare(t, workdir, timeout)
    model = Path(model)
    digest = sha256_file(model)
    remote_model = f"{workdir}/models/{digest[:12]}-{model.name}"
    t.push(model, remote_model, timeout=timeout, mode=0o644)
    cmd = harness.command(prog, remote_model, threads, runs, warmup, use_xnnpack, affinity_mask, interval_s, workdir)
    out = harness.parse(prog, t.run(cmd, timeout=timeout))
    run = out.bench.extra["android"]
    assert isinstance(run, AndroidRun)
    return run


def _assemble(bench: BenchOutput, h: HarnessRecord, abi: str, remote_bin: str, bin_sha: str) -> AndroidRun:
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


# --- the harness for edgelr.bench.run ------------------------------------------------------------------------
@HARNESSES.register("android/benchmark_model")
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
        q = shlex.quote(binary)
        sha = t.run(f"test -x {q} && sha256sum {q}", timeout=timeout).stdout.split()
        if not sha:
            raise BenchmarkError(f"benchmark_binary {binary} is missing or not executable on device "
                                 f"'{self.device.name}'; push LiteRT's benchmark_model for {abi} there (or set "
                                 f"benchmark_binary_local to have edgelr push it)")
        return ProgramInfo(self.tool, f"benchmark_model sha256:{sha[0][:12]} ({abi}); harness.sh v1",
                           [binary], taskset=True, notes=[], messages=messages,
                           wrapper_options=wrapper_options(t, workdir))

    def command(self, prog: ProgramInfo, model: str, threads: int, runs: int, warmup: int, use_xnnpack: bool,
                affinity_mask: str, poll_s: float, workdir: str, profile_ops: bool = False) -> str:
        argv = ["sh", f"{workdir}/{HARNESS_NAME}", "--bin", prog.argv[0], "--interval", f"{max(poll_s, 0.02):g}",
                "--workdir", workdir]
        if affinity_mask:
            argv += ["--mask", affinity_mask]
        flags = benchmark_flags(model, threads, runs, warmup, use_xnnpack, profile_ops)
        # under edgelr's wrapper (no sampling of its own: harness.sh samples the binary): its own process
        # group and a pid file, stopped on adbd's SIGHUP when the host goes away, found by the next run
        return wrap_command(workdir, prog.wrapper_options, 0, [*argv, "--", *flags])

    def parse(self, prog: ProgramInfo, result: RunResult) -> HarnessOutput:
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
        return HarnessOutput(bench, run.peak_memory_mb, note)
