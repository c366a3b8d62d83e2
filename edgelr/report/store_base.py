"""What every history backend shares: the table layout, the transaction interface, secret masking.

:mod:`edgelr.report.history` holds the logic (runs, rows, baselines, leases of started runs) and speaks
SQL with ``?`` placeholders through a :class:`Tx`; a backend (:mod:`edgelr.report.store_sqlite`,
:mod:`edgelr.report.store_pg`) opens, creates and migrates its store, runs transactions and turns its
driver's errors into one :class:`~edgelr.errors.HistoryError` line. Dialect differences live in the
backends only: the ordering column (SQLite ``rowid``, PostgreSQL ``id``), row locks (``FOR UPDATE``),
bulk inserts (``executemany`` / ``COPY``), and how a dead writer is recognised.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from edgelr.bench.frame import COLUMNS

if TYPE_CHECKING:
    import pandas as pd

INT_COLUMNS = ("repeat", "sample", "threads")
FLOAT_COLUMNS = ("value",)
DEFAULTS: dict[str, Any] = {
    "timestamp": None, "target": "", "transport": "", "model_sha256": "", "repeat": 0, "sample": -1,
    "unit": None, "tool": "", "tool_version": "", "threads": None, "note": "",
}
"""What a results column holds when the frame lacks it."""

RUN_COLUMNS = ["run_id", "kind", "suite", "status", "started_at", "finished_at", "host", "pid", "n_rows",
               "error", "frame_version", "argv"]
RUN_INTS = ("pid", "n_rows", "frame_version")
BASELINE_COLUMNS = ["name", "run_id", "accepted_at"]
COMPARISON_COLUMNS = ["run_id", "baseline", "model", "device", "metric", "status", "method", "p_value",
                      "effect", "ci_low", "ci_high", "threshold", "n_current", "n_baseline", "current",
                      "baseline_value", "change_run", "note"]
COMPARISON_FLOATS = ("p_value", "effect", "ci_low", "ci_high", "current", "baseline_value")
COMPARISON_INTS = ("n_current", "n_baseline")
NOISE_COLUMNS = ["device", "measured_at", "sd_log_ratio", "session_cv", "sessions", "runs", "alpha",
                 "min_detectable", "source"]
NOISE_FLOATS = ("sd_log_ratio", "session_cv", "alpha", "min_detectable")
NOISE_INTS = ("sessions", "runs")

TABLES: dict[str, list[str]] = {
    "runs": RUN_COLUMNS, "results": list(COLUMNS), "baselines": BASELINE_COLUMNS,
    "comparisons": COMPARISON_COLUMNS, "noise_floor": NOISE_COLUMNS,
}
"""Every table of a history and its columns, in the order ``edgelr history copy`` moves them."""


def column_type(table: str, col: str) -> str:
    """``INTEGER``, ``REAL`` or ``TEXT``: the portable type of one column."""
    ints = {"runs": RUN_INTS, "results": INT_COLUMNS, "comparisons": COMPARISON_INTS, "noise_floor": NOISE_INTS}
    floats = {"results": FLOAT_COLUMNS, "comparisons": COMPARISON_FLOATS, "noise_floor": NOISE_FLOATS}
    if col in ints.get(table, ()):
        return "INTEGER"
    if col in floats.get(table, ()):
        return "REAL"
    return "TEXT"


def quoted(cols: Iterable[str], prefix: str = "") -> str:
    """``"a", "b"`` (``x."a", x."b"`` with a prefix): identifiers both dialects accept, reserved or not."""
    return ", ".join(f'{prefix}"{c}"' for c in cols)


def now() -> str:
    """The current UTC time as the ISO text every time column holds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


_URL_PASSWORD = re.compile(r"(://[^/@:\s]*):[^@/\s]*@")
_KV_PASSWORD = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with passwords of URLs (``scheme://user:secret@host``) and ``password=...`` replaced by ``***``."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))


class Tx:
    """An open read connection or write transaction; SQL uses ``?`` placeholders in both dialects."""

    rowid: str = "rowid"
    """The column that orders rows as they were inserted."""
    for_update: str = ""
    """Appended to a SELECT that is followed by an UPDATE of the same rows (a row lock where needed)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; the result has ``fetchone``, ``fetchall``, ``rowcount`` and ``description``."""
        raise NotImplementedError

    def insert_rows(self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows (the backend's fastest way)."""
        raise NotImplementedError

    def tables(self) -> set[str]:
        """Names of the tables the store holds."""
        raise NotImplementedError

    def ensure_noise_table(self) -> None:
        """Create ``noise_floor`` if this store does not have it (older SQLite stores)."""

    def frame(self, sql: str, params: Sequence[Any] = ()) -> "pd.DataFrame":
        """The rows of a query as a DataFrame (numbers coerced as pandas.read_sql does)."""
        import pandas as pd

        cur = self.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return pd.DataFrame.from_records(cur.fetchall(), columns=cols, coerce_float=True)


class Store:
    """One history backend, for one history location."""

    label: str
    """How messages name the store (a path, or a URL with its password masked)."""

    def exists(self) -> bool:
        """Whether a history is there to read (readers of a missing one get one clear line)."""
        raise NotImplementedError

    def files_root(self) -> Path:
        """The directory beside the store: ``models/`` (content-addressed .tflite copies) lives in it."""
        raise NotImplementedError

    def write(self, run_id: str | None = None) -> AbstractContextManager[Tx]:
        """A write transaction, created/migrated store first; committed on success, rolled back on error.

        ``run_id``: the run this transaction writes; a backend may use the connection that holds its lease.
        """
        raise NotImplementedError

    def read(self) -> AbstractContextManager[Tx]:
        """A read-only view; never writes (read-only media, a read-only database role)."""
        raise NotImplementedError

    def hold_lease(self, run_id: str) -> None:
        """Mark ``run_id`` as being written by this process until :meth:`release_lease` (or its death)."""

    def release_lease(self, run_id: str) -> None:
        """This process no longer writes ``run_id``."""

    def gone(self, tx: Tx, started: list[tuple[str, str | None, int | None]]) -> set[str]:
        """Of the ``(run_id, host, pid)`` of started runs, those whose writer is gone."""
        raise NotImplementedError
