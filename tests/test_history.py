"""History store: append/load round trip, atomic runs under SIGKILL, concurrent writers, old layouts."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgelr.bench.frame import COLUMNS
from edgelr.errors import HistoryError
from edgelr.report import history as H

PY = sys.executable


def make_frame(n: int, model: str = "m", device: str = "local", base: float = 10.0) -> pd.DataFrame:
    """A long frame of ``n`` latency samples plus one peak_memory aggregate."""
    rows = [{"device": device, "model": model, "metric": "latency", "sample": i, "value": base + 0.01 * i,
             "unit": "ms", "repeat": 0} for i in range(n)]
    rows.append({"device": device, "model": model, "metric": "peak_memory", "sample": -1, "value": 42.0,
                 "unit": "MB", "repeat": 0, "note": "VmHWM"})
    return pd.DataFrame(rows)


def test_append_load_round_trip(tmp_path: Path) -> None:
    f = make_frame(5)
    f.loc[2, "value"] = math.nan
    rid = H.append_run(f, tmp_path / "hist", kind="bench")
    assert (tmp_path / "hist" / "history.sqlite").exists()
    df = H.load(tmp_path / "hist")
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS
    assert len(df) == 6 and set(df["run_id"]) == {rid}
    lat = df[df["metric"] == "latency"].sort_values("sample")
    assert lat["sample"].tolist() == [0, 1, 2, 3, 4]
    assert math.isnan(lat["value"].iloc[2]) and lat["value"].iloc[4] == pytest.approx(10.04)
    assert df.loc[df["metric"] == "peak_memory", "note"].item() == "VmHWM"
    assert df["unit"].tolist() == ["ms"] * 5 + ["MB"]
    r = H.runs(tmp_path / "hist")
    assert r[["run_id", "kind", "status", "n_rows"]].values.tolist() == [[rid, "bench", "complete", 6]]


def test_frame_run_id_is_kept_and_double_append_refused(tmp_path: Path) -> None:
    f = make_frame(3).assign(run_id="20260101T000000Z-abc")
    assert H.append_run(f, tmp_path / "h.sqlite") == "20260101T000000Z-abc"
    with pytest.raises(HistoryError, match="already recorded"):
        H.append_run(f, tmp_path / "h.sqlite")


def test_bad_input_errors(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="lacks columns"):
        H.append_run(pd.DataFrame({"model": ["m"], "value": [1.0]}), tmp_path)
    with pytest.raises(HistoryError, match="run kind"):
        H.append_run(make_frame(2), tmp_path, kind="nope")
    with pytest.raises(HistoryError, match="no history store"):
        H.load(tmp_path / "missing")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(HistoryError, match="cannot open"):
        H.load(tmp_path / "junk.sqlite")
    with pytest.raises(HistoryError, match="not understood"):
        H.parse_since("yesterday")


def test_failed_run_record_and_baselines(tmp_path: Path) -> None:
    rid = H.begin_run(tmp_path, kind="regress", suite="nightly")
    H.fail_run(tmp_path, rid, "device pi4 down")
    ok = H.append_run(make_frame(3), tmp_path, kind="regress", suite="nightly")
    r = H.runs(tmp_path).set_index("run_id")
    assert r.loc[rid, "status"] == "failed" and r.loc[rid, "error"] == "device pi4 down"
    assert r.loc[ok, "status"] == "complete"
    assert set(H.load(tmp_path)["run_id"]) == {ok}          # failed runs hold no rows
    with pytest.raises(HistoryError, match="only complete or partial"):
        H.mark_baseline(tmp_path, rid)
    with pytest.raises(HistoryError, match="not in"):
        H.mark_baseline(tmp_path, "nope")
    H.mark_baseline(tmp_path, ok)
    H.mark_baseline(tmp_path, ok, "release-1")
    b = H.baselines(tmp_path)
    assert b[["name", "run_id"]].values.tolist() == [["accepted", ok], ["release-1", ok]]
    assert H.runs(tmp_path).set_index("run_id").loc[ok, "baselines"] == "accepted,release-1"


def test_since_filters_by_run_start(tmp_path: Path) -> None:
    H.append_run(make_frame(2), tmp_path)
    assert len(H.load(tmp_path, since="1d")) == 3
    assert len(H.load(tmp_path, since="2999-01-01")) == 0


WRITER = textwrap.dedent("""
    import sys
    import pandas as pd
    from edgelr.report.history import append_run
    hist, tag, n_runs, n_rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for k in range(n_runs):
        f = pd.DataFrame({"device": tag, "model": f"m{k}", "metric": "latency", "sample": range(n_rows),
                          "value": [float(i) for i in range(n_rows)]})
        append_run(f, hist, kind="bench", suite=tag)
    print("done", flush=True)
