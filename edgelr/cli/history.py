"""``edgelr history``: move a results history between SQLite and PostgreSQL, and show where one is."""

from __future__ import annotations

import click

from edgelr.cli._common import echo_json, info, table


@click.group()
def history() -> None:
    """Results history stores: a SQLite file (the default) or a PostgreSQL database shared by runners.

    A history is a path (a directory holding history.sqlite, or a .sqlite file) or a URL
    postgresql://USER@HOST:PORT/DBNAME; model files of a PostgreSQL history go under the URL's
    files=DIR parameter (else under ~/.local/share/edgelr/history-files/). Keep passwords out of URLs
    (~/.pgpass or PGPASSWORD); edgelr masks them in everything it prints or stores.
    """


@history.command("copy")
@click.argument("src")
@click.argument("dst")
@click.option("--json", "as_json", is_flag=True, help="Print the copied row counts as JSON.")
def copy(src: str, dst: str, as_json: bool) -> None:
    """Copy the history SRC into the new, empty history DST: every run, result, baseline, regression
    verdict and noise measurement, in one transaction, and the stored model files. Works in both
    directions between SQLite and PostgreSQL. A DST that already holds runs is refused and left as is.

    \b
    Examples:
      edgelr history copy reports/history 'postgresql://edgelr@db.lab/edgelr?files=/mnt/lab/edgelr'
      edgelr history copy postgresql://edgelr@db.lab/edgelr backup/history.sqlite
    """
    from edgelr.report.history import copy_history, describe, locate

    src_at, dst_at = locate(src), locate(dst)
    info(f"copying {describe(src_at)} -> {describe(dst_at)}")
    counts = copy_history(src_at, dst_at, progress=info)
    if as_json:
        echo_json({"source": describe(src_at), "destination": describe(dst_at), "copied": counts})
    else:
        click.echo(table([{"table": k, "rows": v} for k, v in counts.items()]))


@history.command("info")
@click.argument("history_at", metavar="HISTORY", required=False, envvar="EDGELR_HISTORY")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show(history_at: str | None, as_json: bool) -> None:
    """Where HISTORY is (password masked), where its model files go, and its runs by status.

    \b
    Examples:
      edgelr history info postgresql://edgelr@db.lab/edgelr
    """
    from edgelr.report import history as H

    at = H.locate(history_at) if history_at else H.default_history()
    runs = H.runs(at)
    data = {"history": H.describe(at), "backend": "postgresql" if H.is_url(at) else "sqlite",
            "model_files": str(H.models_dir(at)), "runs": int(len(runs)),
            "by_status": {str(k): int(v) for k, v in runs["status"].value_counts().items()}}
    if as_json:
        echo_json(data)
    else:
        shown = {**data, "by_status": ", ".join(f"{k} {v}" for k, v in data["by_status"].items()) or "-"}
        click.echo(table([{"": k, "value": v} for k, v in shown.items()]))
