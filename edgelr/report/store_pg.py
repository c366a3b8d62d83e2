"""The PostgreSQL history backend: ``--history postgresql://user@host:port/dbname`` (psycopg 3).

A history shared by runners on several hosts. The same guarantees as the SQLite store:

- Atomic runs: a run's rows and its status change are one transaction (rows go in with ``COPY``); a
  writer killed at any instant, or whose connection drops, leaves all of them or none.
- Concurrent writers: inserts of different runs do not wait for each other; a run's own row is locked
  (``SELECT ... FOR UPDATE``) while its status changes, so two writers can never both finish it.
- Dead writers on any host: :meth:`PGStore.hold_lease` takes a session advisory lock
  (``pg_advisory_lock(hashtextextended(run_id, ...))``) on a connection the writer keeps open from
  ``begin_run`` until its run is complete. The server drops the lock when that process or its host goes
  away, so a ``started`` run whose lock is free has no writer: readers show it ``failed`` and the next
  writer persists that (the SQLite store can only check pids on its own host).
- Versioned layout: ``meta.schema_version`` (:data:`PG_VERSION`); the first writer creates the tables and
  later versions migrate in one transaction under ``pg_advisory_xact_lock``, so concurrent first writers
  do not race. A newer layout is refused.
- Deadlines: connecting gives up after ``connect_timeout`` seconds (10 unless the URL sets it) with one
  line; TCP keepalives on both ends (idle 30 s, 3 probes 10 s apart) end the connections of a vanished
  host within about a minute, which also frees a dead runner's lease. A server that is up but does not
  answer (frozen by SIGSTOP, a hung host whose kernel still ACKs) is cut off by a watchdog: no progress
  for ``answer_timeout`` seconds (:data:`ANSWER_TIMEOUT_S` unless the URL sets it) during a read or a
  write shuts the connection's socket down, so the call fails with one line (and a measurement's rows go
  to the spool file, as for an unreachable server).
- Passwords in the URL are masked in every message (prefer ``~/.pgpass`` or ``PGPASSWORD``).

Model files (the content-addressed ``models/<sha[:2]>/<sha>.tflite``) do not go into the database: they go
under the directory named by the URL's ``files`` parameter
(``postgresql://edgelr@db.lab/edgelr?files=/mnt/lab/edgelr-files``; a shared mount when runners on
several hosts must find each other's baseline models), else under
``$XDG_DATA_HOME/edgelr/history-files/<host>_<port>_<dbname>`` on each runner.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from edgelr.bench.frame import COLUMNS
from edgelr.errors import HistoryError
from edgelr.report.store_base import TABLES, Store, Tx, column_type, mask_secrets, quoted

SCHEMES = ("postgresql", "postgres")
PG_VERSION = 1
"""Version of the PostgreSQL layout (``meta`` row ``schema_version``)."""
CONNECT_TIMEOUT_S = 10
ANSWER_TIMEOUT_S = 60.0
"""Seconds without progress (an answer, or rows sent) after which a read or write gives up on the server."""
_COPY_KICK_ROWS = 1000
"""COPY rows between two progress marks of the watchdog."""
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
"""libpq TCP keepalives (unless the URL sets them): a vanished server host ends a connection in ~1 min."""
_SERVER_KEEPALIVE = ("SET tcp_keepalives_idle = 30", "SET tcp_keepalives_interval = 10", "SET tcp_keepalives_count = 3")
"""The same on the server's side of a lease connection: a vanished runner host frees its run's lease in ~1 min
(instead of the server's default, the OS's 2 h)."""
_LOCK_SEED = 7215          # seed of hashtextextended: edgelr's lock keys, apart from other applications'

_PG_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": "TEXT"}
_NOT_NULL = {("runs", "kind"), ("runs", "status"), ("runs", "started_at"), ("baselines", "name"),
             ("baselines", "run_id"), ("baselines", "accepted_at"), ("comparisons", "run_id"),
             ("noise_floor", "device"), ("noise_floor", "measured_at")}


def _table_ddl(table: str) -> str:
    cols = [f'"{c}" {_PG_TYPES[column_type(table, c)]}{" NOT NULL" if (table, c) in _NOT_NULL else ""}'
            f'{" PRIMARY KEY" if (table, c) == ("runs", "run_id") else ""}' for c in TABLES[table]]
    ident = "id BIGSERIAL UNIQUE" if table == "runs" else "id BIGSERIAL PRIMARY KEY"
    return f"CREATE TABLE {table} ({ident}, {', '.join(cols)})"


SCHEMA_V1 = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    *(_table_ddl(t) for t in TABLES),
    "CREATE INDEX runs_started ON runs (started_at, id)",
    "CREATE INDEX runs_open ON runs (run_id) WHERE status = 'started'",
    "CREATE INDEX results_run ON results (run_id, id)",
    "CREATE INDEX results_key ON results (model, device, metric)",
]
MIGRATIONS: dict[int, list[str]] = {}
"""``MIGRATIONS[v]``: the statements that take a version-``v`` layout to ``v + 1`` (none yet)."""
assert all(v + 1 <= PG_VERSION for v in MIGRATIONS) and len(COLUMNS) == len(TABLES["results"])

_LEASES: dict[tuple[str, str], Any] = {}
_LEASES_LOCK = threading.Lock()


def is_url(history: Any) -> bool:
    """Whether ``history`` names a PostgreSQL history (``postgresql://`` or ``postgres://``)."""
    return isinstance(history, str) and history.split("://", 1)[0].lower() in SCHEMES and "://" in history


class Watchdog:
    """Cut a connection off when a call to the server gets no answer for ``seconds``: a thread shuts the
    socket down (both directions), so whatever libpq is blocked in (reading an answer, sending rows) fails at
    once with a connection error. Only time inside :meth:`busy` counts (the caller's own work between two
    queries does not); :meth:`kick` marks progress within a long call (rows sent); :attr:`fired` tells
    afterwards that it was the watchdog."""

    def __init__(self, con: Any, seconds: float) -> None:
        self.con, self.seconds = con, float(seconds)
        self.fired = False
        self._since: float | None = None
        self._depth = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="edgelr-pg-watchdog", daemon=True)

    def __enter__(self) -> "Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                self._since = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._since = None

    def kick(self) -> None:
        with self._lock:
            if self._since is not None:
                self._since = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(0.5, self.seconds / 4)):
            since = self._since
            if since is not None and time.monotonic() - since > self.seconds:
                self.fired = True
                try:
                    sock = socket.socket(fileno=os.dup(self.con.fileno()))
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    finally:
                        sock.close()
                except (OSError, ValueError, AttributeError):
                    pass   # already closed
                return


