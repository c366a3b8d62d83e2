"""A regression run: benchmark a suite's models on its devices, store everything, compare with a
baseline, and confirm a suggested change by a paired re-run.

Flow (regress -> bench + history + stats):

1. ``begin_run`` records the run as started; every suite model is copied into the history's
   content-addressed model store (sha256) so a later run can re-measure it.
2. Each device (one thread each, under its device lock) measures all suite models in interleaved
   sessions (:func:`edgelr.bench.run.benchmark`). A device that fails keeps its partial rows; the others
   go on. A suite device that stands for several (a labgrid entry with tags) is measured on each of them
   (``NAME@PLACE``, :func:`expand_devices`), in parallel, each place reserved and locked through the
   labgrid coordinator for the time of its run.
3. The run is stored in one transaction, then compared with its baseline (:func:`compare_run`: session
   medians, Mann-Whitney U). Runs at different times share no drift, so a flagged change there is only a
   suggestion.
4. **Confirmation** (unless ``confirm=False``): for each latency comparison that suggests a change, the
   baseline run's model (from the store, by sha256) and the current model are measured again,
   interleaved, on the same device in the same window, and the paired verdict
   (:func:`compare_paired`) replaces the stored-baseline one. The verdict's ``method``/``note`` say which
   evidence decided it. When the baseline's model is not in the store, the stored evidence decides and
   the note says so.

Ctrl-C / SIGTERM: the main thread sets a cancel event and closes every open transport (which stops
what it runs on the device); the measured rows are stored as an ``interrupted`` run and
:class:`~edgelr.errors.Interrupted` (exit 130) is raised within about a second.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgelr.errors import DeviceError, EdgelrError, HistoryError, Interrupted, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from device_agents.transport import Transport
    from edgelr.report.suite import Suite

Progress = Callable[[str], None]


@dataclass
class RegressResult:
    """What a regression run found. ``comparisons`` has the columns of :func:`compare_run`."""

    run_id: str
    history: Path
    comparisons: "pd.DataFrame"
    errors: dict[str, str] = field(default_factory=dict)
    accepted: bool = False
    auto_accepted: bool = False
    warnings: list[str] = field(default_factory=list)
    #: Per device: the noise floor that applies to this run (:func:`noise_floors`).
    noise: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def regressions(self) -> "pd.DataFrame":
        return self.comparisons[self.comparisons["status"] == "regression"]


class _Devices:
    """Open transports by device, so an interrupt can close them from the main thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: dict[str, "Transport"] = {}
        self.cancel = threading.Event()

    def add(self, name: str, transport: "Transport") -> None:
        with self.lock:
            self.open[name] = transport
        if self.cancel.is_set():
            transport.close()

    def drop(self, name: str) -> None:
        with self.lock:
            self.open.pop(name, None)

    def abort(self) -> None:
        self.cancel.set()
        with self.lock:
            items = list(self.open.values())
        for t in items:
            try:
                t.close()
            except Exception:  # noqa: BLE001 - closing on abort must never raise
                pass


def _settings(suite: "Suite", run_id: str, sessions: int | None = None) -> Any:
    from edgelr.bench.run import BenchSettings

    return BenchSettings(threads=suite.threads, runs=suite.runs, warmup=suite.warmup,
                         sessions=sessions or suite.sessions, max_time_s=suite.max_time,
                         cooldown_c=suite.cooldown_c, run_id=run_id)


def _measure(device: str, inventory: str | None, models: list[Any], settings: Any, devices: _Devices,
             say: Progress) -> "pd.DataFrame":
    """Benchmark ``models`` on one device under its device lock; raise on device failure."""
    from device_agents.inventory import get_device, open_transport
    from edgelr.bench.lock import lock_for
    from edgelr.bench.run import benchmark

    spec = get_device(device, inventory)
    with lock_for(spec, on_wait=say):
        if devices.cancel.is_set():
            raise Interrupted("interrupted before the device was measured")
        transport = open_transport(spec)
        devices.add(device, transport)
        try:
            return benchmark(spec, transport, models, settings, progress=lambda m: say(f"[{device}] {m}"),
                             cancel=devices.cancel)
        finally:
            devices.drop(device)
            transport.close()


