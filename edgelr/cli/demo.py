"""``edgelr demo``."""

from __future__ import annotations

import click

from edgelr.cli._common import not_available


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def demo() -> None:
    """Not available yet in this version."""
    not_available("demo")
