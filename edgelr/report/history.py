"""The results history: every ``bench``, ``regress`` and ``compress`` run appends its long frame here.

Storage choice: one SQLite file (stdlib ``sqlite3``), not a Parquet dataset.

- Atomic runs. A run's rows go in with one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): a writer
  killed at any instant (SIGKILL, power aside) leaves all of them or none, because SQLite rolls back an
  uncommitted transaction from its journal on the next open. A Parquet dataset would need
  write-temp-then-rename per file *plus* a manifest that has to be updated atomically with it, i.e. a
  second, home-made transaction log.
- A record of failed runs. :func:`begin_run` commits a ``runs`` row with status ``started`` *before*
  the rows are written; :func:`append_run` turns it into ``complete``/``partial``/``failed`` in the same
  transaction as the rows. A ``started`` run whose writer process is gone (same host, pid dead) is shown
  as ``failed`` ("interrupted") by :func:`runs`, and persisted so by the next writer.
- Concurrent writers. SQLite serialises writers with its own file locks (``busy_timeout`` 120 s, WAL
  journal so readers never block writers); several processes appending at once each land whole.
- Versioned schema. ``PRAGMA user_version`` holds :data:`STORE_VERSION`; older stores are migrated
  inside one transaction when opened for writing, and in an in-memory copy when opened read-only, so
  old files stay readable. The v0 layout (prototype: one ``results`` table, no ``runs`` table) is
  described in :data:`V0_RESULTS_COLUMNS`.
- Queries by (model, device, metric, run) are what regression checks do; SQLite indexes them.

``history`` arguments are a path: a file ending in ``.sqlite``/``.db`` is the store itself, anything
else is a directory holding ``history.sqlite`` (the suite's ``history = "reports/history"``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgelr.bench.frame import COLUMNS, METRICS, SCHEMA_VERSION as FRAME_VERSION, new_run_id
from edgelr.errors import HistoryError

if TYPE_CHECKING:
    import pandas as pd

STORE_VERSION = 1
"""Version of the SQLite layout (``PRAGMA user_version``). 0: prototype layout, 1: current."""

STORE_FILENAME = "history.sqlite"
KINDS = ("bench", "regress", "compress", "confirm")
"""``confirm``: the paired re-run of a stored baseline model beside the current one (``regress``)."""
STATUSES = ("started", "complete", "partial", "failed")
"""``partial``: some devices failed; the rows of the others are stored."""

V0_RESULTS_COLUMNS = ["run_id", "timestamp", "device", "model", "metric", "sample", "value", "unit"]
"""The prototype (v0) store: a single ``results`` table with these columns and no ``runs`` table."""

_INT_COLUMNS = ("repeat", "sample", "threads")
_FLOAT_COLUMNS = ("value",)
_REQUIRED = ("device", "model", "metric", "value")
_DEFAULTS: dict[str, Any] = {
    "timestamp": None, "target": "", "transport": "", "model_sha256": "", "repeat": 0, "sample": -1,
    "unit": None, "tool": "", "tool_version": "", "threads": None, "note": "",
}
_TEST_DELAY_ENV = "EDGELR_HISTORY_TEST_DELAY"
"""Test hook: seconds to sleep between row chunks inside the write transaction (kill tests)."""
_TEST_MARK_ENV = "EDGELR_HISTORY_TEST_MARK"
"""Test hook: a file created once the first chunk of rows is inside the (uncommitted) transaction."""

_SCHEMA_V1 = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, suite TEXT, status TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, host TEXT, pid INTEGER, n_rows INTEGER,
    error TEXT, frame_version INTEGER, argv TEXT
);
CREATE TABLE IF NOT EXISTS results (
    {", ".join(f'"{c}" {"INTEGER" if c in _INT_COLUMNS else "REAL" if c in _FLOAT_COLUMNS else "TEXT"}'
               for c in COLUMNS)}
);
CREATE INDEX IF NOT EXISTS results_run ON results (run_id);
CREATE INDEX IF NOT EXISTS results_key ON results (model, device, metric);
CREATE TABLE IF NOT EXISTS baselines (
    name TEXT NOT NULL, run_id TEXT NOT NULL, accepted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS comparisons (
    run_id TEXT NOT NULL, baseline TEXT, model TEXT, device TEXT, metric TEXT, status TEXT,
    method TEXT, p_value REAL, effect REAL, ci_low REAL, ci_high REAL, threshold TEXT,
    n_current INTEGER, n_baseline INTEGER, current REAL, baseline_value REAL, change_run TEXT, note TEXT
);
"""