""")


@pytest.mark.timeout(120)
def test_sigkill_mid_write_leaves_whole_runs_and_a_failed_record(tmp_path: Path) -> None:
    """Kill writers at spread-out instants inside their write: every run is all-or-nothing."""
    hist = tmp_path / "hist"
    H.append_run(make_frame(3), hist)              # an earlier good run that must survive
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "EDGELR_HISTORY_TEST_DELAY": "0.02"}   # 20 chunks of 50 rows -> ~0.45 s inside
    rng = np.random.default_rng(7)
    outcomes = []
    for trial in range(6):
        before = set(H.runs(hist)["run_id"])
        proc = subprocess.Popen([PY, str(script), str(hist), f"w{trial}", "1", "1000"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:       # wait for the 'started' record of this writer
            if set(H.runs(hist)["run_id"]) - before:
                break
            time.sleep(0.01)
        else:
            proc.kill()
            pytest.fail(f"writer never started: {proc.stderr.read().decode()[-500:]}")
        # trial 5 lets the write finish; the others kill at random instants inside the write
        time.sleep(rng.uniform(0.03, 0.4) if trial < 5 else 0)
        if trial < 5:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        new = set(H.runs(hist)["run_id"]) - before
        assert len(new) == 1
        outcomes.append((new.pop(), proc.returncode))
    runs_ = H.runs(hist).set_index("run_id")
    rows = H.load(hist, include_failed=True)
    counts = rows.groupby("run_id").size()
    for rid, code in outcomes:
        if code == -signal.SIGKILL:
            assert runs_.loc[rid, "status"] == "failed", runs_.loc[rid].to_dict()
            assert "interrupted" in runs_.loc[rid, "error"]
            assert rid not in counts.index                      # none of its rows
        else:
            assert code == 0 and runs_.loc[rid, "status"] == "complete"
            assert counts[rid] == 1000                           # all of its rows
    assert sum(code == -signal.SIGKILL for _, code in outcomes) == 5
    assert sqlite3.connect(H.store_path(hist)).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # the next writer persists the interrupted runs as failed
    H.append_run(make_frame(1), hist)
    con = sqlite3.connect(H.store_path(hist))
    n_failed = con.execute("SELECT COUNT(*) FROM runs WHERE status='failed'").fetchone()[0]
    assert n_failed == 5


@pytest.mark.timeout(180)
def test_concurrent_writers_all_rows_present(tmp_path: Path) -> None:
    hist = tmp_path / "hist"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([PY, str(script), str(hist), f"p{i}", "8", "300"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=170)
        assert p.returncode == 0, err.decode()[-800:]
    df = H.load(hist)
    assert len(df) == 4 * 8 * 300
    assert df.groupby("run_id").size().tolist() == [300] * 32
    assert sorted(df.groupby("device")["run_id"].nunique().tolist()) == [8, 8, 8, 8]
    r = H.runs(hist)
    assert len(r) == 32 and set(r["status"]) == {"complete"}
    for _, part in df.groupby("run_id"):
        assert sorted(part["value"].tolist()) == [float(i) for i in range(300)]


def _write_v0_store(path: Path) -> None:
    """The prototype (v0) layout: one results table, no runs table, user_version 0."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE results (run_id TEXT, timestamp TEXT, device TEXT, model TEXT, metric TEXT, "
                "sample INTEGER, value REAL, unit TEXT)")
    rows = [("r1", "2026-10-01T02:00:00+00:00", "pi4", "clf", "latency", i, 10.0 + i, "ms") for i in range(3)]
    rows += [("r2", "2026-10-02T02:00:00+00:00", "pi4", "clf", "latency", i, 11.0 + i, "ms") for i in range(3)]
    rows += [("r2", "2026-10-02T02:00:00+00:00", "pi4", "clf", "peak_memory", -1, 40.0, None)]
    con.executemany("INSERT INTO results VALUES (?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()


def test_v0_store_reads_without_changing_the_file_then_migrates_on_write(tmp_path: Path) -> None:
    p = tmp_path / "old.sqlite"
    _write_v0_store(p)
    df = H.load(p)
    assert len(df) == 7 and df["run_id"].drop_duplicates().tolist() == ["r1", "r2"]
    assert df.loc[df["metric"] == "peak_memory", "unit"].item() == "MB"     # filled from METRICS
    assert df["repeat"].tolist() == [0] * 7 and set(df["note"]) == {""}
    r = H.runs(p)
    assert r[["run_id", "status", "n_rows"]].values.tolist() == [["r1", "complete", 3], ["r2", "complete", 4]]
    assert sqlite3.connect(p).execute("PRAGMA user_version").fetchone()[0] == 0   # reading did not migrate
    H.append_run(make_frame(2), p)
    assert sqlite3.connect(p).execute("PRAGMA user_version").fetchone()[0] == H.STORE_VERSION
    assert len(H.load(p)) == 10
    H.mark_baseline(p, "r1")


def test_newer_store_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    p = tmp_path / "new.sqlite"
    H.append_run(make_frame(1), p)
    con = sqlite3.connect(p)
    con.execute("PRAGMA user_version=99")
    con.commit()
    con.close()
    with pytest.raises(HistoryError, match="version 99, newer"):
        H.load(p)
    with pytest.raises(HistoryError, match="version 99, newer"):
        H.append_run(make_frame(1), p)
