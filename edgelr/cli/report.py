"""``edgelr report``: render the results history as Markdown/HTML with plots, or JSON."""

from __future__ import annotations

import click

from edgelr.cli._common import echo_json, info, table



@click.command()
@click.argument("history", required=False, envvar="EDGELR_HISTORY")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write a self-contained HTML report here.")
@click.option("--md", "md_out", type=click.Path(dir_okay=False),
              help="Write a Markdown report here (figures as PNGs in <name>_figures/).")
@click.option("--since", default=None, help="Only runs started since: 30d, 12h, 2w or an ISO date.")
@click.option("--json", "as_json", is_flag=True, help="Print the report's tables as JSON on stdout.")
def report(history: str, html_out: str | None, md_out: str | None, since: str | None, as_json: bool) -> None:
    """Render the results history HISTORY (directory or .sqlite file; default $EDGELR_HISTORY, else
    ~/.local/share/edgelr/history, where `edgelr bench` records runs).

    Per device and model: latency over time with regression markers and step changes, latency
    distributions of the last runs, memory and energy trends, and the accuracy-vs-latency-vs-size view
    of compressed models. Without --html/--md/--json, prints the latest results table.

    \b
    Examples:
      edgelr report reports/history --html report.html --md report.md --since 30d
      edgelr report --json | jq '.latest'
    """
    from edgelr.report import render as R
    from edgelr.report.history import default_history

    history = history or str(default_history())

    data = R.write_report(history, html_out=html_out, md_out=md_out, since=since)
    for path in (html_out, md_out):
        if path:
            info(f"wrote {path}")
    if as_json:
        echo_json(R.to_json(data))
    elif not (html_out or md_out):
        click.echo(table(R.to_json(data)["latest"]))