def expand_devices(names: list[str], inventory: str | None) -> list[str]:
    """The devices to measure for the suite's ``names``: an inventory entry that stands for several
    devices (:meth:`~device_agents.transport.Transport.expand`: a labgrid entry with tags, one device
    per matching place, ``NAME@PLACE``) becomes each of them. A name that cannot be resolved is kept: its
    own thread reports the error, the other devices go on."""
    from device_agents.builtin import TRANSPORTS
    from device_agents.inventory import get_device

    out: list[str] = []
    for name in names:
        try:
            spec = get_device(name, inventory)
            out.extend(s.name for s in TRANSPORTS[spec.transport].expand(spec))
        except EdgelrError:
            out.append(name)
    return list(dict.fromkeys(out))


def _in_threads(jobs: dict[str, Callable[[], "pd.DataFrame"]], devices: _Devices, say: Progress
                ) -> tuple[list["pd.DataFrame"], dict[str, str], bool]:
    """Run one job per device in daemon threads; Ctrl-C aborts them all at once.

    Returns (frames, errors by device, interrupted).
    """
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    frames: list[pd.DataFrame] = []

    def work(name: str, job: Callable[[], "pd.DataFrame"]) -> None:
        try:
            results[name] = job()
        except BaseException as exc:  # noqa: BLE001 - reported per device
            results[name] = exc

    threads = [threading.Thread(target=work, args=(n, j), name=f"regress-{n}", daemon=True) for n, j in jobs.items()]
    for t in threads:
        t.start()
    interrupted = False
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping the devices and keeping what was measured")
        devices.abort()
        deadline = time.monotonic() + 1.5
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    for name in jobs:
        res = results.get(name)
        if res is None:
            errors[name] = "interrupted"
            continue
        if isinstance(res, BaseException):
            partial = getattr(res, "partial_frame", None)
            if partial is not None and len(partial):
                frames.append(partial)
            if isinstance(res, Interrupted) or (interrupted and isinstance(res, (DeviceError, OSError))):
                errors[name] = "interrupted"
                interrupted = True
            elif isinstance(res, (EdgelrError, OSError)):
                errors[name] = f"{type(res).__name__}: {res}" if not isinstance(res, EdgelrError) else str(res)
                say(f"[{name}] ERROR: {errors[name]}")
            else:
                errors[name] = f"internal error: {type(res).__name__}: {res}"
                say(f"[{name}] ERROR: {errors[name]}")
        else:
            frames.append(res)
    return frames, errors, interrupted


