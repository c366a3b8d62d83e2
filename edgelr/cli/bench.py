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
  edgelr bench model.tflite --device local --runs 20
  edgelr bench out/model.tflite out/baseline.tflite --device pi4 --repeat 3 --out results.parquet
  edgelr bench model.tflite --device pi4 --threads 4 --json > results.json

\b
Devices come from the inventory (edgelr devices list); `local` (this machine) always exists.
Per-run latencies are kept as `latency` rows (sample 0..N-1) in --out and --json.
"""


@click.command(epilog=EPILOG)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", "-d", default="local", show_default=True, help="Inventory device name.")
@click.option("--inventory", type=click.Path(dir_okay=False), help="Inventory TOML file (else $EDGELR_INVENTORY, "
              "else ~/.config/edgelr/inventory.toml).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads [default: the target profile's].")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed inferences.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Warm-up inferences.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Benchmark each model K times, cooling down in between.")
@click.option("--cooldown-c", type=float, default=45.0, show_default=True,
              help="Wait until the device is cooler than this (degrees C) before each run.")
@click.option("--cooldown-timeout", type=float, default=300.0, show_default=True,
              help="Longest cool-down wait (s); then it runs hot and says so in the notes.")
@click.option("--xnnpack/--no-xnnpack", default=True, show_default=True, help="Use the XNNPACK delegate.")
@click.option("--canary/--no-canary", default=True, show_default=True,
              help="Time a tiny fixed workload before each run; > 1.10 x the first one means throttled.")
@click.option("--timeout", type=float, help="Deadline of one benchmark run (s) [default: the device's].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the long results frame to .parquet or .csv (kept even when a later model fails).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and every row as JSON on stdout.")
@click.option("--trust-new-host", is_flag=True, help="SSH: accept and remember an unknown host key.")
@click.option("--history", envvar="EDGELR_HISTORY", type=click.Path(),
              help="Results history the run is appended to (directory or .sqlite) [env: EDGELR_HISTORY; "
                   "default: ~/.local/share/edgelr/history].")
@click.option("--no-history", is_flag=True, help="Do not append this run to the results history.")
def bench(models: tuple[Path, ...], device: str, inventory: str | None, threads: int | None, runs: int,
          warmup: int, repeat: int, cooldown_c: float, cooldown_timeout: float, xnnpack: bool, canary: bool,
          timeout: float | None, out: Path | None, as_json: bool, trust_new_host: bool,
          history: str | None, no_history: bool) -> None:
    """Benchmark MODEL.tflite [MODEL2 ...] on a device: latency, peak memory, temperature, energy.

    Prints a summary per model (avg/median/p90 latency in ms, peak RSS in MB, energy per inference in
    mJ when the device has a sensor); progress goes to stderr.
    """
    from device_agents.inventory import get_device, open_transport
    from edgelr.bench.frame import write_frame
    from edgelr.bench.run import BenchSettings, benchmark
    from edgelr.errors import DeviceError, UsageError
    from edgelr.report.history import default_history

    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise UsageError(f"--out {out}: expected a .parquet or .csv file name")
    spec = get_device(device, inventory)
    history = None if no_history else (history or str(default_history()))
    settings = BenchSettings(threads=threads, runs=runs, warmup=warmup, repeat=repeat, cooldown_c=cooldown_c,
                             cooldown_timeout_s=cooldown_timeout, use_xnnpack=xnnpack, timeout_s=timeout, out=out,
                             canary=canary)
    overrides: dict[str, Any] = {"trust_new_host": True} if trust_new_host and spec.transport == "ssh" else {}
    transport = open_transport(spec, **overrides)
    try:
        frame = benchmark(spec, transport, list(models), settings, progress=info)
    except DeviceError as exc:
        partial = getattr(exc, "partial_frame", None)
        if partial is not None and len(partial):
            _record_history(partial, history, status="partial", error=str(exc), device=spec.name)
            _emit(partial, as_json)
        raise
    finally:
        transport.close()
    if out is not None:
        write_frame(frame, out)
        info(f"wrote {len(frame)} rows to {out}")
    _record_history(frame, history, device=spec.name)
    _emit(frame, as_json)


def _emit(frame: "pd.DataFrame", as_json: bool) -> None:
    from edgelr.bench.frame import summarize

    rows = summarize(frame)
    if as_json:
        records = frame.to_dict(orient="records")
        echo_json({"run_id": frame["run_id"].iloc[0] if len(frame) else "", "summary": rows, "rows": records})
    else:
        click.echo(table(rows, ["model", "device", "repeats", "avg_ms", "median_ms", "p90_ms", "peak_mb",
                                "energy_mj", "temp_c", "throttled"]))


# --- results history ----------------------------------------------------------------------------------
def _record_history(frame: "pd.DataFrame", history: str | None = None, status: str = "complete",
                    error: str | None = None, **context: Any) -> None:
    """Append the run to the results history (nothing with ``--no-history``); says where on stderr."""
    if not history:
        return
    from edgelr.report.history import append_run

    run_id = append_run(frame, history, kind="bench", status=status, error=error)
    info(f"recorded run {run_id} in {history}")
