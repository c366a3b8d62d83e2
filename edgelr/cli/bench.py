"""``edgelr bench``: benchmark .tflite models on a device of the inventory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgelr.cli._common import echo_json, info, table

if TYPE_CHECKING:
    import pandas as pd

EPILOG = """\b
Examples:
  edgelr bench model.tflite --device local
  edgelr bench small=out/model.tflite big=out/baseline.tflite --device pi4 --sessions 12 --out results.parquet
  edgelr bench a.tflite b.tflite --reference b --max-time 120 --json > results.json

\b
A measurement is K sessions (--sessions, each a fresh benchmark process with its own warm-up) of N timed
inferences (--runs). With several models their sessions are interleaved in randomized blocks, and each
model is compared with the reference (the first model, or --reference NAME) on the per-block ratios:
the speed-up comes with its 95 % interval (Wilcoxon signed-rank / Hodges-Lehmann over blocks).
Models are named NAME=path.tflite, by --name (in order), by the name `edgelr compress` recorded beside
its outputs, else by the file stem. The device is locked for the run (--no-lock to skip).
Devices come from the inventory (edgelr devices list); `local` (this machine) always exists.
Per-inference latencies are kept as `latency` rows (sample 0..N-1, repeat = session) in --out and --json.
"""


@click.command(epilog=EPILOG)
@click.argument("models", nargs=-1, required=True)
@click.option("--device", "-d", default="local", show_default=True, help="Inventory device name.")
@click.option("--inventory", type=click.Path(dir_okay=False), help="Inventory TOML file (else $EDGELR_INVENTORY, "
              "else ~/.config/edgelr/inventory.toml).")
@click.option("--name", "names", multiple=True, help="Name of the models, in order (repeatable).")
@click.option("--reference", default=None, help="Model the others are compared with [default: the first].")
@click.option("--threads", type=click.IntRange(min=1, max=1024), help="CPU threads [default: the target profile's].")
@click.option("--sessions", "-k", type=click.IntRange(min=1), default=None,
              help="Sessions per model (fresh benchmark processes) [default: 10].")
@click.option("--repeat", type=click.IntRange(min=1), default=None, hidden=True, help="Old name of --sessions.")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Timed inferences per session [default: 20].")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Time budget (s): no new block of sessions starts that would overrun it.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Warm-up inferences.")
@click.option("--cooldown-c", type=float, default=45.0, show_default=True,
              help="Wait until the device is cooler than this (degrees C) before each session.")
@click.option("--cooldown-timeout", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Longest cool-down wait (s); then it runs hot and says so in the notes.")
@click.option("--xnnpack/--no-xnnpack", default=True, show_default=True, help="Use the XNNPACK delegate.")
@click.option("--profile-ops", is_flag=True,
              help="Store per-op (node) timings where the device's tool gives them (benchmark_model "
                   "--enable_op_profiling; edgelr's LiteRT runner cannot) and print each model's top ops.")
@click.option("--canary/--no-canary", default=True, show_default=True,
              help="Time a tiny fixed workload before each run; > 1.10 x the first one means throttled.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Deadline of one benchmark session (s) [default: the device's].")
@click.option("--seed", type=int, default=None, help="Seed of the block order [default: from the run id].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the long results frame to .parquet or .csv (kept even when a later model fails).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and every row as JSON on stdout.")
@click.option("--trust-new-host", is_flag=True, help="SSH: accept and remember an unknown host key.")
@click.option("--no-lock", is_flag=True, help="Do not take the device lock (experts: measurements may collide).")
@click.option("--history", envvar="EDGELR_HISTORY", type=click.Path(),
              help="Results history the run is appended to (directory, .sqlite or postgresql://...) [env: EDGELR_HISTORY; "
                   "default: ~/.local/share/edgelr/history].")
@click.option("--no-history", is_flag=True, help="Do not append this run to the results history.")
def bench(models: tuple[str, ...], device: str, inventory: str | None, names: tuple[str, ...],
          reference: str | None, threads: int | None, sessions: int | None, repeat: int | None, runs: int | None,
          max_time: float | None, warmup: int, cooldown_c: float, cooldown_timeout: float, xnnpack: bool,
          profile_ops: bool, canary: bool, timeout: float | None, seed: int | None, out: Path | None, as_json: bool,
          trust_new_host: bool, no_lock: bool, history: str | None, no_history: bool) -> None:
    """Benchmark MODEL.tflite [MODEL2 ...] on a device: latency, peak memory, temperature, energy.

    Prints a summary per model (median of the session medians and its spread between sessions in ms,
    speed-up over the reference with its 95 % interval, peak RSS in MB, energy per inference in mJ when
    the device has a sensor); progress goes to stderr.
    """
    from device_agents.inventory import get_device, open_transport
    from edgelr.bench.frame import write_frame
    from edgelr.bench.lock import lock_for
    from edgelr.bench.run import DEFAULT_RUNS, DEFAULT_SESSIONS, BenchSettings, benchmark
    from edgelr.errors import DeviceError, HistoryError, Interrupted, UsageError
    from edgelr.report.history import default_history

    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise UsageError(f"--out {out}: expected a .parquet or .csv file name")
    items = named_models(models, names)
    if reference is not None and reference not in [m.name for m in items]:
        raise UsageError(f"--reference {reference!r}: not one of the models {[m.name for m in items]}")
    spec = get_device(device, inventory)
    history = None if no_history else (history or str(default_history()))
    settings = BenchSettings(threads=threads, runs=runs or DEFAULT_RUNS, warmup=warmup,
                             sessions=sessions or repeat or DEFAULT_SESSIONS, max_time_s=max_time, seed=seed,
                             cooldown_c=cooldown_c, cooldown_timeout_s=cooldown_timeout, use_xnnpack=xnnpack,
                             profile_ops=profile_ops, timeout_s=timeout, out=out, canary=canary)
    settings.validate()
    overrides: dict[str, Any] = {"trust_new_host": True} if trust_new_host and spec.transport == "ssh" else {}
    with lock_for(spec, on_wait=info, enabled=not no_lock):
        transport = open_transport(spec, **overrides)
        try:
            frame = benchmark(spec, transport, items, settings, progress=info)
        except (DeviceError, Interrupted) as exc:
            partial = getattr(exc, "partial_frame", None)
            if partial is not None and len(partial):
                _emit(partial, as_json, reference)
                try:
                    _record_history(partial, history, status="partial", error=str(exc), device=spec.name)
                except HistoryError as hexc:
                    info(f"edgelr: {hexc}")
            raise
        finally:
            transport.close()
    if out is not None:
        write_frame(frame, out)
        info(f"wrote {len(frame)} rows to {out}")
    _emit(frame, as_json, reference)
    _record_history(frame, history, device=spec.name)


def named_models(args: "tuple[str, ...] | list[str]", names: "tuple[str, ...] | list[str]" = ()) -> list[Any]:
    """``NAME=path`` / ``path`` arguments and ``--name`` values -> BenchModels.

    A name comes from ``NAME=`` first, then ``--name`` (in order), then the name ``edgelr compress``
    recorded beside its outputs (``names.json``, :mod:`edgelr.compress.names`), then the file stem.
    """
    from edgelr.bench.run import BenchModel
    from edgelr.compress.names import recorded_name
    from edgelr.errors import UsageError

    if names and len(names) != len(args):
        raise UsageError(f"--name given {len(names)} time(s) for {len(args)} model(s); give one per model, in order")
    out = []
    for i, arg in enumerate(args):
        name, _, path = arg.rpartition("=") if "=" in arg and not Path(arg).exists() else ("", "", arg)
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"model file {p} does not exist; pass .tflite files (NAME=path.tflite to name one)")
        name = name or (names[i] if names else "") or recorded_name(p) or p.stem
        out.append(BenchModel(name, p))
    return out


def comparisons(frame: "pd.DataFrame", reference: str | None = None) -> list[dict[str, Any]]:
    """Each model against the reference (the first model by default) on paired, interleaved sessions."""
    from edgelr.report.stats import paired_speedup

    order = list(dict.fromkeys(frame["model"]))
    if len(order) < 2:
        return []
    ref = reference or order[0]
    out = []
    for model in order:
        if model == ref:
            continue
        for dev in dict.fromkeys(frame["device"]):
            v, sp = paired_speedup(frame, model, ref, dev)
            out.append({"model": model, "reference": ref, "device": dev, "blocks": sp["blocks"],
                        "ratio": 1 + v.effect, "ratio_low": 1 + v.ci_low, "ratio_high": 1 + v.ci_high,
                        "speedup": sp["speedup"], "speedup_low": sp["low"], "speedup_high": sp["high"],
                        "p_slower": v.p_value if v.status != "improvement" else float("nan"),
                        "speedup_text": sp["text"], "note": v.note})
    return out


def _emit(frame: "pd.DataFrame", as_json: bool, reference: str | None = None) -> None:
    from edgelr.bench.frame import summarize, top_ops

    rows = summarize(frame)
    comps = comparisons(frame, reference)
    by_model = {(c["model"], c["device"]): c["speedup_text"] for c in comps}
    for r in rows:
        r["speedup"] = by_model.get((r["model"], r["device"]), "reference" if comps else "")
    if as_json:
        records = frame.to_dict(orient="records")
        echo_json({"run_id": frame["run_id"].iloc[0] if len(frame) else "", "summary": rows,
                   "comparisons": comps, "top_ops": top_ops(frame), "rows": records})
    else:
        cols = ["model", "device", "sessions", "median_ms", "session_cv", "p90_ms"]
        if comps:
            cols.append("speedup")
        cols += ["peak_mb", "energy_mj", "temp_c", "throttled"]
        click.echo(table(rows, cols))
        if comps:
            info("speed-up = reference latency / model latency, 95 % interval over interleaved blocks of sessions")
        _emit_top_ops(frame)


def _emit_top_ops(frame: "pd.DataFrame") -> None:
    """``--profile-ops``: each model's slowest ops (median over sessions), or why there are none."""
    from edgelr.bench.frame import top_ops

    ops = top_ops(frame)
    if not ops:
        return
    timed = [r for r in ops if r["op"]]
    if timed:
        click.echo("")
        click.echo(table(timed, ["model", "device", "rank", "type", "op", "ms", "share"]))
    for r in ops:
        if not r["op"]:
            info(f"{r['model']} on {r['device']}: no per-op timings: {r['why']}")


# --- results history ----------------------------------------------------------------------------------
def _record_history(frame: "pd.DataFrame", history: str | None = None, status: str = "complete",
                    error: str | None = None, **context: Any) -> None:
    """Append the run to the results history (nothing with ``--no-history``); says where on stderr."""
    if not history:
        return
    from edgelr.report.history import append_or_spool, describe

    run_id = append_or_spool(frame, history, kind="bench", status=status, error=error)
    info(f"recorded run {run_id} in {describe(history)}")