def run_suite(suite: "Suite", history: Path, *, inventory: str | None = None, baseline: str = "last",
              alpha: float | None = None, accept: bool = False, accept_as: str | None = None,
              confirm: bool | None = None, progress: Progress | None = None) -> RegressResult:
    """Run ``suite``, store the run in ``history``, compare with ``baseline`` and confirm changes.

    Raises
    ------
    UsageError
        Bad alpha or an unknown baseline name (checked before any device is touched).
    DeviceError
        No device produced a result (each device's own error in the message).
    Interrupted
        Ctrl-C / SIGTERM: the measured rows are stored first (run status ``interrupted``).
    """
    import pandas as pd

    from edgelr.bench.run import BenchModel
    from edgelr.report import history as H
    from edgelr.report.stats import compare_run, parse_baseline

    say: Progress = progress or (lambda _m: None)
    alpha = suite.alpha if alpha is None else alpha
    confirm = suite.confirm if confirm is None else confirm
    name, _ = parse_baseline(baseline)
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha {alpha}: expected a probability between 0 and 1, e.g. 0.01")
    if name not in ("accepted", "window") and H.exists(history):
        known = set(H.baselines(history)["name"])
        if name not in known:   # check before spending an hour on the devices
            raise UsageError(f"--baseline {baseline}: no baseline of that name in {H.describe(history)} "
                             f"(names: {sorted(known) or 'none'}); create it with --accept-as {baseline}")
    lock = threading.Lock()

    def tell(msg: str) -> None:
        with lock:
            say(msg)

    targets = expand_devices(list(suite.devices), inventory)
    run_id = H.begin_run(history, kind="regress", suite=suite.name)
    tell(f"regress {suite.name}: run {run_id}, {len(suite.models)} model(s) x {len(targets)} device(s), "
         f"{suite.sessions} sessions of {suite.runs} runs each, history {H.describe(history)}")
    warnings: list[str] = []
    for m in suite.models:
        try:
            H.store_model(history, m.path)
        except HistoryError as exc:
            warnings.append(f"model {m.name}: {exc}; a later regression cannot be confirmed by a re-run")
    devices = _Devices()
    models = [BenchModel(m.name, m.path) for m in suite.models]
    settings = _settings(suite, run_id)
    try:
        frames, errors, interrupted = _in_threads(
            {d: (lambda d=d: _measure(d, inventory, models, settings, devices, tell)) for d in targets},
            devices, tell)
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        err_text = "; ".join(f"{d}: {e}" for d, e in errors.items()) or None
        if interrupted:
            if len(frame):
                H.append_or_spool(frame.assign(run_id=run_id), history, kind="regress", suite=suite.name,
                                  status="partial", run_id=run_id, error="interrupted by the user")
            else:
                H.fail_run(history, run_id, "interrupted by the user")
            raise Interrupted(f"regress {suite.name}: interrupted; {len(frame)} measured row(s) stored in run "
                              f"{run_id} as partial")
        if not len(frame):
            H.fail_run(history, run_id, err_text or "no results")
            raise DeviceError(f"regress {suite.name}: no device produced results ({err_text}); run {run_id} "
                              f"recorded as failed")
        frame = frame.assign(run_id=run_id)
        H.append_or_spool(frame, history, kind="regress", suite=suite.name, run_id=run_id,
                          status="partial" if errors else "complete", error=err_text)
    except BaseException as exc:
        try:
            status = H.runs(history).set_index("run_id")["status"].get(run_id)
            if status == "started":
                H.fail_run(history, run_id, f"{type(exc).__name__}: {exc}")
        except HistoryError:
            pass  # the history is what failed; exc says why
        raise

    noise = noise_floors(frame, suite, history, run_id, alpha)
    for dev, n in noise.items():
        if n.get("warning"):
            warnings.append(n["warning"])
    hist = H.load(history, kinds=["bench", "regress", "compress"])
    accepted = H.baselines(history)
    comps = compare_run(hist, accepted, run_id, suite.thresholds, baseline=baseline, alpha=alpha)
    if confirm:
        comps = _confirm(comps, hist, suite, history, inventory, alpha, devices, tell, noise)
    H.record_comparisons(history, comps)
    auto = False
    if accept_as:
        H.mark_baseline(history, run_id, accept_as)
    if accept:
        H.mark_baseline(history, run_id, "accepted")
    elif baseline == "last" and not (accepted["name"] == "accepted").any():
        H.mark_baseline(history, run_id, "accepted")
        auto = True
    return RegressResult(run_id, history, comps, errors, accept, auto, warnings, noise)


