"""Benchmark orchestration: models x sessions on one device -> the long results frame.

**The unit of measurement is a session**: one fresh benchmark process with its own warm-up and
``runs`` timed inferences. Inferences of one process are correlated (same CPU frequency, same
co-tenants, same allocation layout); what varies is between processes and over time (REFERENCE.md
§8: session medians of one model moved -19 % to +16 % here while each session's per-inference interval
was +-2-3 %). So a measurement is K sessions, and a comparison is between sessions, never between the
inferences of one process.

**Interleaved blocks.** With several models, block b runs one session of every model, in a random
order drawn per block (A B, B A, A B ...; seeded by ``settings.seed``, else by the run id, so the order
is reproducible from the stored run). Drift (a co-tenant, a temperature rise, a frequency change) then
hits every model alike, and session b of model A is paired with session b of model B
(:mod:`edgelr.report.stats` compares the per-block log-ratios). ``repeat`` in the frame is the block /
session index; the session summary is its ``latency_median`` row beside the per-inference
``latency`` samples.

Defaults (K = ``DEFAULT_SESSIONS``, N = ``DEFAULT_RUNS``) were chosen from measurements on this 2-core
shared machine; see ``tests/perf/bench_detection.py`` and ``reports/detection.md``. ``max_time_s``
bounds the wall time: no new block starts when the last block's duration would overrun it.

Per session: wait until the device is cooler than ``cooldown_c``, read temperatures and the energy
sensor, time the throttling canary, run the benchmark program through its harness (pinned with
``taskset`` to the target's affinity mask where the device has it, peak RSS sampled from /proc while it
runs), read the sensors again and turn everything into rows of :mod:`edgelr.bench.frame`.

Transport- and OS-agnostic: everything OS/tool specific is in :mod:`edgelr.bench.harnesses`.
Results already gathered survive a failing model: they are written to ``settings.out`` after every
session, and the error raised at the end carries them (``exc.partial_frame``). ``cancel`` (a
``threading.Event``) stops between sessions with :class:`~edgelr.errors.Interrupted`, rows kept.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from device_agents import probes
from device_agents.files import sha256_file
from device_agents.inventory import DeviceSpec
from device_agents.transport import RunResult, Transport
from edgelr.bench.frame import METRICS, new_run_id, op_note, to_frame, write_frame
from edgelr.bench.harnesses import Harness, HarnessOutput, ProgramInfo, select_harness
from edgelr.bench.output import BenchOutput
from edgelr.errors import BenchmarkError, DeviceError, Interrupted, UsageError
from edgelr.targets import get_target

if TYPE_CHECKING:
    import threading

    import pandas as pd

NAN = float("nan")
Progress = Callable[[str], None]


DEFAULT_SESSIONS = 10
"""K: sessions per model. The paired signed-rank test needs >= 7 blocks to reach p < 0.01 at all
(2**-7 = 0.008); 10 gives p down to 0.001 and, with the between-session spread measured here
(``reports/detection.md``), resolves a ~5 % change."""
DEFAULT_RUNS = 20
"""N: timed inferences per session. The session median is stable after ~20 inferences; beyond that the
between-session variance dominates (s2_s/K + s2_w/(K N)) and more sessions buy more than more runs."""


@dataclass(frozen=True)
class BenchModel:
    """A model to benchmark: the name results are stored and shown under, and the local ``.tflite``."""

    name: str
    path: Path


@dataclass(frozen=True)
class BenchSettings:
    """What to run and how. Times in seconds, temperatures in degrees C.

    ``sessions`` (K) fresh benchmark processes per model, each of ``runs`` (N) timed inferences after
    ``warmup`` untimed ones; with several models the sessions are interleaved in randomized blocks
    (order seeded by ``seed``, else by the run id). ``max_time_s`` bounds the wall time: no block starts
    that would end after it (at least one block runs).
    ``threads`` None takes the target profile's; ``affinity_mask`` None takes the device's, else the
    target's. ``sensor_root`` prefixes ``/sys`` paths (tests point it at a fixture tree).
    """

    threads: int | None = None
    runs: int = DEFAULT_RUNS
    warmup: int = 1
    sessions: int = DEFAULT_SESSIONS
    max_time_s: float | None = None
    seed: int | None = None
    cooldown_c: float = 45.0
    cooldown_timeout_s: float = 300.0
    cooldown_poll_s: float = 5.0
    use_xnnpack: bool = True
    profile_ops: bool = False
    timeout_s: float | None = None
    memory_poll_s: float = 0.05
    canary: bool = True
    affinity_mask: str | None = None
    out: Path | None = None
    run_id: str | None = None
    sensor_root: str = ""
    vcgencmd: str = "vcgencmd"
    targets_file: str | None = None

    def validate(self) -> None:
        for name, low in (("runs", 1), ("warmup", 0), ("sessions", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UsageError(f"--{name} {value!r}: expected an integer >= {low}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UsageError(f"--threads {self.threads!r}: expected an integer >= 1")
        for name, value in (("max-time", self.max_time_s), ("timeout", self.timeout_s)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"--{name} {value!r}: expected a positive number of seconds")


def _check_run(t: Transport, cmd: str, timeout: float, what: str) -> RunResult:
    """Run ``cmd``; DeviceError naming ``what`` when it exits non-zero."""
    res = t.run(cmd, timeout=timeout)
    if res.exit_code != 0:
        detail = (res.stderr.strip() or res.stdout.strip()).splitlines()
        raise DeviceError(f"{what} failed on the device (exit {res.exit_code}): "
                          f"{detail[-1] if detail else 'no output'}")
    return res


class _Rows:
    """Collects frame rows sharing the columns of one (model, repeat)."""

    def __init__(self, common: dict[str, Any]) -> None:
        self.common = common
        self.rows: list[dict[str, Any]] = []

    def add(self, metric: str, value: float, note: str = "", sample: int = -1) -> None:
        v = float(value) if value is not None else NAN
        self.rows.append({**self.common, "metric": metric, "sample": sample, "value": v,
                          "unit": METRICS.get(metric, ""), "note": note if (note or math.isfinite(v)) else "not reported",
                          "timestamp": self.common["timestamp"]})


def _latency_rows(rows: _Rows, bench: BenchOutput) -> None:
    """Per-run samples and aggregates; aggregates come from the samples when there are any."""
    delegates = "; ".join(f"{d.name} {d.replaced}/{d.total} nodes, {d.partitions} partition(s)"
                          for d in bench.delegates)
    rows.add("init", bench.init_ms)
    rows.add("first_inference", bench.first_inference_ms)
    rows.add("warmup_avg", bench.warmup_avg_ms if math.isfinite(bench.warmup_avg_ms)
             else (bench.warmup.avg if bench.warmup else NAN))
    if bench.samples_ms:
        s = np.asarray(bench.samples_ms, dtype=np.float64)
        for i, v in enumerate(s):
            rows.add("latency", float(v), sample=i)
        rows.add("latency_avg", float(s.mean()), delegates)
        rows.add("latency_min", float(s.min()))
        rows.add("latency_max", float(s.max()))
        rows.add("latency_std", float(s.std(ddof=1)) if s.size > 1 else 0.0)
        rows.add("latency_median", float(np.median(s)))
        rows.add("latency_p90", float(np.percentile(s, 90)))
        rows.add("latency_p95", float(np.percentile(s, 95)))
        return
    st = bench.inference
    no_samples = f"{bench.tool} prints no per-run samples"
    rows.add("latency_avg", bench.latency_avg_ms, delegates)
    rows.add("latency_min", st.min if st else NAN, "" if st else no_samples)
    rows.add("latency_max", st.max if st else NAN, "" if st else no_samples)
    rows.add("latency_std", st.std if st else NAN, "" if st else no_samples)
    rows.add("latency_median", st.median if st else NAN, "" if st and math.isfinite(st.median) else
             f"{bench.tool} build prints no median")
    rows.add("latency_p90", NAN, f"{no_samples}; p90 needs them")
    rows.add("latency_p95", st.p95 if st else NAN, "" if st and math.isfinite(st.p95) else
             f"{bench.tool} build prints no p95")


def _apply_harness_rows(rows: _Rows, bench: BenchOutput) -> None:
    """The harness' own figures: ``extra["override_rows"]`` replace aggregates, ``extra["extra_rows"]`` add rows."""
    overrides = bench.extra.get("override_rows") or {}
    if isinstance(overrides, dict):
        for r in rows.rows:
            if r["sample"] == -1 and r["metric"] in overrides:
                value, note = overrides[r["metric"]]
                r["value"], r["note"] = float(value), str(note)
    extra = bench.extra.get("extra_rows") or []
    if isinstance(extra, list):
        for metric, value, note in extra:
            rows.add(str(metric), float(value), str(note))


