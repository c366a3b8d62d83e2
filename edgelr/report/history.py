"""The results history: every ``bench``, ``regress`` and ``compress`` run appends its long frame here.

One store interface, two backends, chosen by the ``history`` argument:

- a path (the default, ``~/.local/share/edgelr/history``): a SQLite file (:mod:`edgelr.report.store_sqlite`;
  a file ending in ``.sqlite``/``.db`` is the store itself, anything else is a directory holding
  ``history.sqlite``);
- ``postgresql://user@host:port/dbname[?files=DIR]``: a PostgreSQL database shared by runners on several
  hosts (:mod:`edgelr.report.store_pg`; psycopg 3). Model files go under ``files=DIR``.

This module holds the logic both share, in SQL both speak (:class:`edgelr.report.store_base.Tx`):

- Atomic runs. A run's rows and its final status go in with one transaction: a writer killed at any
  instant leaves all of them or none. Storage choice: a database, not a Parquet dataset, which would need
  write-temp-then-rename per file *plus* a manifest updated atomically with it, i.e. a second, home-made
  transaction log.
- A record of failed runs. :func:`begin_run` commits a ``runs`` row with status ``started`` *before*
  the rows are written; :func:`append_run` turns it into ``complete``/``partial``/``failed`` in the same
  transaction as the rows. A ``started`` run whose writer is gone (SQLite: same host, pid dead;
  PostgreSQL: its lease, an advisory lock held by the writer's session, is free) is shown as ``failed``
  ("interrupted") by :func:`runs`, and persisted so by the next writer.
- Concurrent writers, versioned layouts and migrations, damaged stores: see the backends.
- Queries by (model, device, metric, run) are what regression checks do; both backends index them.

``edgelr history copy SRC DST`` (:func:`copy_history`) moves a history between the two, all tables and
the model files. Messages name a PostgreSQL history with its password masked (:func:`describe`).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgelr.bench.frame import COLUMNS, METRICS, SCHEMA_VERSION as FRAME_VERSION, new_run_id
from edgelr.errors import HistoryError
from edgelr.report.store_base import (
    COMPARISON_COLUMNS, COMPARISON_FLOATS as _COMPARISON_FLOATS, COMPARISON_INTS as _COMPARISON_INTS, DEFAULTS as _DEFAULTS,
    FLOAT_COLUMNS as _FLOAT_COLUMNS, INT_COLUMNS as _INT_COLUMNS, NOISE_COLUMNS, TABLES, Store, mask_secrets,
    now as _now, quoted,
)
from edgelr.report.store_sqlite import STORE_FILENAME, STORE_VERSION, V0_RESULTS_COLUMNS, store_path

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COMPARISON_COLUMNS", "KINDS", "STATUSES", "STORE_FILENAME", "STORE_VERSION", "V0_RESULTS_COLUMNS",
           "append_or_spool", "append_run", "baselines", "begin_run", "copy_history", "default_history",
           "describe", "exists", "fail_run", "files_root", "is_url", "load", "load_comparisons", "locate",
           "mark_baseline", "model_file", "models_dir", "noise_floor", "open_store", "parse_since",
           "record_comparisons", "record_noise", "runs", "spool", "store_model", "store_path"]

KINDS = ("bench", "regress", "compress", "confirm")
"""``confirm``: the paired re-run of a stored baseline model beside the current one (``regress``)."""
STATUSES = ("started", "complete", "partial", "failed")
"""``partial``: some devices failed; the rows of the others are stored."""

_REQUIRED = ("device", "model", "metric", "value")
_TEST_DELAY_ENV = "EDGELR_HISTORY_TEST_DELAY"
"""Test hook: seconds to sleep between row chunks inside the write transaction (kill tests)."""
_TEST_MARK_ENV = "EDGELR_HISTORY_TEST_MARK"
"""Test hook: a file created once the first chunk of rows is inside the (uncommitted) transaction."""

# ------------------------------------------------------------------------------------ locations, backends
def is_url(history: Any) -> bool:
    """Whether ``history`` names a database (``postgresql://...``) rather than a SQLite path."""
    return isinstance(history, str) and "://" in history


def locate(history: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> "str | Path":
    """A ``--history`` value or a suite's ``history =`` resolved once: a URL stays as it is (a scheme
    other than postgresql is refused), a path is expanded and made absolute (relative to ``base``)."""
    if is_url(history):
        from edgelr.report.store_pg import is_url as is_pg

        if not is_pg(history):
            scheme = str(history).split("://", 1)[0]
            raise HistoryError(f"history {mask_secrets(str(history))!r}: the {scheme}:// scheme is not supported; "
                               f"expected a path (SQLite) or postgresql://user@host:port/dbname")
        return str(history)
    p = Path(history).expanduser()
    return (Path(base) / p if base is not None else p).resolve()


def open_store(history: str | os.PathLike[str]) -> Store:
    """The backend of ``history``: :class:`~edgelr.report.store_pg.PGStore` for ``postgresql://``, else
    :class:`~edgelr.report.store_sqlite.SQLiteStore` (imports psycopg only for the former)."""
    if is_url(history):
        from edgelr.report.store_pg import PGStore

        return PGStore(str(locate(history)))
    from edgelr.report.store_sqlite import SQLiteStore

    return SQLiteStore(history)


def describe(history: str | os.PathLike[str]) -> str:
    """How to name ``history`` in a message: the SQLite file, or the URL with its password masked."""
    return mask_secrets(str(history)) if is_url(history) else str(store_path(history))


def exists(history: str | os.PathLike[str]) -> bool:
    """Whether a history is there to read."""
    return open_store(history).exists()


def default_history() -> Path:
    """Where runs go when no history is named: ``$XDG_DATA_HOME/edgelr/history`` (``~/.local/share/...``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgelr" / "history"


MODEL_STORE_CAP_BYTES = 2 << 30
"""Size cap of the content-addressed model store beside a history (2 GiB); oldest-used files go first."""


def files_root(history: str | os.PathLike[str]) -> Path:
    """The directory beside the history: the SQLite file's folder, or a PostgreSQL URL's ``files=DIR``."""
    return open_store(history).files_root()


def models_dir(history: str | os.PathLike[str]) -> Path:
    """Folder of the content-addressed ``.tflite`` store beside the history (``<files_root>/models``)."""
    return files_root(history) / "models"


def store_model(history: str | os.PathLike[str], path: str | os.PathLike[str], *,
                cap_bytes: int = MODEL_STORE_CAP_BYTES, keep: "set[str] | None" = None) -> str:
    """Keep a copy of a benchmarked model under its sha256 (deduplicated, atomic); returns the sha256.

    Files are ``<history>/models/<sha[:2]>/<sha>.tflite``. When the store exceeds ``cap_bytes`` the
    least recently used files are pruned, never the one just stored nor any sha in ``keep`` (e.g. the
    models of accepted baselines).
    """
    import shutil

    from device_agents.files import sha256_file

    src = Path(path)
    sha = sha256_file(src)
    dest = models_dir(history) / sha[:2] / f"{sha}.tflite"
    try:
        if dest.is_file():
            os.utime(dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        _prune_models(history, cap_bytes, {sha, *(keep or set())})
    except OSError as exc:
        raise HistoryError(f"cannot keep a copy of {src} in {models_dir(history)}: {exc.strerror or exc}") from None
    return sha


def _prune_models(history: str | os.PathLike[str], cap_bytes: int, keep: set[str]) -> None:
    files = sorted((f.stat().st_mtime, f) for f in models_dir(history).glob("*/*.tflite"))
    total = sum(f.stat().st_size for _, f in files)
    for _, f in files:
        if total <= cap_bytes:
            break
        if f.stem in keep:
            continue
        total -= f.stat().st_size
        f.unlink(missing_ok=True)


def model_file(history: str | os.PathLike[str], sha: str) -> Path | None:
    """The stored copy of the model with this sha256, or None (never stored, or pruned)."""
    if not sha or not all(c in "0123456789abcdef" for c in sha):
        return None
    p = models_dir(history) / sha[:2] / f"{sha}.tflite"
    return p if p.is_file() else None


#: ``source`` of a noise floor measured A/A by ``edgelr devices check NAME --noise``.
NOISE_FROM_CHECK = "devices check --noise"


def record_noise(history: str | os.PathLike[str], device: str, *, sd_log_ratio: float, session_cv: float,
                 sessions: int, runs: int, alpha: float, min_detectable: float, source: str) -> None:
    """Store a device's measured between-session noise.

    ``source``: ``"devices check --noise"`` (an A/A interleaved measurement) or ``"regress <run id>"``
    (estimated from the spread of one regress run's session medians, more conservative).
    """
    with open_store(history).write() as tx:
        tx.ensure_noise_table()
        tx.insert_rows("noise_floor", NOISE_COLUMNS, [(device, _now(), sd_log_ratio, session_cv, sessions, runs,
                                                       alpha, min_detectable, source)])


def noise_floor(history: str | os.PathLike[str], device: str, source: str | None = None) -> dict[str, Any] | None:
    """The latest stored noise measurement of ``device`` (from ``source`` when given), or None."""
    store = open_store(history)
    if not store.exists():
        return None
    with store.read() as tx:
        if "noise_floor" not in tx.tables():
            return None
        only = "" if source is None else " AND source=?"
        cur = tx.execute(f"SELECT {quoted(NOISE_COLUMNS)} FROM noise_floor WHERE device=?{only} "
                         f"ORDER BY measured_at DESC LIMIT 1", (device,) if source is None else (device, source))
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row))


def spool_dir() -> Path:
    """Where rows go when the history cannot take them: ``$XDG_STATE_HOME/edgelr/spool``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgelr" / "spool"


def spool(frame: "pd.DataFrame", run_id: str | None = None) -> Path:
    """Write a results frame that the history refused to a CSV spool file; return its path.

    Tried in order: :func:`spool_dir`, then the system temp directory. The file holds the long frame
    (:data:`edgelr.bench.frame.COLUMNS`); ``edgelr history import FILE`` is not there yet, but
    :func:`append_run` takes ``pandas.read_csv(FILE)`` as it is.
    """
    import tempfile

    name = f"{run_id or new_run_id()}.csv"
    errors = []
    for d in (spool_dir(), Path(tempfile.gettempdir()) / "edgelr-spool"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.part"
            frame.to_csv(tmp, index=False)
            os.replace(tmp, d / name)
            return d / name
        except OSError as exc:
            errors.append(f"{d}: {exc.strerror or exc}")
    raise HistoryError(f"could not write the spool file either ({'; '.join(errors)})")


def append_or_spool(frame: "pd.DataFrame", history: str | os.PathLike[str], **kwargs: Any) -> str:
    """:func:`append_run`; when the history cannot take the rows, spool them and raise one line that says
    why (the real cause: read-only, disk full, damaged) and where the rows are."""
    try:
        return append_run(frame, history, **kwargs)
    except HistoryError as exc:
        if not len(frame):
            raise
        where = spool(frame, kwargs.get("run_id"))
        raise HistoryError(f"{exc}; the {len(frame)} measured rows are kept in {where}") from exc


def _masked_argv() -> str:
    """This command line as stored with a run (a password in a --history URL masked)."""
    return json.dumps([mask_secrets(a) for a in sys.argv[1:]])


def _reap_interrupted(store: Store, tx: Any) -> None:
    """Inside a write transaction: persist ``failed`` for started runs whose writer is gone."""
    started = [tuple(r) for r in tx.execute("SELECT run_id, host, pid FROM runs WHERE status='started' "
                                            "ORDER BY run_id").fetchall()]
    by_id = {r[0]: r for r in started}
    for rid in sorted(store.gone(tx, started)):
        _, host, pid = by_id[rid]
        tx.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE run_id=? AND status='started'",
                   (_now(), f"interrupted: writer process {pid} on {host} ended before the run completed", rid))


# ------------------------------------------------------------------------------------------------ API
def begin_run(history: str | os.PathLike[str], *, kind: str = "bench", suite: str | None = None,
              run_id: str | None = None) -> str:
    """Record a run as ``started`` (committed at once) and return its id.

    Call before long work (a regression suite) so that a run killed before :func:`append_run` still
    leaves a record; :func:`runs` shows it as ``failed`` once its writer is gone.
    """
    _check_kind(kind)
    rid = run_id or new_run_id()
    store = open_store(history)
    store.hold_lease(rid)     # before the row is visible: nobody may take a fresh run for a dead one
    try:
        with store.write(run_id=rid) as tx:
            _reap_interrupted(store, tx)
            row = tx.execute(f"SELECT status FROM runs WHERE run_id=?{tx.for_update}", (rid,)).fetchone()
            if row is not None:
                raise HistoryError(f"run id {rid!r} already exists in {store.label} (status {row[0]}); "
                                   f"use a new run id")
            tx.insert_rows("runs", ["run_id", "kind", "suite", "status", "started_at", "host", "pid",
                                    "frame_version", "argv"],
                           [(rid, kind, suite, "started", _now(), socket.gethostname(), os.getpid(), FRAME_VERSION,
                             _masked_argv())])
    except BaseException:
        store.release_lease(rid)
        raise
    return rid


def append_run(frame: "pd.DataFrame", history: str | os.PathLike[str], *, kind: str = "bench",
               suite: str | None = None, status: str = "complete", run_id: str | None = None,
               error: str | None = None) -> str:
    """Append one run's long frame to the history, atomically; return the run id.

    Parameters
    ----------
    frame : DataFrame
        Long results frame (:data:`edgelr.bench.frame.COLUMNS`), shape (n_rows, >= 4): ``device``,
        ``model``, ``metric`` and ``value`` are required, the other columns get defaults. May be empty
        (a failed run).
    history : path or URL
        History directory (holding ``history.sqlite``), the ``.sqlite`` file, or ``postgresql://...``;
        created if missing.
    kind : {"bench", "regress", "compress", "confirm"}
    suite : str, optional
        Suite name of a regression run.
    status : {"complete", "partial", "failed"}
        ``partial`` when some devices failed (their errors in ``error``); ``failed`` records a run that
        produced nothing usable (its rows, if any, are still stored for inspection).
    run_id : str, optional
        Id of a run started with :func:`begin_run`, or a new id. Default: the frame's single ``run_id``
        value if it has one, else a new id. The frame's ``run_id`` column is set to it.
    error : str, optional
        What went wrong (device errors, exception text).

    Returns
    -------
    str
        The run id.
    """
    import pandas as pd

    _check_kind(kind)
    if status not in STATUSES[1:]:
        raise HistoryError(f"append_run got status={status!r}; expected one of {list(STATUSES[1:])}")
    if not isinstance(frame, pd.DataFrame):
        raise HistoryError(f"append_run expects a pandas DataFrame, got {type(frame).__name__}")
    if len(frame):
        missing = [c for c in _REQUIRED if c not in frame.columns]
        if missing:
            raise HistoryError(f"results frame lacks columns {missing} (has {list(frame.columns)}); expected "
                               f"the long frame of edgelr.bench.frame.COLUMNS")
    if run_id is None and "run_id" in frame.columns and len(frame):
        ids = frame["run_id"].dropna().unique()
        run_id = str(ids[0]) if len(ids) == 1 else None
    rows = _rows(frame, run_id or "")
    delay = float(os.environ.get(_TEST_DELAY_ENV, "0") or 0)
    chunk = 50 if delay else 2000

    fresh = run_id is None
    if fresh:
        run_id = new_run_id()
        rows = [(run_id, *r[1:]) for r in rows]
    store = open_store(history)
    existing = None if fresh else _run_status(store, run_id)
    if existing is None:
        begin_run(history, kind=kind, suite=suite, run_id=run_id)
    elif existing != "started":
        raise HistoryError(f"run {run_id} is already recorded with status {existing!r}; appending again would "
                           f"mix two runs. Use a new run id")
    try:
        with store.write(run_id=run_id) as tx:
            now = tx.execute(f"SELECT status FROM runs WHERE run_id=?{tx.for_update}", (run_id,)).fetchone()
            if now is None or now[0] != "started":
                raise HistoryError(f"run {run_id} is {'gone' if now is None else 'already ' + repr(now[0])} in "
                                   f"{store.label}; its rows were not written (was it reaped as interrupted?)")
            for i in range(0, len(rows), chunk):
                tx.insert_rows("results", COLUMNS, rows[i:i + chunk])
                if delay:
                    if i == 0 and os.environ.get(_TEST_MARK_ENV):
                        Path(os.environ[_TEST_MARK_ENV]).write_text(run_id)
                    time.sleep(delay)
            tx.execute("UPDATE runs SET status=?, finished_at=?, n_rows=?, error=?, kind=?, "
                       "suite=COALESCE(?, suite) WHERE run_id=?",
                       (status, _now(), len(rows), error, kind, suite, run_id))
            _reap_interrupted(store, tx)
    finally:
        store.release_lease(run_id)
    return run_id


def fail_run(history: str | os.PathLike[str], run_id: str, error: str) -> None:
    """Mark a started run as ``failed`` with ``error`` (no rows are added)."""
    store = open_store(history)
    try:
        with store.write(run_id=run_id) as tx:
            n = tx.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE run_id=? AND "
                           "status='started'", (_now(), error, run_id)).rowcount
            if n == 0:
                raise HistoryError(f"no started run {run_id!r} in {store.label} to mark failed")
    finally:
        store.release_lease(run_id)


def _run_status(store: Store, run_id: str) -> str | None:
    with store.write() as tx:   # a writer is on its way anyway: creating the store here costs nothing
        row = tx.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
    return None if row is None else str(row[0])


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise HistoryError(f"run kind {kind!r} is unknown; expected one of {list(KINDS)}")


def _rows(frame: "pd.DataFrame", run_id: str) -> list[tuple[Any, ...]]:
    n = len(frame)
    if n == 0:
        return []
    cols: list[list[Any]] = []
    now = _now()
    for c in COLUMNS:
        if c == "run_id":
            cols.append([run_id] * n)
            continue
        if c in frame.columns:
            vals = frame[c].tolist()
        elif c == "unit":
            vals = [METRICS.get(m) for m in frame["metric"].tolist()]
        elif c == "timestamp":
            vals = [now] * n
        else:
            vals = [_DEFAULTS.get(c)] * n
        cols.append([_cell(c, v) for v in vals])
    return list(zip(*cols)) if n else []


def _cell(col: str, v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if col in _INT_COLUMNS:
        try:
            return int(v)
        except (TypeError, ValueError):
            return None
    if col in _FLOAT_COLUMNS:
        try:
            f = float(v)
        except (TypeError, ValueError) as exc:
            raise HistoryError(f"results frame column 'value' holds {v!r}; expected a number (NaN when "
                               f"not measured)") from exc
        return None if math.isnan(f) else f
    if hasattr(v, "isoformat"):
        return v.isoformat()
    try:
        if v != v:  # pandas NA / NaT
            return None
    except (TypeError, ValueError):
        return None
    return str(v)


def parse_since(since: str | datetime | None) -> str | None:
    """``"30d"``, ``"12h"``, ``"2w"``, ``"90m"``, an ISO date/time or a datetime -> ISO UTC string (or None)."""
    if since is None or since == "":
        return None
    if isinstance(since, datetime):
        dt = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
        return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")
    s = str(since).strip()
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if s[-1:] in units and s[:-1].replace(".", "", 1).isdigit():
        dt = datetime.now(timezone.utc) - timedelta(**{units[s[-1]]: float(s[:-1])})
        return dt.isoformat(timespec="microseconds")
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as exc:
        raise HistoryError(f"--since {s!r} is not understood; expected e.g. 30d, 12h, 2w or an ISO date "
                           f"like 2026-11-01") from exc
    return parse_since(dt)


def load(history: str | os.PathLike[str], since: str | datetime | None = None, *,
         run_ids: list[str] | None = None, kinds: list[str] | None = None,
         include_failed: bool = False) -> "pd.DataFrame":
    """Rows of stored runs as one long frame, oldest run first.

    Returns
    -------
    DataFrame
        :data:`edgelr.bench.frame.COLUMNS` plus ``kind``, ``suite``, ``status`` and ``run_started``
        (ISO UTC). Rows of ``complete`` and ``partial`` runs only, unless ``include_failed``.
        ``since``: runs started at or after it (``"30d"``, ISO date...).
    """
    with open_store(history).read() as tx:
        where = ["r.status IN ('complete', 'partial'" + (", 'failed'" if include_failed else "") + ")"]
        args: list[Any] = []
        iso = parse_since(since)
        if iso:
            where.append("r.started_at >= ?")
            args.append(iso)
        if run_ids is not None:
            where.append(f"r.run_id IN ({', '.join('?' for _ in run_ids)})" if run_ids else "1 = 0")
            args.extend(run_ids)
        if kinds is not None:
            where.append(f"r.kind IN ({', '.join('?' for _ in kinds)})" if kinds else "1 = 0")
            args.extend(kinds)
        sql = (f"SELECT {quoted(COLUMNS, 'x.')}, r.kind, r.suite, r.status, r.started_at AS run_started "
               f"FROM results x JOIN runs r ON r.run_id = x.run_id WHERE {' AND '.join(where)} "
               f"ORDER BY r.started_at, x.{tx.rowid}")
        df = tx.frame(sql, args)
    df["value"] = df["value"].astype(float)
    for c in ("repeat", "sample"):
        df[c] = df[c].fillna(-1 if c == "sample" else 0).astype(int)
    df["threads"] = df["threads"].astype("Int64")
    for c in ("note", "target", "transport", "model_sha256", "tool", "tool_version"):
        df[c] = df[c].fillna("")
    return df


def runs(history: str | os.PathLike[str]) -> "pd.DataFrame":
    """One row per recorded run, oldest first: run_id, kind, suite, status, started_at, finished_at,
    host, pid, n_rows, error, baselines (names pointing at it, comma-separated).

    A ``started`` run whose writer is gone is reported as ``failed``.
    """
    store = open_store(history)
    with store.read() as tx:
        df = tx.frame(f"SELECT run_id, kind, suite, status, started_at, finished_at, host, pid, n_rows, error "
                      f"FROM runs ORDER BY started_at, {tx.rowid}")
        base = tx.frame(f"SELECT name, run_id FROM baselines ORDER BY accepted_at, {tx.rowid}")
        started = [(r.run_id, r.host, None if r.pid is None or r.pid != r.pid else int(r.pid))
                   for r in df[df["status"] == "started"].itertuples()]
        gone = store.gone(tx, started) if started else set()
    for i, row in df.iterrows():
        if row["run_id"] in gone:
            df.at[i, "status"] = "failed"
            df.at[i, "error"] = f"interrupted: writer process {row['pid']} ended before the run completed"
    names = base.groupby("run_id")["name"].agg(lambda s: ",".join(dict.fromkeys(s))) if len(base) else {}
    df["baselines"] = [names.get(r, "") if len(base) else "" for r in df["run_id"]]
    return df


def mark_baseline(history: str | os.PathLike[str], run_id: str, name: str = "accepted") -> None:
    """Make ``run_id`` the current baseline called ``name`` (earlier acceptances are kept as history)."""
    if not name or any(ch.isspace() for ch in name) or name == "last" or name.startswith("window:"):
        raise HistoryError(f"baseline name {name!r} is not allowed; use a word without spaces other than "
                           f"'last' and 'window:N'")
    store = open_store(history)
    with store.write() as tx:
        row = tx.execute(f"SELECT status FROM runs WHERE run_id=?{tx.for_update}", (run_id,)).fetchone()
        if row is None:
            raise HistoryError(f"run {run_id!r} is not in {store.label}; see `edgelr report --json` for run ids")
        if row[0] not in ("complete", "partial"):
            raise HistoryError(f"run {run_id} has status {row[0]!r}; only complete or partial runs can be "
                               f"a baseline")
        tx.insert_rows("baselines", ["name", "run_id", "accepted_at"], [(name, run_id, _now())])


def baselines(history: str | os.PathLike[str]) -> "pd.DataFrame":
    """Every acceptance, oldest first: name, run_id, accepted_at. The last row per name is current."""
    with open_store(history).read() as tx:
        return tx.frame(f"SELECT name, run_id, accepted_at FROM baselines ORDER BY accepted_at, {tx.rowid}")


def record_comparisons(history: str | os.PathLike[str], comparisons: "pd.DataFrame") -> None:
    """Store regression verdicts (:data:`COMPARISON_COLUMNS`) so reports can mark regressions."""
    if not len(comparisons):
        return
    rows = [tuple(_cell("value" if c in _COMPARISON_FLOATS else "repeat" if c in _COMPARISON_INTS else "x",
                        r.get(c)) for c in COMPARISON_COLUMNS)
            for r in comparisons.to_dict("records")]
    with open_store(history).write() as tx:
        tx.insert_rows("comparisons", COMPARISON_COLUMNS, rows)


def load_comparisons(history: str | os.PathLike[str]) -> "pd.DataFrame":
    """Stored regression verdicts, in the order they were recorded."""
    with open_store(history).read() as tx:
        return tx.frame(f"SELECT {quoted(COMPARISON_COLUMNS)} FROM comparisons ORDER BY {tx.rowid}")


# ------------------------------------------------------------------------------------------------ copy
def copy_history(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                 progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Copy every table of the history ``src`` into the empty history ``dst`` (SQLite <-> PostgreSQL, or
    the same kind), in one write transaction, rows in their original order, then the model files.

    A destination that already holds anything is refused (one line; nothing written), so a copy never
    mixes two histories and a repeated copy cannot duplicate runs. Runs are copied as their status reads
    (a ``started`` run whose writer is gone arrives ``failed``). Returns the row count per table plus
    ``model_files`` (files copied).
    """
    import shutil

    source, dest = open_store(src), open_store(dst)
    if source.label == dest.label:
        raise HistoryError(f"history copy: source and destination are the same history ({source.label})")
    say = progress or (lambda _msg: None)
    counts: dict[str, int] = {}
    shown = runs(src)                  # statuses as readers see them (interrupted runs -> failed)
    status = dict(zip(shown["run_id"], zip(shown["status"], shown["error"])))
    with source.read() as rtx, dest.write() as wtx:
        wtx.ensure_noise_table()
        have = wtx.tables()
        for table in TABLES:
            if table in have and wtx.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                n = wtx.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                raise HistoryError(f"history copy: the destination {dest.label} is not empty ({n} runs, table "
                                   f"{table} has rows); copy into a new history, nothing was written")
        for table, cols in TABLES.items():
            if table not in rtx.tables():
                counts[table] = 0
                continue
            cur = rtx.execute(f"SELECT {quoted(cols)} FROM {table} ORDER BY {rtx.rowid}")
            n = 0
            while batch := cur.fetchmany(5000):
                if table == "runs":
                    batch = [_shown_status(r, status) for r in batch]
                wtx.insert_rows(table, cols, batch)
                n += len(batch)
                if table == "results":
                    say(f"history copy: {n} result rows")
            counts[table] = n
    copied = 0
    src_models, dst_models = source.files_root() / "models", dest.files_root() / "models"
    for f in sorted(src_models.glob("*/*.tflite")):
        target = dst_models / f.parent.name / f.name
        if target.exists():
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{f.name}.tmp{os.getpid()}")
            shutil.copyfile(f, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise HistoryError(f"history copy: the rows are copied, but not the model file {f} -> {target}: "
                               f"{exc.strerror or exc}") from None
        copied += 1
    counts["model_files"] = copied
    return counts


def _shown_status(row: Any, status: dict[str, tuple[str, Any]]) -> tuple[Any, ...]:
    row = list(row)
    st, err = status.get(row[0], (row[3], row[9]))
    if row[3] == "started" and st == "failed":
        row[3], row[9] = "failed", err
    return tuple(row)
