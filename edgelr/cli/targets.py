"""``edgelr targets``: list the target device profiles."""

from __future__ import annotations

import click

from edgelr.cli._common import echo_json, table
from edgelr.targets import load_targets


@click.command()
@click.option("--targets", "targets_file", type=click.Path(dir_okay=False), default=None,
              help="Extra/overriding profiles (TOML with [targets.NAME] tables). Default: $EDGELR_TARGETS.")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def targets(targets_file: str | None, as_json: bool) -> None:
    """List the target device profiles and the fields the pipeline uses.

    \b
    Examples:
      edgelr targets
      edgelr targets --json
      edgelr targets --targets my_boards.toml
    """
    profiles = load_targets(targets_file)
    if as_json:
        echo_json({name: t.to_dict() for name, t in profiles.items()})
        return
    cols = ["name", "os", "abi", "cpu", "threads", "affinity_mask", "quantization", "delegate",
            "rank_multiple", "memory_budget_mb", "output_cost"]
    click.echo(table([t.to_dict() for t in profiles.values()], cols))