def _op_rows(rows: _Rows, bench: BenchOutput) -> None:
    """``--profile-ops``: one ``op_latency`` row per node (``sample`` = run order), or one NaN row saying
    why the tool gave none."""
    ops = bench.extra.get("op_profile")
    if isinstance(ops, list) and ops:
        for op in ops:
            rows.add("op_latency", float(op["avg_ms"]), op_note(str(op["node_type"]), str(op["name"])),
                     sample=int(op["order"]))
        return
    runner = bench.extra.get("runner")
    why = runner.get("op_profiling", "") if isinstance(runner, dict) else ""
    rows.add("op_latency", NAN, why or f"{bench.tool or 'the benchmark program'} printed no per-op table")


@dataclass
class _Session:
    """What is set up once per device: the program, sensors, canary baseline."""

    prog: ProgramInfo
    workdir: str
    threads: int
    mask: str
    meter: probes.EnergyMeter
    canary_baseline_ms: float


def _setup(device: DeviceSpec, transport: Transport, settings: BenchSettings, progress: Progress,
           harness: Harness, threads: int, mask: str) -> _Session:
    workdir = device.remote_workdir
    timeout = device.connect_timeout * 6
    _check_run(transport, f"mkdir -p {shlex.quote(workdir)}/models", timeout, f"creating workdir {workdir}")
    prog = harness.prepare(transport, workdir, timeout=max(timeout, 120.0))
    for message in prog.messages:  # e.g. a leftover benchmark of an earlier run was stopped
        progress(message)
    progress(f"device {device.name}: {prog.tool} ({prog.version})")
    if mask and not prog.taskset:
        prog.notes.append(f"affinity mask {mask} not applied: no taskset on the device")
    meter = probes.find_energy_meter(transport, settings.sensor_root, settings.vcgencmd)
    baseline = probes.run_canary(transport) if settings.canary else NAN
    return _Session(prog, workdir, threads, mask, meter, baseline)


