"""Regression suite files (TOML) and the per-device lock that keeps one run per device at a time.

Minimal suite::

    [suite]
    name = "nightly"
    runs = 30                  # timed runs per model and device
    history = "reports/history"

    [[models]]
    name = "classifier"
    path = "models/classifier.tflite"

    [[devices]]
    name = "pi4"

    [thresholds]
    latency = "5%"
    peak_memory = "10%"
    energy = "8%"
    accuracy = "0.5pt"

Optional ``[suite]`` keys: ``warmup`` (1), ``repeat`` (1), ``threads`` (target's), ``cooldown_c`` (45),
``baseline`` ("last"), ``alpha``. Relative paths (models, history) are resolved against the suite
file's folder.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edgelr.errors import DeviceError, UsageError
from edgelr.report.stats import DEFAULT_ALPHA, metric_of, parse_baseline, parse_threshold

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
    history: Path
    models: list[SuiteModel]
    devices: list[str]
    thresholds: dict[str, str]
    runs: int = 30
    warmup: int = 1
    repeat: int = 1
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
    known = {"name", "runs", "history", "warmup", "repeat", "threads", "cooldown_c", "baseline", "alpha"}
    unknown = sorted(set(head) - known)
    if unknown:
        raise _bad(p, f"unknown [suite] key(s) {unknown}; known: {sorted(known)}")
    name = head.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _bad(p, f"[suite] name={name!r}; expected a word of letters, digits, _ . -")
    ints: dict[str, int] = {}
    for key, default, low in (("runs", 30, 1), ("warmup", 1, 0), ("repeat", 1, 1)):
        v = head.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise _bad(p, f"[suite] {key}={v!r}; expected an integer >= {low}")
        ints[key] = v
    threads = head.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise _bad(p, f"[suite] threads={threads!r}; expected an integer >= 1")
    hist = head.get("history", "reports/history")
    if not isinstance(hist, str) or not hist:
        raise _bad(p, f"[suite] history={hist!r}; expected a path such as \"reports/history\"")
    base = p.parent
    history = (base / Path(hist).expanduser()).resolve()
    baseline = str(head.get("baseline", "last"))
    parse_baseline(baseline)
    alpha = head.get("alpha", DEFAULT_ALPHA)
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise _bad(p, f"[suite] alpha={alpha!r}; expected a probability such as 0.01")
    cooldown = head.get("cooldown_c", 45.0)
    if not isinstance(cooldown, (int, float)):
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
                 runs=ints["runs"], warmup=ints["warmup"], repeat=ints["repeat"], threads=threads,
                 cooldown_c=float(cooldown), baseline=baseline, alpha=float(alpha))


def lock_dir() -> Path:
    """Where device lock files live: ``$EDGELR_LOCK_DIR``, else ``~/.cache/edgelr/locks``."""
    env = os.environ.get("EDGELR_LOCK_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgelr" / "locks"
    return base.expanduser()


@contextmanager
def device_lock(device: str, timeout_s: float = 3600.0, poll_s: float = 0.2,
                on_wait: Any = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``device`` (``flock`` on ``<lock_dir>/<device>.lock``).

    Any edgelr process benchmarking the device holds it, so two runs never share a device. Waits up to
    ``timeout_s`` seconds, then raises DeviceError. ``on_wait(msg)`` is told once when it has to wait.
    """
    d = lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in device)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    on_wait(f"device {device}: busy (lock {path}); waiting up to {timeout_s:.0f} s")
                    told = True
                if time.monotonic() > deadline:
                    raise DeviceError(f"device {device} stayed locked by another run for {timeout_s:.0f} s "
                                      f"({path}); try again later") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)   # closing the descriptor releases the flock