def noise_floors(frame: "pd.DataFrame", suite: "Suite", history: Path, run_id: str, alpha: float
                 ) -> dict[str, dict[str, Any]]:
    """Per device, the smallest latency change this suite's sessions can resolve, and a warning when the
    suite's latency threshold is below it.

    Two estimates of the sd of a paired block's log-ratio (what :func:`edgelr.report.stats.
    min_detectable_change` takes): the A/A measurement of ``edgelr devices check NAME --noise`` when the
    history has one (preferred: it is what the paired confirmation faces), else this run's spread of
    session medians, pooled over its models, times sqrt(2) (two independent sessions; conservative,
    since interleaving cancels the drift the two share). This run's estimate is stored either way
    (source ``regress <run id>``), so the history tracks each device's noise over time.
    """
    import numpy as np

    from edgelr.report import history as H
    from edgelr.report.stats import min_detectable_change, parse_threshold, session_values

    thr_text = next((v for k, v in suite.thresholds.items() if k in ("latency", "latency_median")), None)
    thr = parse_threshold(thr_text, "latency") if thr_text is not None else None
    out: dict[str, dict[str, Any]] = {}
    if not len(frame):
        return out
    for device, part in frame.groupby("device"):
        sq, n = [], 0
        for _, g in part.groupby("model"):
            v = session_values(g)["value"].to_numpy(dtype=float)
            v = np.log(v[np.isfinite(v) & (v > 0)])
            if v.size >= 3:
                sq.append(float(v.var(ddof=1)))
                n += v.size
        if not sq:
            continue
        sd_session = math.sqrt(sum(sq) / len(sq))
        sd_run = math.sqrt(2.0) * sd_session
        mdc_run = min_detectable_change(sd_run, suite.sessions, alpha)
        try:
            H.record_noise(history, str(device), sd_log_ratio=sd_run, session_cv=sd_session, sessions=n,
                           runs=suite.runs, alpha=alpha, min_detectable=mdc_run, source=f"regress {run_id}")
        except HistoryError:
            pass  # the run's rows are what matters; the estimate is reported below anyway
        checked = H.noise_floor(history, str(device), source=H.NOISE_FROM_CHECK)
        if checked and checked.get("sd_log_ratio") is not None and math.isfinite(checked["sd_log_ratio"]):
            sd, source = float(checked["sd_log_ratio"]), f"`edgelr devices check {device} --noise` of {checked['measured_at'][:16]}"
        else:
            sd, source = sd_run, "this run's session spread (conservative; `edgelr devices check " \
                                 f"{device} --noise` measures it directly)"
        mdc = min_detectable_change(sd, suite.sessions, alpha)
        entry: dict[str, Any] = {"session_cv": sd_session, "sd_log_ratio": sd, "sessions": suite.sessions,
                                 "alpha": alpha, "min_detectable_change": mdc, "source": source}
        if thr is not None and thr.kind == "rel":
            blocks = confirm_blocks(entry, thr, suite, alpha)
            entry["confirm_blocks"] = blocks
            mdc_max = min_detectable_change(sd, blocks, alpha)
            entry["min_detectable_change_confirmed"] = mdc_max
            if thr.value < mdc_max:
                need = next((k for k in range(blocks + 1, 401) if min_detectable_change(sd, k, alpha) <= thr.value),
                            None)
                entry["warning"] = (
                    f"{device}: the latency threshold {thr.text} is below what this device's noise resolves: the "
                    f"smallest change detectable with 95 % power is {pct(mdc)} at {suite.sessions} sessions and "
                    f"{pct(mdc_max)} with a confirmation re-run of {blocks} blocks (noise from {source}); a real "
                    f"{thr.text} slow-down will often pass. "
                    + (f"Raise confirm_sessions to {need} or the threshold" if need else "Raise the threshold"))
        out[str(device)] = entry
    return out


def pct(x: float) -> str:
    """``12.3%``, or ``none`` for an infinite smallest detectable change."""
    return f"{x:.1%}" if math.isfinite(x) else "none"


def suggests_change(row: Any, threshold: Any) -> bool:
    """Whether a comparison with the stored baseline is worth a paired re-run.

    Runs at different times share no drift and session effects, so the stored comparison is weak
    evidence both ways: besides a flagged regression or improvement, a point estimate at least half the
    (relative) threshold away from 1 is re-measured too. The paired re-run decides at ``alpha``, so
    re-running more often costs time, not false alarms (``tests/perf/bench_detection.py``).
    """
    if row["status"] in ("regression", "improvement"):
        return True
    effect = row["effect"]
    return (row["status"] == "ok" and str(row["method"]).startswith("mann-whitney") and threshold.kind == "rel"
            and effect is not None and math.isfinite(effect) and abs(effect) >= threshold.value / 2)


def confirm_blocks(noise: dict[str, Any] | None, threshold: Any, suite: "Suite", alpha: float) -> int:
    """Blocks for a paired re-run: the fewest (>= ``suite.sessions``) at which the device's noise resolves
    the threshold with 95 % power, at most ``suite.confirm_sessions`` (as Pinpoint adds repeats)."""
    from edgelr.report.stats import min_detectable_change

    sd = (noise or {}).get("sd_log_ratio")
    if sd is None or not math.isfinite(sd) or threshold.kind != "rel":
        return suite.sessions
    for k in range(suite.sessions, suite.confirm_sessions + 1):
        if min_detectable_change(sd, k, alpha) <= threshold.value:
            return k
    return suite.confirm_sessions


