"""``edgelr report``: render the results history as Markdown/HTML with plots, or JSON."""

from __future__ import annotations

from pathlib import Path

import click

from edgelr.cli._common import echo_json, info, table


def _check_out(option: str, path: str | None) -> None:
    """A report output path must be a file we could create: not a directory, not under a file."""
    from edgelr.errors import UsageError

    if not path:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{option} {path!r} is a directory; expected a file name, e.g. {option} report"
                         f"{'.html' if option == '--html' else '.md'}")
    parent = next((q for q in p.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"{option} {path!r}: {parent} is a file, not a directory; pick another path")


@click.command()
@click.argument("history", required=False, envvar="EDGELR_HISTORY")
@click.option("--html", "html_out", default=None, help="Write a self-contained HTML report here.")
@click.option("--md", "md_out", default=None,
              help="Write a Markdown report here (figures as PNGs in <name>_figures/).")
@click.option("--since", default=None, help="Only runs started since: 30d, 12h, 2w, 90m or an ISO date (2026-11-01).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's tables as JSON on stdout.")
def report(history: str, html_out: str | None, md_out: str | None, since: str | None, as_json: bool) -> None:
    """Render the results history HISTORY (directory or .sqlite file; default $EDGELR_HISTORY, else
    ~/.local/share/edgelr/history, where `edgelr bench` records runs). Only reads the history: it
    works on a read-only copy.

    One row per model and device (latency, speed-up with its 95 % interval, and the accuracy and size
    that `edgelr compress` measured on the host), model changes (a model name whose sha256 changed),
    regressions, and per device and model the latency per run (each session a dot, median and min–max
    of the sessions), memory and energy trends and accuracy vs latency and size. Without
    --html/--md/--json, prints the latest results table.

    \b
    Examples:
      edgelr report reports/history --html report.html --md report.md --since 30d
      edgelr report --json | jq '.latest'
    """
    from edgelr.errors import HistoryError, UsageError
    from edgelr.report import render as R
    from edgelr.report.history import default_history, parse_since

    try:
        parse_since(since)
    except HistoryError as exc:
        raise UsageError(str(exc)) from None
    _check_out("--html", html_out)
    _check_out("--md", md_out)
    if html_out and md_out and Path(html_out).expanduser().resolve() == Path(md_out).expanduser().resolve():
        raise UsageError(f"--html and --md both name {html_out!r}; give them different files")
    history = history or str(default_history())

    data = R.write_report(history, html_out=html_out, md_out=md_out, since=since)
    for path in (html_out, md_out):
        if path:
            info(f"wrote {path}")
    if as_json:
        echo_json(R.to_json(data))
    elif not (html_out or md_out):
        shown = R.display_tables(data)["latest"]
        click.echo(table(shown.to_dict("records")) if len(shown) else "(no results in the history)")