@contextmanager
def _transaction(con: Any, dog: Watchdog) -> Iterator[None]:
    """``con.transaction()`` with its BEGIN and its COMMIT or ROLLBACK under the watchdog."""
    tx = con.transaction()
    with dog.busy():
        tx.__enter__()
    try:
        yield
    except BaseException as exc:
        with dog.busy():
            if not tx.__exit__(type(exc), exc, exc.__traceback__):
                raise
    else:
        with dog.busy():
            tx.__exit__(None, None, None)


class PGTx(Tx):
    rowid = "id"
    for_update = " FOR UPDATE"

    def __init__(self, con: Any, dog: Watchdog | None = None) -> None:
        self.con = con
        self.dog = dog

    def _busy(self) -> Any:
        return self.dog.busy() if self.dog is not None else nullcontext()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._busy():
            if params:
                return self.con.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))
            return self.con.execute(sql)

    def insert_rows(self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._busy(), self.con.cursor() as cur, cur.copy(f"COPY {table} ({quoted(cols)}) FROM STDIN") as copy:
            for i, row in enumerate(rows):
                copy.write_row(row)
                if self.dog is not None and i % _COPY_KICK_ROWS == 0:
                    self.dog.kick()

    def tables(self) -> set[str]:
        return {r[0] for r in self.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}


class PGStore(Store):
    """A history in a PostgreSQL database."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        files = [v for k, v in query if k == "files"]
        self.conninfo = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query
                                                                  if k not in ("files", "answer_timeout")])))
        answer = [v for k, v in query if k == "answer_timeout"]
        try:
            self.answer_timeout = float(answer[-1]) if answer else ANSWER_TIMEOUT_S
        except ValueError:
            self.answer_timeout = -1.0
        if not self.answer_timeout > 0:
            raise HistoryError(f"--history {mask_secrets(url)}: answer_timeout={answer[-1]!r}; expected a positive "
                               f"number of seconds")
        self.label = mask_secrets(url)
        self._given = {k for k, _ in query}
        self._timeout = None if "connect_timeout" in self._given else CONNECT_TIMEOUT_S
        if files:
            self._files = Path(files[-1]).expanduser()
        else:
            base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
            where = f"{parts.hostname or 'local'}_{parts.port or 5432}_{parts.path.strip('/') or 'default'}"
            self._files = Path(base) / "edgelr" / "history-files" / "".join(
                c if c.isalnum() or c in "-_." else "_" for c in where)

    # -------------------------------------------------------------------------------------- connecting
    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise HistoryError(f"--history {self.label} needs psycopg 3: pip install 'edgelr[postgresql]'") from None
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": "edgelr"}
        kwargs.update({k: v for k, v in _KEEPALIVE.items() if k not in self._given})
        if self._timeout:
            kwargs["connect_timeout"] = self._timeout
        try:
            return psycopg.connect(self.conninfo, **kwargs)
        except psycopg.Error as exc:
            hint = (f"; create it first (createdb, or CREATE DATABASE as a superuser)"
                    if "does not exist" in str(exc) and "database" in str(exc) else "")
            raise HistoryError(f"cannot connect to the history database {self.label}: {_text(exc)}{hint}") from None

    def _error(self, doing: str, exc: BaseException, dog: Watchdog | None = None) -> HistoryError:
        import psycopg
        import psycopg.errors as E

        if dog is not None and dog.fired:
            return HistoryError(f"{doing} the history database {self.label} failed: no answer for "
                                f"{dog.seconds:g} s (server frozen or overloaded; answer_timeout=S in the URL "
                                f"sets the limit), the connection was closed")
        state = getattr(exc, "sqlstate", None) or ""
        if isinstance(exc, (E.InsufficientPrivilege, E.ReadOnlySqlTransaction)):
            return HistoryError(f"cannot write the history database {self.label}: {_text(exc)}")
        if state.startswith(("08", "57P")) or isinstance(exc, psycopg.OperationalError) and not state:
            return HistoryError(f"{doing} the history database {self.label} failed, the connection was lost: "
                                f"{_text(exc)}")
        return HistoryError(f"{doing} the history database {self.label} failed: {_text(exc)}")

    def _version(self, con: Any) -> int | None:
        # pg_tables, not to_regclass(): a catalog query sees a table another session has just committed
        # (to_regclass may answer from this backend's stale catalog cache)
        if con.execute("SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'meta'"
                       ).fetchone() is None:
            return None
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _ensure_schema(self, con: Any) -> None:
        """Create the tables, or migrate an older layout, once, whoever gets there first."""
        version = self._version(con)
        if version == PG_VERSION:
            return
        self._refuse_newer(version)
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(hashtextextended('edgelr.schema', %s))", (_LOCK_SEED,))
            version = self._version(con)
            self._refuse_newer(version)
            if version is None:
                for stmt in SCHEMA_V1:
                    con.execute(stmt)
                con.execute("INSERT INTO meta VALUES ('created_by', %s)", (f"edgelr store v{PG_VERSION}",))
                con.execute("INSERT INTO meta VALUES ('schema_version', %s)", (str(PG_VERSION),))
                return
            for v in range(version, PG_VERSION):
                for stmt in MIGRATIONS[v]:
                    con.execute(stmt)
            con.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(PG_VERSION),))

    def _refuse_newer(self, version: int | None) -> None:
        if version is not None and version > PG_VERSION:
            raise HistoryError(f"history database {self.label} has layout version {version}, newer than this "
                               f"edgelr knows ({PG_VERSION}); upgrade edgelr")

    # ------------------------------------------------------------------------------------------ Store
    def exists(self) -> bool:
        con = self._connect()
        try:
            return self._version(con) is not None
        except Exception as exc:  # noqa: BLE001 - psycopg errors become one line
            raise self._error("reading", exc) from None
        finally:
            con.close()

    def files_root(self) -> Path:
        return self._files

    @contextmanager
    def write(self, run_id: str | None = None) -> Iterator[Tx]:
        import psycopg

        with _LEASES_LOCK:
            leased = _LEASES.get((self.conninfo, run_id)) if run_id else None
        if leased is not None and not _alive(leased, self.answer_timeout):
            leased = None   # the server restarted or the link dropped during the run: the lease is gone too
        con = leased or self._connect()   # the run's own session when it holds the lease: one connection per run
        dog = Watchdog(con, self.answer_timeout)
        try:
            with dog:
                with dog.busy():
                    self._ensure_schema(con)
                with _transaction(con, dog):
                    yield PGTx(con, dog)
        except psycopg.Error as exc:
            raise self._error("writing", exc, dog) from None
        finally:
            if leased is None or dog.fired:
                con.close()

    @contextmanager
    def read(self) -> Iterator[Tx]:
        import psycopg

        con = self._connect()
        dog = Watchdog(con, self.answer_timeout)
        try:
            with dog:
                with dog.busy():
                    version = self._version(con)
                if version is None:
                    raise HistoryError(f"no history in the database {self.label}; run `edgelr bench` or `edgelr "
                                       f"regress` with this --history first (or `edgelr history copy`)")
                self._refuse_newer(version)
                if version < PG_VERSION:
                    raise HistoryError(f"history database {self.label} has layout version {version}, older than "
                                       f"this edgelr reads ({PG_VERSION}); any writing command (e.g. `edgelr "
                                       f"bench`) migrates it")
                con.read_only = True
                con.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ   # one snapshot for every query
                with _transaction(con, dog):
                    yield PGTx(con, dog)
        except psycopg.Error as exc:
            raise self._error("reading", exc, dog) from None
        finally:
            con.close()

    def hold_lease(self, run_id: str) -> None:
        import psycopg

        con = self._connect()
        try:
            self._ensure_schema(con)
            for stmt in _SERVER_KEEPALIVE:
                con.execute(stmt)
            # try-lock: a run id is new, so only a 64-bit hash collision could find it taken
            con.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, %s))", (run_id, _LOCK_SEED))
        except psycopg.Error as exc:
            con.close()
            raise self._error("writing", exc) from None
        except BaseException:
            con.close()
            raise
        with _LEASES_LOCK:
            old = _LEASES.pop((self.conninfo, run_id), None)
            _LEASES[(self.conninfo, run_id)] = con
        if old is not None:
            old.close()

    def release_lease(self, run_id: str) -> None:
        with _LEASES_LOCK:
            con = _LEASES.pop((self.conninfo, run_id), None)
        if con is not None:
            try:
                con.close()   # the server drops the session's advisory lock
            except Exception:  # noqa: BLE001 - a dead connection has no lock to drop
                pass

    def gone(self, tx: Tx, started: list[tuple[str, str | None, int | None]]) -> set[str]:
        """Started runs whose writer's lease is free (its process or host has gone, on any host)."""
        if not started:
            return set()
        ids = sorted(rid for rid, _, _ in started)
        cur = tx.execute("SELECT r FROM unnest(?::text[]) WITH ORDINALITY AS u(r, k) "
                         "WHERE pg_try_advisory_xact_lock(hashtextextended(r, ?)) ORDER BY k", (ids, _LOCK_SEED))
        return {r for (r,) in cur.fetchall()}


def _alive(con: Any, seconds: float) -> bool:
    """Whether a connection kept open for a long run still answers (within ``seconds``)."""
    if con.closed or con.broken:
        return False
    try:
        with Watchdog(con, seconds) as dog, dog.busy():
            con.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means: open a new connection
        return False


def _text(exc: BaseException) -> str:
    """The first line of a driver error, passwords masked."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return mask_secrets(lines[0] if lines else type(exc).__name__)
