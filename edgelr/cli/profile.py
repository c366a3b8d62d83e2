"""``edgelr profile``: per-layer latency tables measured on a device (the table ``compress --latency-device`` uses)."""

from __future__ import annotations

import click

from edgelr.cli._common import echo_json, info, table


@click.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--device", required=True, help="Inventory device to measure on (`local` always exists).")
@click.option("--target", default=None, help="Target profile for quantization, threads, rank multiple [default: the device's].")
@click.option("--method", default="auto", show_default=True, help="Low-rank method profiled (auto = as compress picks).")
@click.option("--threads", type=int, default=None, help="Threads [default: the target's].")
@click.option("--quantize", "quantization", type=click.Choice(["int8", "dynamic", "float16", "none"]), default=None,
              help="Quantization of the micro-models [default: the target's].")
@click.option("--sessions", type=int, default=5, show_default=True,
              help="K sessions (fresh processes) per micro-model; an entry is the median of its session medians.")
@click.option("--runs", type=int, default=20, show_default=True, help="Timed inferences per micro-model and session.")
@click.option("--max-time", type=float, default=None, help="Time budget (s): no new batch starts that would overrun it; "
              "run again to measure the rest.")
@click.option("--cache", type=click.Path(dir_okay=False), default=None, envvar="EDGELR_LATENCY_CACHE",
              help="The table's SQLite file [env: EDGELR_LATENCY_CACHE; default: ~/.cache/edgelr/latency.sqlite].")
@click.option("--inventory", type=click.Path(dir_okay=False), default=None, help="Inventory TOML file.")
@click.option("--targets", "targets_file", default=None, type=click.Path(dir_okay=False), help="User target profiles.")
@click.option("--trust-new-host", is_flag=True, help="SSH: accept and remember an unknown host key.")
@click.option("--no-lock", is_flag=True, help="Do not take the device lock.")
@click.option("--json", "as_json", is_flag=True, help="Print every table row as JSON.")
@click.pass_context
def profile(ctx: click.Context, model: str, device: str, target: str | None, method: str, threads: int | None,
            quantization: str | None, sessions: int, runs: int, max_time: float | None, cache: str | None,
            inventory: str | None, targets_file: str | None, trust_new_host: bool, no_lock: bool,
            as_json: bool) -> None:
    """Measure MODEL's factorizable layers on a device: each layer alone and its low-rank chains over a ladder
    of ranks (Tucker-2 in both modes), as tiny .tflite micro-models with the target's quantization and
    threads, K interleaved sessions each. The table is cached per (device, runtime version, layer signature,
    ranks, quantization, threads), reused by other models with the same layers, and resumable: Ctrl-C or
    --max-time keeps the finished batches and the next run measures only the rest (exit 1 while incomplete).

    Prints per layer the time as is and its fastest measured chain; progress goes to stderr.

    \b
    Examples:
      edgelr profile model.keras --device local
      edgelr profile model.keras --device pi4 --max-time 600 --json
      edgelr compress model.keras --data fashion-mnist --latency-device pi4 --out out/
    """
    from edgelr.profile import profile_model

    result = profile_model(model, device, target=target, method=method, threads=threads, quantization=quantization,
                           sessions=sessions, runs=runs, max_time_s=max_time, cache=cache, inventory=inventory,
                           targets_file=targets_file, trust_new_host=trust_new_host, lock=not no_lock,
                           progress=info)
    summary = {"device": result.device, "runtime": result.runtime, "quantization": result.quantization,
               "threads": result.threads, "model_ms": result.table.model_ms, "probe_ms": result.probe_ms,
               "context_scale": result.table.context_scale, "calibration": result.table.calibration,
               "complete": result.complete,
               "missing": result.missing, "seconds": round(result.seconds, 1), "cache": result.cache,
               "layers": result.layers, "rows": result.rows}
    if as_json:
        echo_json(summary)
    else:
        click.echo(table(result.layers, ["layer", "method", "whole_ms", "fastest_ranks", "fastest_ms",
                                         "fastest_speedup", "micro_models"]))
        info(f"whole model {result.table.model_ms:.3f} ms, probe {result.probe_ms:.3f} ms: a layer inside the model "
             f"x{result.table.context_scale:.2f} its time alone ({result.table.calibration}); "
             f"{len(result.rows)} micro-model(s) in {result.cache} ({result.seconds:.0f} s)")
    if not result.complete:
        info(f"edgelr: error: {result.missing} micro-model(s) not measured yet (--max-time); run again to continue")
        ctx.exit(1)
