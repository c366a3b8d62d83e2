"""``edgelr demo``: run the whole product on a built-in example."""

from __future__ import annotations

from pathlib import Path

import click

from edgelr.cli._common import echo_json, info


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo_out", show_default=True,
              help="Where the example model, compressed models and reports are written.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Training epochs of the example CNN.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(out_dir: str, epochs: int, as_json: bool) -> None:
    """Train a small CNN on scikit-learn's bundled digits, save it, and show what edgelr does with it.

    \b
    Examples:
      edgelr demo
      edgelr demo --out /tmp/edgelr-demo --json
    """
    from edgelr.demo import run_demo

    result = run_demo(Path(out_dir), epochs=epochs)
    summary = {"model": str(result.model_path), "accuracy": round(result.accuracy, 2), **result.steps}
    if as_json:
        echo_json(summary)
        return
    info(f"example model saved to {result.model_path}")
    click.echo(f"digits CNN test accuracy: {result.accuracy:.2f}%")