def _one_run(device: DeviceSpec, transport: Transport, harness: Harness, session: _Session, model: BenchModel,
             remote_model: str, sha: str, block: int, settings: BenchSettings, run_id: str,
             progress: Progress, target_name: str) -> list[dict[str, Any]]:
    notes: list[str] = list(session.prog.notes)

    def temps() -> dict[str, float]:
        return harness.temperatures(transport, settings.sensor_root, settings.vcgencmd)

    cool = probes.wait_for_cooldown(transport, settings.cooldown_c, settings.cooldown_timeout_s,
                                    settings.cooldown_poll_s, reader=temps)
    if cool.waited_s > 1:
        progress(f"  cooled down for {cool.waited_s:.0f} s ({cool.temp_c:.1f} C)")
    if cool.note:
        notes.append(cool.note)
    canary = probes.run_canary(transport) if settings.canary else NAN
    throttled = probes.is_throttled(canary, session.canary_baseline_ms)
    if throttled and not math.isfinite(cool.temp_c):
        notes.append("canary slower than 1.10 x baseline: CPU busy or throttled (no temperature sensor to "
                     "cool down by)")
    elif throttled:
        progress(f"  canary {canary:.2f} ms > 1.10 x baseline {session.canary_baseline_ms:.2f} ms: cooling down")
        cool = probes.wait_for_cooldown(transport, settings.cooldown_c - 5, settings.cooldown_timeout_s,
                                        settings.cooldown_poll_s, reader=temps)
        if cool.note:
            notes.append(f"after the canary: {cool.note}")
        canary = probes.run_canary(transport)
        throttled = probes.is_throttled(canary, session.canary_baseline_ms)
    temps_before = temps()
    e_before = session.meter.read(transport)
    cmd = harness.command(session.prog, remote_model, session.threads, settings.runs, settings.warmup,
                          settings.use_xnnpack, session.mask, settings.memory_poll_s, session.workdir,
                          profile_ops=settings.profile_ops)
    result = transport.run(cmd, timeout=settings.timeout_s or device.command_timeout)
    e_after = session.meter.read(transport)
    temps_after = temps()
    hout: HarnessOutput = harness.parse(session.prog, result)
    bench = hout.bench
    thr_state = probes.read_throttled(transport, settings.vcgencmd)

    rows = _Rows({"run_id": run_id, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "device": device.name, "target": target_name, "transport": device.transport,
                  "model": model.name, "model_sha256": sha, "repeat": block, "tool": session.prog.tool,
                  "tool_version": bench.tool_version or session.prog.version, "threads": session.threads})
    _latency_rows(rows, bench)
    runner_rec = bench.extra.get("runner")
    runner_hwm = float(runner_rec.get("vm_hwm_mb", NAN)) if isinstance(runner_rec, dict) else NAN
    candidates = [v for v in (hout.vm_hwm_mb, runner_hwm) if math.isfinite(v)]
    peak = max(candidates) if candidates else NAN
    peak_note = (f"VmHWM sampled every {settings.memory_poll_s:g} s"
                 + (" and read by the runner at exit" if math.isfinite(runner_hwm) else "")
                 if candidates else hout.vm_hwm_note)
    rows.add("peak_memory", peak, peak_note)
    rows.add("tool_peak_memory", bench.peak_memory_mb,
             "" if math.isfinite(bench.peak_memory_mb) else f"{bench.tool} did not report it")
    rows.add("tool_memory_init", bench.memory_init_mb)
    rows.add("tool_memory_overall", bench.memory_overall_mb)
    no_temp = "no temperature sensor"
    rows.add("temp_before", probes.max_temperature(temps_before), "" if temps_before else no_temp)
    rows.add("temp_after", probes.max_temperature(temps_after), "" if temps_after else no_temp)
    thr_notes = []
    if math.isfinite(canary):
        thr_notes.append(f"canary {canary:.2f} ms vs baseline {session.canary_baseline_ms:.2f} ms")
    if thr_state is not None:
        thr_notes.append(f"get_throttled=0x{thr_state.raw:x} ({', '.join(thr_state.now) or 'ok'})")
        throttled = throttled or thr_state.throttled_now
    if not math.isfinite(canary) and thr_state is None:
        rows.add("throttled", NAN, "no canary (date lacks %N) and no vcgencmd")
    else:
        rows.add("throttled", 1.0 if throttled else 0.0, "; ".join(thr_notes))
    rows.add("canary", canary, "" if math.isfinite(canary) else "canary not timed (--no-canary, or date lacks %N)")
    energy = probes.energy_between(e_before, e_after, session.meter.note)
    lat = bench.latency_avg_ms
    rows.add("energy_per_inference", energy.per_inference_mj(lat),
             (f"avg power x mean latency; {energy.note}" if math.isfinite(energy.avg_power_w) else energy.note))
    rows.add("avg_power", energy.avg_power_w, energy.note)
    rows.add("model_size", float(model.path.stat().st_size))
    _apply_harness_rows(rows, bench)
    if settings.profile_ops:
        _op_rows(rows, bench)
    if notes:
        for r in rows.rows:
            if r["metric"] == "latency_avg":
                r["note"] = "; ".join(x for x in [r["note"], *notes] if x)
    return rows.rows


