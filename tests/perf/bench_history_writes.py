"""The history's write rate under N concurrent runners: SQLite vs PostgreSQL -> reports/history_writes.md.

Each runner is a separate process that appends whole runs (``edgelr.report.history.append_run``, the call
``edgelr bench`` makes: a ``started`` record, then the rows and the final status in one transaction) as
fast as it can for a fixed time. A run is realistic in size: 2 models x 10 sessions x (20 latency samples
+ 8 per-session aggregates) = 560 rows. All runners start at the same instant (they import first, then
wait for a common start time). Both stores are durable: SQLite in WAL mode with its default
``synchronous``, PostgreSQL 15 with ``fsync=on`` (a throwaway cluster from tests/pg_server.py, on loopback).

    .venv/bin/python tests/perf/bench_history_writes.py [--seconds 10] [--runners 1,4,16] [--out reports/history_writes.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SESSIONS, SAMPLES, MODELS = 10, 20, 2
AGGREGATES = ["latency_median", "latency_avg", "latency_min", "latency_max", "latency_std", "peak_memory", "init",
              "first_inference"]
ROWS_PER_RUN = MODELS * SESSIONS * (SAMPLES + len(AGGREGATES))


def run_frame(device: str):  # noqa: ANN201 - pandas imported lazily
    import pandas as pd

    rows = []
    for m in range(MODELS):
        for s in range(SESSIONS):
            base = dict(device=device, target="rpi4", transport="ssh", model=f"model{m}", model_sha256="ab" * 32,
                        repeat=s, tool="benchmark_model", tool_version="2.21", threads=4)
            rows += [dict(base, metric="latency", sample=i, value=10.0 + 0.01 * i, unit="ms") for i in range(SAMPLES)]
            rows += [dict(base, metric=a, sample=-1, value=1.0, note="") for a in AGGREGATES]
    return pd.DataFrame(rows)


def worker(history: str, tag: str, seconds: float) -> None:
    """Import, build the frame, say ``ready``, wait for the common start time on stdin, append runs."""
    from edgelr.report.history import append_run, exists

    frame = run_frame(tag)
    assert exists(history)             # imports the backend (psycopg) and connects once: not in the timing
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    while time.time() < start_at:
        time.sleep(0.002)
    took, t_end = [], start_at + seconds
    while time.time() < t_end:
        t0 = time.perf_counter()
        append_run(frame, history, kind="bench")
        took.append(time.perf_counter() - t0)
    print(json.dumps({"runs": len(took), "took": took}), flush=True)


def measure(history: str, n: int, seconds: float) -> dict[str, float]:
    from edgelr.report.history import append_run

    append_run(run_frame("setup"), history, kind="bench")   # creates the store: not in the timing
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", history, f"dev{i}", str(seconds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT) for i in range(n)]
    for p in procs:                                   # every runner has imported pandas and edgelr
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"runner failed: {p.communicate()[1][-1500:]}")
    start_at = time.time() + 0.5
    for p in procs:
        p.stdin.write(f"{start_at}\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 300)
        if p.returncode != 0:
            raise RuntimeError(f"runner failed: {err[-1500:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    took = sorted(t for r in results for t in r["took"])
    runs = sum(r["runs"] for r in results)
    return {"runners": n, "runs": runs, "runs_per_s": runs / seconds, "rows_per_s": runs * ROWS_PER_RUN / seconds,
            "p50_ms": 1000 * statistics.median(took), "p95_ms": 1000 * took[int(0.95 * (len(took) - 1))]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runners", default="1,4,16")
    ap.add_argument("--out", default=str(ROOT / "reports" / "history_writes.md"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.pg_server import postgres_server

    counts = [int(x) for x in args.runners.split(",")]
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    rows: list[dict[str, object]] = []
    with postgres_server(fsync=True) as pg, tempfile.TemporaryDirectory(prefix="edgelr-histbench-") as tmp:
        for n in counts:
            for backend in ("sqlite", "postgresql"):
                history = (str(Path(tmp) / f"sqlite{n}" / "history.sqlite") if backend == "sqlite"
                           else pg.create_db(f"bench{n}"))
                r = measure(history, n, args.seconds)
                rows.append({"backend": backend, **r})
                print(f"{backend:10s} N={n:2d}: {r['runs_per_s']:.1f} runs/s, {r['rows_per_s']:.0f} rows/s, "
                      f"p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms", file=sys.stderr)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    write_report(Path(args.out), rows, args, load_before, load_after)
    print(f"wrote {args.out}", file=sys.stderr)


def write_report(out: Path, rows: list[dict[str, object]], args: argparse.Namespace, load_before: list[str],
                 load_after: list[str]) -> None:
    lines = [
        "# History write rate: SQLite vs PostgreSQL under N concurrent runners",
        "",
        f"Command: `.venv/bin/python tests/perf/bench_history_writes.py --seconds {args.seconds:g} "
        f"--runners {args.runners}`  ",
        f"Machine: {os.cpu_count()} cores, shared with other jobs; load average (1/5/15 min) "
        f"{' '.join(load_before)} before, {' '.join(load_after)} after.",
        "",
        f"Each runner is a process appending whole runs with `append_run` for {args.seconds:g} s (all start "
        f"together); one run = {MODELS} models x {SESSIONS} sessions x ({SAMPLES} latency samples + "
        f"{len(AGGREGATES)} aggregates) = {ROWS_PER_RUN} rows, written as `edgelr bench` writes it (a `started` "
        "record committed first, then the rows and the final status in one transaction). SQLite: one file, WAL, "
        "default synchronous. PostgreSQL 15: loopback TCP, fsync on, one connection per operation (plus the run's "
        "lease connection), rows with COPY. Latency = one whole `append_run` call as a runner sees it.",
        "",
        "| backend | runners N | runs | runs/s | rows/s | p50 per run (ms) | p95 per run (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['runners']} | {r['runs']} | {r['runs_per_s']:.1f} | "
                     f"{r['rows_per_s']:,.0f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