# ----------------------------------------------------------------------------------------------- paths
def default_history() -> Path:
    """Where runs go when no history is named: ``$XDG_DATA_HOME/edgelr/history`` (``~/.local/share/...``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgelr" / "history"


def store_path(history: str | os.PathLike[str]) -> Path:
    """The SQLite file of ``history``: the path itself if it ends in .sqlite/.db, else ``<dir>/history.sqlite``."""
    p = Path(history).expanduser()
    if p.suffix in (".sqlite", ".sqlite3", ".db"):
        return p
    return p / STORE_FILENAME


MODEL_STORE_CAP_BYTES = 2 << 30
"""Size cap of the content-addressed model store beside a history (2 GiB); oldest-used files go first."""


def models_dir(history: str | os.PathLike[str]) -> Path:
    """Folder of the content-addressed ``.tflite`` store beside the history's SQLite file."""
    return store_path(history).parent / "models"


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

_NOISE_TABLE = ("CREATE TABLE IF NOT EXISTS noise_floor (device TEXT NOT NULL, measured_at TEXT NOT NULL, "
                "sd_log_ratio REAL, session_cv REAL, sessions INTEGER, runs INTEGER, alpha REAL, "
                "min_detectable REAL, source TEXT)")


def record_noise(history: str | os.PathLike[str], device: str, *, sd_log_ratio: float, session_cv: float,
                 sessions: int, runs: int, alpha: float, min_detectable: float, source: str) -> None:
    """Store a device's measured between-session noise.

    ``source``: ``"devices check --noise"`` (an A/A interleaved measurement) or ``"regress <run id>"``
    (estimated from the spread of one regress run's session medians, more conservative).
    """
    with _write_tx(history) as con:
        con.execute(_NOISE_TABLE)
        con.execute("INSERT INTO noise_floor VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (device, _now(), sd_log_ratio, session_cv, sessions, runs, alpha, min_detectable, source))


def noise_floor(history: str | os.PathLike[str], device: str, source: str | None = None) -> dict[str, Any] | None:
    """The latest stored noise measurement of ``device`` (from ``source`` when given), or None."""
    path = store_path(history)
    if not path.exists():
        return None
    with _reader(path) as con:
        if "noise_floor" not in _tables(con):
            return None
        cur = con.execute("SELECT * FROM noise_floor WHERE device=? AND (? IS NULL OR source=?) "
                          "ORDER BY measured_at DESC LIMIT 1", (device, source, source))
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


# ------------------------------------------------------------------------------------------ connection
def _open(path: Path, *, write: bool) -> sqlite3.Connection:
    """Open (and for writers create/migrate) the store; readers of old or read-only stores get a copy."""
    if not write and not path.exists():
        raise HistoryError(f"no history store at {path}; run `edgelr bench` or `edgelr regress` first, "
                           f"or pass the history directory/file that exists")
    if write:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(f"cannot create the history directory {path.parent}: {exc}") from exc
    try:
        if write:
            con = sqlite3.connect(path, timeout=120.0, isolation_level=None)
        else:   # readers never write: read-only connection, or a copy where even that needs a write
            try:
                con = sqlite3.connect(f"file:{quote_uri(path)}?mode=ro", uri=True, timeout=120.0,
                                      isolation_level=None)
                con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError:
                con = _memory_copy(path)
        con.execute("PRAGMA busy_timeout=120000")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if write:
            _check_integrity(con, path)
            _init_or_migrate(con, path)
        elif version != STORE_VERSION or _is_v0(con):
            if version > STORE_VERSION:
                raise HistoryError(f"history store {path} has layout version {version}, newer than this "
                                   f"edgelr reads ({STORE_VERSION}); upgrade edgelr")
            con.close()
            con = _memory_copy(path)
            _init_or_migrate(con, path)
    except sqlite3.DatabaseError as exc:
        if any(k in str(exc) for k in _DAMAGED):
            raise _damaged(path, exc) from exc
        medium = _medium_problem(path) if write else None
        if medium:
            raise HistoryError(f"cannot write the history store {path}: {medium} (SQLite: {exc})") from exc
        raise HistoryError(f"cannot open the history store {path}: {exc} (is it an edgelr history "
                           f"SQLite file?)") from exc
    return con


_DAMAGED = ("malformed", "not a database", "file is encrypted", "corrupt")


def _damaged(path: Path, exc: BaseException) -> HistoryError:
    """One line for a store SQLite cannot read: the cause without the SQL."""
    cause = exc.__cause__ if exc.__cause__ is not None and not isinstance(exc, sqlite3.Error) else exc
    text = str(cause).split(":")[-1].strip() if "Execution failed on sql" in str(cause) else str(cause)
    if "not a database" in text:
        return HistoryError(f"cannot open the history store {path}: {text} (is it an edgelr history SQLite "
                            f"file?); nothing was written to it")
    if any(k in text for k in _DAMAGED):
        return HistoryError(f"history store {path} is damaged ({text}); nothing was written to it. Keep it for "
                            f"recovery (`sqlite3 {path} .recover`) and pass another --history")
    return HistoryError(f"reading the history store {path} failed: {text}")


@contextmanager
def _reader(history: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """A read connection; a damaged or unreadable store raises one :class:`HistoryError` line."""
    path = store_path(history)
    con = _open(path, write=False)
    try:
        yield con
    except (sqlite3.DatabaseError, OSError) as exc:
        if isinstance(exc, OSError) and type(exc).__name__ != "DatabaseError":
            raise
        raise _damaged(path, exc) from exc
    finally:
        con.close()


def _memory_copy(path: Path) -> sqlite3.Connection:
    """An in-memory copy of the store, read without writing anything beside it.

    ``mode=ro`` still needs the ``-shm`` file of a WAL store, which SQLite cannot create on read-only
    media (a mounted backup, a CD, a ``ro`` bind mount); there nobody can write either, so the file is
    opened ``immutable`` instead.
    """
    uri = quote_uri(path)
    mem = sqlite3.connect(":memory:", isolation_level=None)
    for mode in ("mode=ro", "immutable=1"):
        try:
            src = sqlite3.connect(f"file:{uri}?{mode}", uri=True, timeout=120.0)
            try:
                src.backup(mem)
                return mem
            finally:
                src.close()
        except sqlite3.OperationalError:
            if mode == "immutable=1":
                raise
    return mem


def quote_uri(path: Path) -> str:
    """``path`` escaped for an SQLite ``file:`` URI (``?`` and ``#`` and ``%`` in directory names)."""
    from urllib.parse import quote

    return quote(str(Path(path).absolute()), safe="/")


def _medium_problem(path: Path) -> str | None:
    """What about the file system keeps ``path`` from being written, or None.

    SQLite reports a full disk while it maps its ``-shm`` file as "disk I/O error" and a read-only mount
    as "unable to open database file"; this names the cause a user can act on.
    """
    d = path.parent if path.parent.exists() else Path(path.anchor or "/")
    try:
        st = os.statvfs(d)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "the file system holding it is mounted read-only"
    free = st.f_bavail * st.f_frsize
    if free < 256 * 1024:
        return f"the disk holding it is full ({free // 1024} KiB free)"
    if not os.access(d, os.W_OK) or path.exists() and not os.access(path, os.W_OK):
        return "no write permission"
    return None


def _check_integrity(con: sqlite3.Connection, path: Path) -> None:
    """Refuse to write into a damaged store (writing can spread the damage and hide it).

    ``PRAGMA quick_check`` reads every page once (about 0.1 s per 10 MB here); it runs only when a
    writer opens the store, not for every statement.
    """
    if path.stat().st_size == 0 if path.exists() else True:
        return
    try:
        problems = [r[0] for r in con.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        raise _damaged(path, exc) from exc
    if problems != ["ok"]:
        detail = "; ".join(" ".join(problems).split("\n"))[:200]
        raise HistoryError(f"history store {path} is damaged (integrity check: {detail}); "
                           f"nothing was written to it. Keep it for recovery (`sqlite3 {path} .recover`) and "
                           f"pass another --history")


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _is_v0(con: sqlite3.Connection) -> bool:
    return con.execute("PRAGMA user_version").fetchone()[0] == 0 and "results" in _tables(con)


def _init_or_migrate(con: sqlite3.Connection, path: Path) -> None:
    """Create the current layout, or migrate an older one, in one write transaction."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version == STORE_VERSION:
        return
    if version > STORE_VERSION:
        raise HistoryError(f"history store {path} has layout version {version}, newer than this edgelr "
                           f"writes ({STORE_VERSION}); upgrade edgelr")
    try:
        con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:
        pass  # another process holds the file; it will be WAL already or stay in rollback mode (both atomic)
    con.execute("BEGIN IMMEDIATE")
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]  # someone may have done it meanwhile
        if version == 0:
            if "results" in _tables(con):
                _migrate_v0_to_v1(con)
            else:
                for stmt in _SCHEMA_V1.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('created_by', ?)", (f"edgelr store v{STORE_VERSION}",))
            con.execute(f"PRAGMA user_version={STORE_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _migrate_v0_to_v1(con: sqlite3.Connection) -> None:
    """v0 -> v1: widen ``results`` to the frame columns and build ``runs`` from the run ids seen."""
    have = [r[1] for r in con.execute("PRAGMA table_info(results)")]
    missing = [c for c in ("run_id", "device", "model", "metric", "value") if c not in have]
    if missing:
        raise HistoryError(f"history store has a 'results' table without columns {missing}; it is not an "
                           f"edgelr v0 store. Point --history at an edgelr store")
    con.execute("ALTER TABLE results RENAME TO results_v0")
    for stmt in _SCHEMA_V1.split(";"):
        if stmt.strip():
            con.execute(stmt)
    select = []
    for c in COLUMNS:
        if c in have:
            select.append(f'"{c}"')
        elif c == "unit":
            select.append("NULL")
        else:
            d = _DEFAULTS.get(c)
            select.append("NULL" if d is None else repr(d) if isinstance(d, str) else str(d))
    con.execute(f"INSERT INTO results ({', '.join(repr(c) for c in COLUMNS)}) "
                f"SELECT {', '.join(select)} FROM results_v0")
    for metric, unit in METRICS.items():
        con.execute("UPDATE results SET unit=? WHERE unit IS NULL AND metric=?", (unit, metric))
    ts = "MIN(timestamp)" if "timestamp" in have else "NULL"
    con.execute(f"INSERT INTO runs (run_id, kind, suite, status, started_at, finished_at, n_rows, error, "
                f"frame_version) SELECT run_id, 'bench', NULL, 'complete', COALESCE({ts}, ''), "
                f"{ts.replace('MIN', 'MAX')}, COUNT(*), NULL, 0 FROM results_v0 GROUP BY run_id")
    con.execute("DROP TABLE results_v0")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('migrated_from', '0')")


@contextmanager
def _write_tx(history: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    path = store_path(history)
    con = _open(path, write=True)
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on SQLITE_FULL / IOERR; a second ROLLBACK would replace the real
            # cause ("database or disk is full") with "cannot rollback - no transaction is active".
            if con.in_transaction:
                try:
                    con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
    except sqlite3.DatabaseError as exc:
        if any(k in str(exc) for k in _DAMAGED):
            raise _damaged(path, exc) from exc
        medium = _medium_problem(path)
        raise HistoryError(f"writing the history store {path} failed: {medium + ' (SQLite: ' + str(exc) + ')' if medium else exc}") from exc
    finally:
        con.close()


# ------------------------------------------------------------------------------------------- liveness
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purpose
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _interrupted(row: dict[str, Any]) -> bool:
    return (row["status"] == "started" and row.get("host") == socket.gethostname()
            and row.get("pid") is not None and not _pid_alive(int(row["pid"])))


def _reap_interrupted(con: sqlite3.Connection) -> None:
    """Inside a write transaction: persist ``failed`` for started runs whose writer died."""
    for run_id, host, pid in con.execute(
            "SELECT run_id, host, pid FROM runs WHERE status='started'").fetchall():
        if _interrupted({"status": "started", "host": host, "pid": pid}):
            con.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE run_id=?",
                        (_now(), f"interrupted: writer process {pid} on {host} ended before the run completed",
                         run_id))


# ------------------------------------------------------------------------------------------------ API
def begin_run(history: str | os.PathLike[str], *, kind: str = "bench", suite: str | None = None,
              run_id: str | None = None) -> str:
    """Record a run as ``started`` (committed at once) and return its id.

    Call before long work (a regression suite) so that a run killed before :func:`append_run` still
    leaves a record; :func:`runs` shows it as ``failed`` once its process is gone.
    """
    _check_kind(kind)
    rid = run_id or new_run_id()
    with _write_tx(history) as con:
        _reap_interrupted(con)
        row = con.execute("SELECT status FROM runs WHERE run_id=?", (rid,)).fetchone()
        if row is not None:
            raise HistoryError(f"run id {rid!r} already exists in {store_path(history)} (status {row[0]}); "
                               f"use a new run id")
        con.execute("INSERT INTO runs (run_id, kind, suite, status, started_at, host, pid, frame_version, argv) "
                    "VALUES (?, ?, ?, 'started', ?, ?, ?, ?, ?)",
                    (rid, kind, suite, _now(), socket.gethostname(), os.getpid(), FRAME_VERSION,
                     json.dumps(sys.argv[1:])))
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
    history : path
        History directory (holding ``history.sqlite``) or the ``.sqlite`` file; created if missing.
    kind : {"bench", "regress", "compress"}
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

    if run_id is None:
        run_id = new_run_id()
        rows = [(run_id, *r[1:]) for r in rows]
    existing = _run_status(history, run_id)
    if existing is None:
        begin_run(history, kind=kind, suite=suite, run_id=run_id)
    elif existing != "started":
        raise HistoryError(f"run {run_id} is already recorded with status {existing!r}; appending again would "
                           f"mix two runs. Use a new run id")
    with _write_tx(history) as con:
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        for i in range(0, len(rows), chunk):
            con.executemany(f"INSERT INTO results ({cols}) VALUES ({marks})", rows[i:i + chunk])
            if delay:
                if i == 0 and os.environ.get(_TEST_MARK_ENV):
                    Path(os.environ[_TEST_MARK_ENV]).write_text(run_id)
                time.sleep(delay)
        con.execute("UPDATE runs SET status=?, finished_at=?, n_rows=?, error=?, kind=?, "
                    "suite=COALESCE(?, suite) WHERE run_id=?",
                    (status, _now(), len(rows), error, kind, suite, run_id))
        _reap_interrupted(con)
    return run_id


def fail_run(history: str | os.PathLike[str], run_id: str, error: str) -> None:
    """Mark a started run as ``failed`` with ``error`` (no rows are added)."""
    with _write_tx(history) as con:
        n = con.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE run_id=? AND "
                        "status='started'", (_now(), error, run_id)).rowcount
        if n == 0:
            raise HistoryError(f"no started run {run_id!r} in {store_path(history)} to mark failed")


def _run_status(history: str | os.PathLike[str], run_id: str) -> str | None:
    path = store_path(history)
    if not path.exists():
        return None
    con = _open(path, write=True)
    try:
        row = con.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
    finally:
        con.close()
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
    import pandas as pd

    with _reader(history) as con:
        where = ["r.status IN ('complete', 'partial'" + (", 'failed'" if include_failed else "") + ")"]
        args: list[Any] = []
        iso = parse_since(since)
        if iso:
            where.append("r.started_at >= ?")
            args.append(iso)
        if run_ids is not None:
            where.append(f"r.run_id IN ({', '.join('?' for _ in run_ids)})")
            args.extend(run_ids)
        if kinds is not None:
            where.append(f"r.kind IN ({', '.join('?' for _ in kinds)})")
            args.extend(kinds)
        cols = ", ".join(f'x."{c}"' for c in COLUMNS)
        sql = (f"SELECT {cols}, r.kind, r.suite, r.status, r.started_at AS run_started FROM results x "
               f"JOIN runs r ON r.run_id = x.run_id WHERE {' AND '.join(where)} "
               f"ORDER BY r.started_at, x.rowid")
        df = pd.read_sql_query(sql, con, params=args)
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

    A ``started`` run whose writer process on this host is gone is reported as ``failed``.
    """
    import pandas as pd

    with _reader(history) as con:
        df = pd.read_sql_query("SELECT run_id, kind, suite, status, started_at, finished_at, host, pid, n_rows, "
                               "error FROM runs ORDER BY started_at, rowid", con)
        base = pd.read_sql_query("SELECT name, run_id FROM baselines ORDER BY accepted_at", con)
    for i, row in df.iterrows():
        if _interrupted(row.to_dict()):
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
    with _write_tx(history) as con:
        row = con.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            raise HistoryError(f"run {run_id!r} is not in {store_path(history)}; see `edgelr report --json` "
                               f"for run ids")
        if row[0] not in ("complete", "partial"):
            raise HistoryError(f"run {run_id} has status {row[0]!r}; only complete or partial runs can be "
                               f"a baseline")
        con.execute("INSERT INTO baselines VALUES (?, ?, ?)", (name, run_id, _now()))


def baselines(history: str | os.PathLike[str]) -> "pd.DataFrame":
    """Every acceptance, oldest first: name, run_id, accepted_at. The last row per name is current."""
    import pandas as pd

    with _reader(history) as con:
        return pd.read_sql_query("SELECT name, run_id, accepted_at FROM baselines ORDER BY accepted_at, rowid", con)


COMPARISON_COLUMNS = ["run_id", "baseline", "model", "device", "metric", "status", "method", "p_value",
                      "effect", "ci_low", "ci_high", "threshold", "n_current", "n_baseline", "current",
                      "baseline_value", "change_run", "note"]
_COMPARISON_FLOATS = ("p_value", "effect", "ci_low", "ci_high", "current", "baseline_value")


def record_comparisons(history: str | os.PathLike[str], comparisons: "pd.DataFrame") -> None:
    """Store regression verdicts (:data:`COMPARISON_COLUMNS`) so reports can mark regressions."""
    if not len(comparisons):
        return
    rows = [tuple(_cell("value" if c in _COMPARISON_FLOATS else "x", r.get(c)) for c in COMPARISON_COLUMNS)
            for r in comparisons.to_dict("records")]
    with _write_tx(history) as con:
        con.executemany(f"INSERT INTO comparisons ({', '.join(COMPARISON_COLUMNS)}) VALUES "
                        f"({', '.join('?' for _ in COMPARISON_COLUMNS)})", rows)


def load_comparisons(history: str | os.PathLike[str]) -> "pd.DataFrame":
    """Stored regression verdicts, in the order they were recorded."""
    import pandas as pd

    with _reader(history) as con:
        return pd.read_sql_query(f"SELECT {', '.join(COMPARISON_COLUMNS)} FROM comparisons ORDER BY rowid", con)