def as_models(models: "list[Path] | list[BenchModel] | list[Path | BenchModel]") -> list[BenchModel]:
    """Paths (named by their stem) or :class:`BenchModel` -> BenchModels; names must be unique."""
    out = [m if isinstance(m, BenchModel) else BenchModel(Path(m).stem, Path(m)) for m in models]
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"two models are named {dup[0]!r}; name them apart with NAME=path.tflite or --name")
    return out


def block_orders(n_models: int, blocks: int, seed: int) -> list[list[int]]:
    """Randomized complete blocks: for each block a random permutation of ``range(n_models)``.

    Returns ``blocks`` lists, each a permutation (shape (blocks, n_models)); the same seed gives the
    same orders, so a stored run tells in what order its sessions ran.
    """
    import random

    rng = random.Random(seed)
    orders = []
    for _ in range(blocks):
        order = list(range(n_models))
        rng.shuffle(order)
        orders.append(order)
    return orders


def _seed_of(run_id: str) -> int:
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16)


def benchmark(device: DeviceSpec, transport: Transport, models: "list[Path] | list[BenchModel]",
              settings: BenchSettings, progress: Progress | None = None,
              cancel: "threading.Event | None" = None) -> "pd.DataFrame":
    """Benchmark ``models`` on ``device`` in interleaved sessions and return the long results frame.

    Parameters
    ----------
    device
        Inventory entry (OS, target profile, benchmark program, workdir).
    transport
        An open transport to the device.
    models
        Local ``.tflite`` files (named by their stem) or :class:`BenchModel`; pushed into
        ``<workdir>/models`` (sha256 skip).
    settings
        Threads, runs per session, sessions, time budget, warm-up, cool-down, output file.
    progress
        Receives one-line progress messages (the CLI prints them on stderr).
    cancel
        When set, the run stops before the next session and raises :class:`~edgelr.errors.Interrupted`
        carrying the rows gathered (``exc.partial_frame``).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`edgelr.bench.frame.COLUMNS`; per model and session (``repeat`` = block index)
        ``settings.runs`` rows of metric ``latency`` (when the program prints per-run samples) plus
        aggregates (sample = -1), among them the session's ``latency_median``.

    Raises
    ------
    BenchmarkError
        After all models were tried, when any failed; ``exc.partial_frame`` holds the rows gathered.
    DeviceError
        The device became unreachable; ``exc.partial_frame`` holds the rows gathered so far.
    Interrupted
        ``cancel`` was set or Ctrl-C; ``exc.partial_frame`` holds the rows gathered so far.
    """
    settings.validate()
    say: Progress = progress or (lambda _msg: None)
    items = as_models(list(models))
    for m in items:
        if not m.path.is_file():
            raise UsageError(f"model file {m.path} does not exist; pass .tflite files")
    target = get_target(device.target, settings.targets_file)
    threads = settings.threads or (target.threads if target.threads > 0 else 1)
    mask = settings.affinity_mask if settings.affinity_mask is not None else (
        device.affinity_mask if device.affinity_mask is not None else target.affinity_mask)
    run_id = settings.run_id or new_run_id()
    harness = select_harness(device)
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.monotonic()

    def keep() -> None:
        if settings.out is not None and rows:
            write_frame(to_frame(rows), settings.out)

    def stopped() -> bool:
        return cancel is not None and cancel.is_set()

    try:
        session = _setup(device, transport, settings, say, harness, threads, mask)
        remote: dict[str, tuple[str, str]] = {}
        for m in items:
            sha = sha256_file(m.path)
            remote[m.name] = (f"{session.workdir}/models/{sha[:12]}-{m.path.name}", sha)
            pushed = transport.push(m.path, remote[m.name][0], timeout=max(device.connect_timeout * 6, 120.0))
            say(f"{m.name}: {'pushed' if pushed else 'already on the device'}")
        orders = block_orders(len(items), settings.sessions,
                              settings.seed if settings.seed is not None else _seed_of(run_id))
        active = list(items)
        block_s = 0.0
        for b, order in enumerate(orders):
            elapsed = time.monotonic() - started
            if settings.max_time_s is not None and b > 0 and elapsed + block_s > settings.max_time_s:
                say(f"--max-time {settings.max_time_s:g} s: stopping after {b} of {settings.sessions} session(s) "
                    f"per model ({elapsed:.0f} s spent)")
                break
            t_block = time.monotonic()
            for idx in order:
                m = items[idx]
                if m not in active:
                    continue
                if stopped():
                    raise KeyboardInterrupt
                try:
                    new = _one_run(device, transport, harness, session, m, remote[m.name][0], remote[m.name][1], b,
                                   settings, run_id, say, target.name)
                except BenchmarkError as exc:
                    label = m.path.name if m.name == m.path.stem else m.name
                    failures.append(f"{label}: {exc}")
                    say(f"{label}: failed (reported at the end)")
                    active.remove(m)
                    continue
                rows.extend(new)
                keep()
                med = next((r["value"] for r in new if r["metric"] == "latency_median"), NAN)
                if not math.isfinite(med):
                    med = next((r["value"] for r in new if r["metric"] == "latency_avg"), NAN)
                say(f"session {b + 1}/{settings.sessions} {m.name}: {med:.3f} ms median of {settings.runs} runs "
                    f"({threads} thread(s))")
            block_s = time.monotonic() - t_block
            if not active:
                break
    except (DeviceError, OSError, KeyboardInterrupt) as exc:
        keep()
        if isinstance(exc, KeyboardInterrupt):
            err = Interrupted(f"interrupted after {len(rows)} result rows"
                              + (f" (kept in {settings.out})" if settings.out is not None and rows else ""))
            err.partial_frame = to_frame(rows)  # type: ignore[attr-defined]
            raise err from None
        if isinstance(exc, DeviceError):
            if stopped():
                err = Interrupted(f"interrupted after {len(rows)} result rows")
                err.partial_frame = to_frame(rows)  # type: ignore[attr-defined]
                raise err from None
            if rows and settings.out is not None:
                wrapped = type(exc)(f"{exc} ({len(rows)} result rows kept in {settings.out})")
                wrapped.partial_frame = to_frame(rows)  # type: ignore[attr-defined]
                raise wrapped from exc
            exc.partial_frame = to_frame(rows)  # type: ignore[attr-defined]
        raise
    frame = to_frame(rows)
    if failures:
        kept = f"; {len(rows)} result rows of the other models kept" + (f" in {settings.out}" if settings.out else "")
        err = BenchmarkError(f"{len(failures)} benchmark(s) failed: {' | '.join(failures)}" + (kept if rows else ""))
        err.partial_frame = frame  # type: ignore[attr-defined]
        raise err
    return frame
