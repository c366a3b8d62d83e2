"""``edgelr demo``: run the whole product on a built-in example."""

from __future__ import annotations

from pathlib import Path

import click

from edgelr.cli._common import echo_json, info


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo_out", show_default=True,
              help="Where the example model, compressed models and reports are written.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Training epochs of the example CNN.")
@click.option("--target", default="rpi4", show_default=True, help="Target profile to compress for.")
@click.option("--targets", "targets_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file with your own target profiles (as compress --targets).")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True,
              help="Accuracy budget (points) of the compressed int8 model against the float original.")
@click.option("--sessions", type=click.IntRange(min=1), default=10, show_default=True,
              help="Interleaved sessions per model in the local benchmark.")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed inferences per model in the local benchmark.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(out_dir: str, epochs: int, target: str, targets_file: str | None, max_accuracy_drop: float, runs: int,
         sessions: int, as_json: bool) -> None:
    """The whole product on a built-in example: train a small CNN on scikit-learn's bundled digits,
    compress it for a target within an accuracy budget (factorize, distil, QAT, int8 TFLite), benchmark
    the original and compressed .tflite on this machine, and write an HTML/Markdown report.

    \b
    Examples:
      edgelr demo
      edgelr demo --out /tmp/edgelr-demo --json
    """
    from edgelr.demo import run_demo

    from edgelr.cli._common import table

    result = run_demo(Path(out_dir), epochs=epochs, target=target, max_accuracy_drop=max_accuracy_drop,
                      bench_runs=runs, bench_sessions=sessions, targets_file=targets_file)
    summary = {"model": str(result.model_path), "accuracy": round(result.accuracy, 2), **result.steps}
    if as_json:
        echo_json(summary)
        return
    info(f"example model saved to {result.model_path}")
    click.echo(f"digits CNN test accuracy (float, Keras): {result.accuracy:.2f}%")
    click.echo(f"compression for {target}: {result.message}")
    click.echo()
    click.echo(table(result.rows))
    sp = result.steps.get("speedup", {})
    if sp.get("text"):
        click.echo(f"measured speed-up of the compressed model: {sp['text']} (95 % interval over "
                   f"{sp['blocks']} interleaved blocks of sessions)")
    click.echo()
    click.echo(f"report: {result.steps['report']['html']} (and .md); outputs in {result.out_dir}/compressed")
