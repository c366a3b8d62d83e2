"""The SQLite history backend (the default): one file, stdlib ``sqlite3``.

- Atomic runs: a write is one ``BEGIN IMMEDIATE`` ... ``COMMIT``; a writer killed at any instant leaves
  all of its rows or none (SQLite rolls an uncommitted transaction back from its journal on next open).
- Concurrent writers: SQLite serialises them with its file locks (``busy_timeout`` 120 s, WAL journal so
  readers never block writers).
- Versioned layout: ``PRAGMA user_version`` holds :data:`STORE_VERSION`; older stores are migrated in one
  transaction when opened for writing, and in an in-memory copy when opened for reading (old files and
  read-only media stay readable). The v0 layout (prototype: one ``results`` table, no ``runs`` table) is
  described in :data:`V0_RESULTS_COLUMNS`.
- A dead writer: a ``started`` run whose process on this host is gone (pid dead).
- Damage: a writer runs ``PRAGMA quick_check`` first and never writes into a damaged store.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgelr.bench.frame import COLUMNS, METRICS
from edgelr.errors import HistoryError
from edgelr.report.store_base import DEFAULTS, FLOAT_COLUMNS, INT_COLUMNS, NOISE_COLUMNS, Store, Tx, quoted

STORE_VERSION = 1
"""Version of the SQLite layout (``PRAGMA user_version``). 0: prototype layout, 1: current."""

STORE_FILENAME = "history.sqlite"
V0_RESULTS_COLUMNS = ["run_id", "timestamp", "device", "model", "metric", "sample", "value", "unit"]
"""The prototype (v0) store: a single ``results`` table with these columns and no ``runs`` table."""

_SCHEMA_V1 = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, suite TEXT, status TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, host TEXT, pid INTEGER, n_rows INTEGER,
    error TEXT, frame_version INTEGER, argv TEXT
);
CREATE TABLE IF NOT EXISTS results (
    {", ".join(f'"{c}" {"INTEGER" if c in INT_COLUMNS else "REAL" if c in FLOAT_COLUMNS else "TEXT"}'
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

_NOISE_TABLE = ("CREATE TABLE IF NOT EXISTS noise_floor (device TEXT NOT NULL, measured_at TEXT NOT NULL, "
                "sd_log_ratio REAL, session_cv REAL, sessions INTEGER, runs INTEGER, alpha REAL, "
                "min_detectable REAL, source TEXT)")
assert all(c in _NOISE_TABLE for c in NOISE_COLUMNS)


def store_path(history: str | os.PathLike[str]) -> Path:
    """The SQLite file of ``history``: the path itself if it ends in .sqlite/.db, else ``<dir>/history.sqlite``."""
    p = Path(history).expanduser()
    if p.suffix in (".sqlite", ".sqlite3", ".db"):
        return p
    return p / STORE_FILENAME


class SQLiteTx(Tx):
    rowid = "rowid"
    for_update = ""   # BEGIN IMMEDIATE already holds the write lock

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.con.execute(sql, tuple(params))

    def insert_rows(self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.con.executemany(f"INSERT INTO {table} ({quoted(cols)}) VALUES ({', '.join('?' for _ in cols)})", rows)

    def tables(self) -> set[str]:
        return _tables(self.con)

    def ensure_noise_table(self) -> None:
        self.con.execute(_NOISE_TABLE)


class SQLiteStore(Store):
    """A history in one SQLite file (``history`` is the file, or a directory holding ``history.sqlite``)."""

    def __init__(self, history: str | os.PathLike[str]) -> None:
        self.path = store_path(history)
        self.label = str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def files_root(self) -> Path:
        return self.path.parent

    @contextmanager
    def write(self, run_id: str | None = None) -> Iterator[Tx]:
        path = self.path
        con = _open(path, write=True)
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield SQLiteTx(con)
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
            raise HistoryError(f"writing the history store {path} failed: "
                               f"{medium + ' (SQLite: ' + str(exc) + ')' if medium else exc}") from exc
        finally:
            con.close()

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A read connection; a damaged or unreadable store raises one :class:`HistoryError` line."""
        path = self.path
        con = _open(path, write=False)
        try:
            con.execute("BEGIN")      # one snapshot for every query (a report or a copy while runners write)
            yield SQLiteTx(con)
        except (sqlite3.DatabaseError, OSError) as exc:
            if isinstance(exc, OSError) and type(exc).__name__ != "DatabaseError":
                raise
            raise _damaged(path, exc) from exc
        finally:
            con.close()           # ends the read transaction; nothing to commit

    def gone(self, tx: Tx, started: list[tuple[str, str | None, int | None]]) -> set[str]:
        """Started runs written by a process of this host that is no longer alive."""
        me = socket.gethostname()
        return {rid for rid, host, pid in started if host == me and pid is not None and not _pid_alive(int(pid))}


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
            d = DEFAULTS.get(c)
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