def _confirm(comps: "pd.DataFrame", hist: "pd.DataFrame", suite: "Suite", history: Path, inventory: str | None,
             alpha: float, devices: _Devices, say: Progress,
             noise: dict[str, dict[str, Any]] | None = None) -> "pd.DataFrame":
    """Re-measure the baseline's model beside the current one, interleaved, where a change is suggested."""
    from edgelr.bench.run import BenchModel
    from edgelr.report import history as H
    from edgelr.report.stats import compare_paired, paired_sessions, parse_threshold, metric_of

    comps = comps.copy()
    thresholds = {metric_of(k): v for k, v in suite.thresholds.items()}
    paths = {m.name: m.path for m in suite.models}
    for idx, row in comps.iterrows():
        if row["metric"] != "latency" or "latency" not in thresholds:
            continue
        thr = parse_threshold(thresholds["latency"], "latency")
        if not suggests_change(row, thr):
            continue
        first = (f"stored baseline said {row['status']} {row['effect']:+.1%}" if math.isfinite(row["effect"])
                 else "")
        blocks = confirm_blocks((noise or {}).get(row["device"]), thr, suite, alpha)
        base_runs = str(row["baseline"]).split(":", 1)[-1]
        sel = hist[(hist["run_id"] == base_runs) & (hist["model"] == row["model"]) & (hist["device"] == row["device"])]
        shas = [s for s in dict.fromkeys(sel["model_sha256"]) if s]
        base_file = H.model_file(history, shas[0]) if shas else None
        if base_file is None:
            comps.at[idx, "note"] = (f"decided by the stored baseline: its model (sha256 "
                                     f"{shas[0][:12] if shas else '?'}) is not in the model store; {row['note']}")
            continue
        say(f"[{row['device']}] {row['model']}: {first}; confirming by a paired re-run of both models "
            f"({blocks} interleaved blocks)")
        confirm_id = H.new_run_id()
        cur_name, base_name = row["model"], f"{row['model']} (baseline)"
        try:
            frames, errors, interrupted = _in_threads(
                {row["device"]: lambda: _measure(row["device"], inventory,
                                                 [BenchModel(base_name, base_file), BenchModel(cur_name, paths[row["model"]])],
                                                 _settings(suite, confirm_id, blocks), devices, say)}, devices, say)
        except Exception as exc:  # noqa: BLE001 - the stored verdict stands, said so
            frames, errors, interrupted = [], {row["device"]: str(exc)}, False
        if interrupted:
            raise Interrupted(f"interrupted during the confirmation re-run of {row['model']}")
        if not frames:
            comps.at[idx, "note"] = (f"decided by the stored baseline: the paired re-run failed "
                                     f"({'; '.join(errors.values())})")
            continue
        import pandas as pd

        frame = pd.concat(frames, ignore_index=True).assign(run_id=confirm_id)
        try:
            H.append_run(frame, history, kind="confirm", suite=suite.name, run_id=confirm_id)
        except HistoryError as exc:
            say(f"confirmation run not stored: {exc}")
        cur, ref = paired_sessions(frame, cur_name, base_name, row["device"])
        v = compare_paired(cur, ref, thr, alpha=alpha)
        say(f"[{row['device']}] {row['model']}: paired re-run: {v.status} {v.effect:+.1%} "
            f"[{v.ci_low:+.1%}, {v.ci_high:+.1%}]")
        for col, val in (("status", v.status), ("method", "wilcoxon-signed-rank (paired re-run)"),
                         ("effect", v.effect), ("ci_low", v.ci_low), ("ci_high", v.ci_high), ("p_value", v.p_value),
                         ("current", v.current), ("baseline_value", v.baseline), ("n_current", v.n_current),
                         ("n_baseline", v.n_baseline)):
            comps.at[idx, col] = val
        comps.at[idx, "note"] = f"decided by the paired re-run {confirm_id} ({v.note}); {first}"
        if v.status != "regression":
            comps.at[idx, "change_run"] = None
    return comps

