"""The latency table's store: one SQLite file shared by every model profiled on any device.

A row is one measured thing on one device: key (device, runtime version, layer signature, ranks,
quantization, threads) -> median of the session medians (ms), the sessions' spread and count. Rows are
written per finished batch in one transaction each, so an interrupted profile keeps what it finished and the
next call measures only the rest. Default file: ``$EDGELR_LATENCY_CACHE``, else
``$XDG_CACHE_HOME/edgelr/latency.sqlite`` (``~/.cache/edgelr/latency.sqlite``). The converted micro-models
are kept beside it (``micro/<signature>-<ranks>-<quantization>-<io dtype>.tflite``): another thread count or
device, or the run after an interruption, measures them without converting them again (delete the directory
to reclaim the space; it is rebuilt on demand).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from edgelr.errors import HistoryError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latency (
    device TEXT NOT NULL, runtime TEXT NOT NULL, signature TEXT NOT NULL, ranks TEXT NOT NULL,
    quantization TEXT NOT NULL, threads INTEGER NOT NULL,
    method TEXT NOT NULL, layer TEXT NOT NULL, ms REAL NOT NULL, spread REAL NOT NULL,
    sessions TEXT NOT NULL, measured_at TEXT NOT NULL,
    PRIMARY KEY (device, runtime, signature, ranks, quantization, threads))
"""


def default_cache() -> Path:
    """``$EDGELR_LATENCY_CACHE``, else ``$XDG_CACHE_HOME/edgelr/latency.sqlite`` (``~/.cache`` by default)."""
    env = os.environ.get("EDGELR_LATENCY_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgelr" / "latency.sqlite"


@dataclass(frozen=True)
class Context:
    """What a latency depends on besides the layer: where and how it ran."""

    device: str
    runtime: str
    quantization: str
    threads: int


@dataclass(frozen=True)
class Entry:
    """One row: ``signature``/``ranks`` (``whole`` or ``16x8``) measured at ``ms`` (median of the session
    medians), ``spread`` (relative: (max - min) / median of the session medians), ``sessions`` (ms each)."""

    signature: str
    ranks: str
    method: str
    layer: str
    ms: float
    spread: float
    sessions: tuple[float, ...]


class LatencyCache:
    """The SQLite store (see the module docstring). ``path`` None: :func:`default_cache`."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_cache()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"latency table {self.path}: {exc}; pass a writable file with --cache") from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30.0)

    def get(self, ctx: Context, signatures: Iterable[str] | None = None) -> dict[tuple[str, str], Entry]:
        """Rows of ``ctx`` (of ``signatures`` only, when given), keyed by (signature, ranks)."""
        with self._connect() as db:
            rows = db.execute("SELECT signature, ranks, method, layer, ms, spread, sessions FROM latency WHERE "
                              "device=? AND runtime=? AND quantization=? AND threads=?",
                              (ctx.device, ctx.runtime, ctx.quantization, int(ctx.threads))).fetchall()
        wanted = None if signatures is None else set(signatures)
        return {(r[0], r[1]): Entry(r[0], r[1], r[2], r[3], float(r[4]), float(r[5]), tuple(json.loads(r[6])))
                for r in rows if wanted is None or r[0] in wanted}

    def put(self, ctx: Context, entries: Iterable[Entry]) -> int:
        """Store ``entries`` (replacing rows with the same key) in one transaction; returns how many."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows = [(ctx.device, ctx.runtime, e.signature, e.ranks, ctx.quantization, int(ctx.threads), e.method, e.layer,
                 float(e.ms), float(e.spread), json.dumps([round(x, 6) for x in e.sessions]), stamp) for e in entries]
        try:
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO latency VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        except sqlite3.Error as exc:
            raise HistoryError(f"latency table {self.path}: cannot store {len(rows)} rows ({exc})") from None
        return len(rows)
