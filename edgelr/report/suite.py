"""Regression suite files (TOML): :func:`load_suite` reads and validates one into a :class:`Suite`.

The format is documented once, in :data:`edgelr.report.suite_format.SUITE_FORMAT` (also the epilog of
``edgelr regress --help``).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelr.bench.lock import device_lock, lock_dir  # noqa: F401  (re-exported for suite users)
from edgelr.errors import HistoryError, UsageError
from edgelr.report.history import locate
from edgelr.report.stats import DEFAULT_ALPHA, metric_of, parse_baseline, parse_threshold
from edgelr.report.suite_format import SUITE_FORMAT  # noqa: F401  (re-exported)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class SuiteModel:
    """One ``[[models]]`` entry: the name results are stored under and the local .tflite path."""

    name: str
    path: Path


@dataclass(frozen=True)
class Suite:
    """A parsed suite file. Paths are absolute."""

    name: str
    path: Path
    history: "Path | str"
    """A path (SQLite), or a ``postgresql://`` URL kept as written."""
    models: list[SuiteModel]
    devices: list[str]
    thresholds: dict[str, str]
    runs: int = 20
    warmup: int = 1
    sessions: int = 10
    max_time: float | None = None
    confirm: bool = True
    confirm_sessions: int = 40
    threads: int | None = None
    cooldown_c: float = 45.0
    baseline: str = "last"
    alpha: float = DEFAULT_ALPHA
    extra: dict[str, Any] = field(default_factory=dict)


def _bad(path: Path, what: str) -> UsageError:
    return UsageError(f"suite {path}: {what}")


def load_suite(path: str | os.PathLike[str]) -> Suite:
    """Read and check a suite file; every problem raises UsageError naming the key and the fix."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise UsageError(f"--suite {path}: no such file; write a suite TOML (see `edgelr regress --help`)")
    try:
        doc = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _bad(p, f"not valid TOML ({exc}); fix the syntax") from None
    head = doc.get("suite")
    if not isinstance(head, dict):
        raise _bad(p, "no [suite] table; add [suite] with name, runs and history")
    known = {"name", "runs", "history", "warmup", "repeat", "sessions", "max_time", "confirm", "confirm_sessions",
             "threads",
             "cooldown_c", "baseline", "alpha"}
    unknown = sorted(set(head) - known)
    if unknown:
        raise _bad(p, f"unknown [suite] key(s) {unknown}; known: {sorted(known)}")
    name = head.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _bad(p, f"[suite] name={name!r}; expected a word of letters, digits, _ . -")
    ints: dict[str, int] = {}
    if "sessions" in head and "repeat" in head:
        raise _bad(p, "both sessions and repeat given; repeat is the old name of sessions: keep sessions")
    if "repeat" in head:
        head = {**head, "sessions": head["repeat"]}
    for key, default, low in (("runs", 20, 1), ("warmup", 1, 0), ("sessions", 10, 1), ("confirm_sessions", 40, 1)):
        v = head.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise _bad(p, f"[suite] {key}={v!r}; expected an integer >= {low}")
        ints[key] = v
    threads = head.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024):
        raise _bad(p, f"[suite] threads={threads!r}; expected an integer 1-1024")
    max_time = head.get("max_time")
    if max_time is not None and (not isinstance(max_time, (int, float)) or isinstance(max_time, bool) or max_time <= 0):
        raise _bad(p, f"[suite] max_time={max_time!r}; expected seconds > 0")
    confirm = head.get("confirm", True)
    if not isinstance(confirm, bool):
        raise _bad(p, f"[suite] confirm={confirm!r}; expected true or false")
    hist = head.get("history", "reports/history")
    if not isinstance(hist, str) or not hist:
        raise _bad(p, f"[suite] history={hist!r}; expected a path such as \"reports/history\" or a "
                      f"postgresql:// URL")
    base = p.parent
    try:
        history = locate(hist, base=base)
    except HistoryError as exc:
        raise _bad(p, str(exc)) from None
    baseline = str(head.get("baseline", "last"))
    parse_baseline(baseline)
    alpha = head.get("alpha", DEFAULT_ALPHA)
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise _bad(p, f"[suite] alpha={alpha!r}; expected a probability such as 0.01")
    cooldown = head.get("cooldown_c", 45.0)
    if not isinstance(cooldown, (int, float)) or isinstance(cooldown, bool):
        raise _bad(p, f"[suite] cooldown_c={cooldown!r}; expected degrees C")

    models_raw = doc.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise _bad(p, "no [[models]] entries; add [[models]] with name and path")
    models: list[SuiteModel] = []
    for i, m in enumerate(models_raw):
        if not isinstance(m, dict):
            raise _bad(p, f"[[models]] #{i + 1} is not a table")
        if "recipe" in m and "path" not in m:
            raise _bad(p, f"[[models]] #{i + 1} uses a compress recipe; this edgelr benchmarks .tflite files "
                          f"only: run `edgelr compress` first and give path = \"...tflite\"")
        mpath = m.get("path")
        if not isinstance(mpath, str):
            raise _bad(p, f"[[models]] #{i + 1} has no path; add path = \"models/NAME.tflite\"")
        full = (base / Path(mpath).expanduser()).resolve()
        mname = m.get("name", full.stem)
        if not isinstance(mname, str) or not _NAME_RE.match(mname):
            raise _bad(p, f"[[models]] #{i + 1} name={mname!r}; expected letters, digits, _ . -")
        if not full.is_file():
            raise _bad(p, f"model {mname!r}: {full} does not exist; fix path (relative paths start at {base})")
        if full.suffix != ".tflite":
            raise _bad(p, f"model {mname!r}: {full} is not a .tflite file")
        models.append(SuiteModel(mname, full))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise _bad(p, f"model names repeat: {names}; give each [[models]] its own name")

    devs_raw = doc.get("devices")
    if not isinstance(devs_raw, list) or not devs_raw:
        raise _bad(p, "no [[devices]] entries; add [[devices]] with name = \"local\" or an inventory device")
    devices: list[str] = []
    for i, d in enumerate(devs_raw):
        dn = d.get("name") if isinstance(d, dict) else None
        if not isinstance(dn, str) or not dn:
            raise _bad(p, f"[[devices]] #{i + 1} has no name")
        if dn in devices:
            raise _bad(p, f"device {dn!r} is listed twice")
        devices.append(dn)

    thr = doc.get("thresholds", {"latency": "5%"})
    if not isinstance(thr, dict) or not thr:
        raise _bad(p, "[thresholds] must map metrics to \"5%\" or \"0.5pt\"")
    thresholds: dict[str, str] = {}
    for k, v in thr.items():
        metric_of(k)
        parse_threshold(v, k)
        thresholds[k] = str(v)
    return Suite(name=name, path=p, history=history, models=models, devices=devices, thresholds=thresholds,
                 runs=ints["runs"], warmup=ints["warmup"], sessions=ints["sessions"], threads=threads,
                 max_time=float(max_time) if max_time is not None else None, confirm=confirm,
                 confirm_sessions=max(ints["confirm_sessions"], ints["sessions"]),
                 cooldown_c=float(cooldown), baseline=baseline, alpha=float(alpha))


