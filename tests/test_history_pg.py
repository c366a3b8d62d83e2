"""The history in a real PostgreSQL server (initdb in a temporary directory, a loopback port, torn down at the
end): the same guarantees as the SQLite store (key history tests run against both), concurrent writer
processes lose nothing, ``kill -9`` mid-write leaves complete runs only (on any host: run leases),
``edgelr history copy`` moves every row both ways, an unreachable server is one line within its deadline,
a down server after a measurement spools the rows, and a password in the URL is never printed or stored.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest

from tests.local_device import write_local_inventory
from tests.pg_server import PGServer, pg_bin, postgres_server

from edgelr.bench.frame import COLUMNS
from edgelr.errors import HistoryError
from edgelr.report import history as H

PY = sys.executable
SECRET = "s3cret-pw"
MODEL = Path(__file__).resolve().parents[1] / "edgelr" / "data" / "noise_probe.tflite"
_ids = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[PGServer]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql; `make test` does)")
    with postgres_server(fsync=False) as server:
        yield server


@pytest.fixture(scope="session")
def pg_db(pg: PGServer) -> str:
    """One database for the session; each test's history is a schema in it (cheaper than a database each)."""
    name = f"edgelr_{os.getpid()}"
    pg.create_db(name)
    return name


def _new_history_url(pg: PGServer, db: str, files: Path) -> str:
    """A new, empty history: a schema of ``db`` named by the URL's search_path, with a password (trust auth
    ignores it) and a files directory."""
    import psycopg

    schema = f"h{next(_ids)}"
    with psycopg.connect(pg.url(db), autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
    return pg.url(db, password=SECRET, files=str(files), options=f"-csearch_path%3D{schema}")


@pytest.fixture()
def pg_url(pg: PGServer, pg_db: str, tmp_path: Path) -> str:
    return _new_history_url(pg, pg_db, tmp_path / "files")


def _conninfo(url: str) -> str:
    """What psycopg connects to for ``url`` (its files parameter removed)."""
    return H.open_store(url).conninfo


@pytest.fixture(params=["sqlite", "postgresql"])
def hist(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    return tmp_path / "hist" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def make_frame(n: int, model: str = "m", device: str = "local") -> pd.DataFrame:
    rows = [{"device": device, "model": model, "metric": "latency", "sample": i, "value": 10.0 + 0.01 * i,
             "unit": "ms", "repeat": i % 2} for i in range(n)]
    rows.append({"device": device, "model": model, "metric": "peak_memory", "sample": -1, "value": 42.0,
                 "unit": "MB", "repeat": 0, "note": "VmHWM", "threads": 4})
    return pd.DataFrame(rows)


def _edgelr(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in this process (no interpreter start-up); return exit code, stdout, stderr."""
    from edgelr.cli.main import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -------------------------------------------------------------- the SQLite history tests, on both backends
def test_round_trip_failed_runs_baselines_verdicts_noise(hist: str | Path) -> None:
    f = make_frame(5)
    f.loc[2, "value"] = math.nan
    rid = H.append_run(f, hist, kind="bench")
    df = H.load(hist)
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS
    assert len(df) == 6 and set(df["run_id"]) == {rid}
    lat = df[df["metric"] == "latency"]
    assert lat["sample"].tolist() == [0, 1, 2, 3, 4] and lat["repeat"].tolist() == [0, 1, 0, 1, 0]
    assert math.isnan(lat["value"].iloc[2]) and lat["value"].iloc[4] == pytest.approx(10.04)
    assert df["unit"].tolist() == ["ms"] * 5 + ["MB"] and df["threads"].iloc[-1] == 4
    with pytest.raises(HistoryError, match="already recorded"):
        H.append_run(f.assign(run_id=rid), hist)

    bad = H.begin_run(hist, kind="regress", suite="nightly")
    H.fail_run(hist, bad, "device pi4 down")
    r = H.runs(hist).set_index("run_id")
    assert r.loc[rid, "status"] == "complete" and r.loc[rid, "n_rows"] == 6
    assert r.loc[bad, "status"] == "failed" and r.loc[bad, "error"] == "device pi4 down"
    with pytest.raises(HistoryError, match="only complete or partial"):
        H.mark_baseline(hist, bad)
    with pytest.raises(HistoryError, match="not in"):
        H.mark_baseline(hist, "nope")
    H.mark_baseline(hist, rid)
    H.mark_baseline(hist, rid, "release-1")
    assert H.baselines(hist)[["name", "run_id"]].values.tolist() == [["accepted", rid], ["release-1", rid]]
    assert H.runs(hist).set_index("run_id").loc[rid, "baselines"] == "accepted,release-1"

    H.record_comparisons(hist, pd.DataFrame([{"run_id": rid, "model": "m", "device": "local", "metric": "latency",
                                              "status": "ok", "n_current": 10.0, "p_value": 0.4, "current": math.nan}]))
    c = H.load_comparisons(hist)
    assert c[["run_id", "status", "n_current"]].values.tolist() == [[rid, "ok", 10]] and c["current"].isna().all()
    H.record_noise(hist, "local", sd_log_ratio=0.1, session_cv=0.05, sessions=20, runs=20, alpha=0.01,
                   min_detectable=0.12, source=H.NOISE_FROM_CHECK)
    assert H.noise_floor(hist, "local", source=H.NOISE_FROM_CHECK)["min_detectable"] == 0.12
    assert H.noise_floor(hist, "local", source="other") is None
    assert len(H.load(hist, since="1d")) == 6 and len(H.load(hist, since="2999-01-01")) == 0


def test_newer_database_layout_is_refused(pg_url: str) -> None:
    import psycopg

    H.append_run(make_frame(1), pg_url)
    with psycopg.connect(_conninfo(pg_url), autocommit=True) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    for call in (lambda: H.load(pg_url), lambda: H.append_run(make_frame(1), pg_url)):
        with pytest.raises(HistoryError, match="version 99, newer") as err:
            call()
        assert SECRET not in str(err.value) and ":***@" in str(err.value)


def test_an_older_database_layout_is_migrated_once_by_the_first_writer(pg_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from edgelr.report import store_pg

    rid = H.append_run(make_frame(2), pg_url)
    monkeypatch.setattr(store_pg, "PG_VERSION", 2)
    monkeypatch.setattr(store_pg, "MIGRATIONS", {1: ["ALTER TABLE runs ADD COLUMN labhost TEXT"]})
    with pytest.raises(HistoryError, match="version 1, older .* migrates it"):
        H.load(pg_url)                                   # readers never write
    H.append_run(make_frame(1), pg_url)                  # a writer migrates, in one transaction
    H.append_run(make_frame(1), pg_url)
    with psycopg.connect(_conninfo(pg_url)) as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
        assert con.execute("SELECT COUNT(labhost) FROM runs").fetchone() == (0,)
    assert rid in set(H.load(pg_url)["run_id"]) and len(H.runs(pg_url)) == 3


# ------------------------------------------------------------------------------ writers, kills, leases
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

ELSEWHERE = textwrap.dedent("""
    import socket, sys, time
    socket.gethostname = lambda: "lab-host-2"     # a runner on another host: its pid means nothing here
    from edgelr.report.history import begin_run
    print(begin_run(sys.argv[1], kind="regress", suite="nightly"), flush=True)
    time.sleep(600)
""")


@pytest.mark.timeout(120)
def test_concurrent_writer_processes_lose_nothing(pg_url: str, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([PY, str(script), pg_url, f"p{i}", "5", "300"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=110)
        assert p.returncode == 0, err.decode()[-800:]
    df = H.load(pg_url)
    assert len(df) == 3 * 5 * 300
    assert df.groupby("run_id").size().tolist() == [300] * 15
    assert sorted(df.groupby("device")["run_id"].nunique().tolist()) == [5, 5, 5]
    for _, part in df.groupby("run_id"):
        assert part["value"].tolist() == [float(i) for i in range(300)]   # whole, and in order
    r = H.runs(pg_url)
    assert len(r) == 15 and set(r["status"]) == {"complete"}
    assert all(SECRET not in a for a in _stored_argv(pg_url))


def _stored_argv(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(_conninfo(url)) as con:
        return [a for (a,) in con.execute("SELECT argv FROM runs").fetchall()]


@pytest.mark.timeout(120)
def test_kill_9_mid_write_leaves_complete_runs_only_on_any_host(pg_url: str, tmp_path: Path) -> None:
    H.append_run(make_frame(3), pg_url)                     # an earlier good run that must survive
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "elsewhere.py").write_text(ELSEWHERE)
    mark = tmp_path / "inside"
    env = {**os.environ, "EDGELR_HISTORY_TEST_DELAY": "0.05", "EDGELR_HISTORY_TEST_MARK": str(mark)}
    writer = subprocess.Popen([PY, str(tmp_path / "writer.py"), pg_url, "killed", "1", "1000"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    other = subprocess.Popen([PY, str(tmp_path / "elsewhere.py"), pg_url], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        other_id = other.stdout.readline().strip()
        assert other_id, other.stderr.read()[-800:]
        deadline = time.monotonic() + 60
        while not mark.exists():                           # the first rows are inside the open transaction
            assert time.monotonic() < deadline and writer.poll() is None, writer.stderr.read().decode()[-800:]
            time.sleep(0.01)
        time.sleep(0.1)
        r = H.runs(pg_url).set_index("run_id")
        assert r.loc[other_id, "status"] == "started"      # alive: its lease is held, on whatever host
        writer.send_signal(signal.SIGKILL)
        other.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        other.wait(timeout=30)
    finally:
        for p in (writer, other):
            if p.poll() is None:
                p.kill()
                p.wait()
    killed_id = mark.read_text()
    r = H.runs(pg_url).set_index("run_id")
    for rid in (killed_id, other_id):
        assert r.loc[rid, "status"] == "failed" and "interrupted" in r.loc[rid, "error"], r.loc[rid].to_dict()
    rows = H.load(pg_url, include_failed=True)
    assert set(rows["run_id"]) == {r.index[0]} and len(rows) == 4   # the earlier run, whole; none of the killed
    H.append_run(make_frame(1), pg_url)                    # the next writer persists the interrupted runs
    import psycopg

    with psycopg.connect(_conninfo(pg_url)) as con:
        stored = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
    assert stored[killed_id] == stored[other_id] == "failed"


# ------------------------------------------------------------------------------------------ copy, CLI
def _sqlite_history(path: Path, model_file: Path) -> dict[str, Any]:
    ok = H.append_run(make_frame(4, model="a"), path, kind="regress", suite="nightly")
    H.append_run(make_frame(2, model="b").assign(value=math.nan), path, status="partial", error="pi5: down")
    bad = H.begin_run(path, kind="regress")
    H.fail_run(path, bad, "no results")
    H.mark_baseline(path, ok)
    H.record_comparisons(path, pd.DataFrame([{"run_id": ok, "model": "a", "metric": "latency", "p_value": 0.5}]))
    H.record_noise(path, "local", sd_log_ratio=0.1, session_cv=0.05, sessions=20, runs=20, alpha=0.01,
                   min_detectable=0.12, source=H.NOISE_FROM_CHECK)
    sha = H.store_model(path, model_file)
    return {"sha": sha}


def _tables(hist: str | Path) -> dict[str, pd.DataFrame]:
    return {"results": H.load(hist, include_failed=True).drop(columns=["run_started"]),
            "runs": H.runs(hist).drop(columns=["pid"]).astype(str), "baselines": H.baselines(hist),
            "comparisons": H.load_comparisons(hist).astype(str),
            "noise": pd.DataFrame([H.noise_floor(hist, "local")])}


def test_history_copy_sqlite_to_postgresql_and_back_keeps_every_row(pg: PGServer, pg_db: str, pg_url: str,
                                                                    tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    made = _sqlite_history(src, MODEL)
    before = _tables(src)
    code, out, err = _edgelr("history", "copy", str(src), pg_url, "--json", capsys=capsys)
    assert code == 0, err
    copied = json.loads(out)["copied"]
    assert copied == {"runs": 3, "results": 8, "baselines": 1, "comparisons": 1, "noise_floor": 1, "model_files": 1}
    assert SECRET not in out + err and ":***@" in out
    for name, frame in _tables(pg_url).items():
        pd.testing.assert_frame_equal(frame, before[name], check_dtype=False, obj=name)
    assert H.model_file(pg_url, made["sha"]) == tmp_path / "files" / "models" / made["sha"][:2] / f"{made['sha']}.tflite"

    back = tmp_path / "back.sqlite"
    code, _, err = _edgelr("history", "copy", pg_url, str(back), capsys=capsys)
    assert code == 0, err
    for name, frame in _tables(back).items():
        pd.testing.assert_frame_equal(frame, before[name], check_dtype=False, obj=name)

    v0 = tmp_path / "v0.sqlite"                        # the prototype layout copies too (read through v1)
    con = sqlite3.connect(v0)
    con.execute("CREATE TABLE results (run_id TEXT, timestamp TEXT, device TEXT, model TEXT, metric TEXT, "
                "sample INTEGER, value REAL, unit TEXT)")
    con.executemany("INSERT INTO results VALUES (?,?,?,?,?,?,?,?)",
                    [("r1", "2026-10-01T02:00:00+00:00", "pi4", "clf", "latency", i, 10.0 + i, "ms") for i in range(3)])
    con.commit()
    con.close()
    v0_url = _new_history_url(pg, pg_db, tmp_path / "v0files")
    assert H.copy_history(v0, v0_url)["results"] == 3
    pd.testing.assert_frame_equal(H.load(v0_url), H.load(v0), check_dtype=False)

    n_before = len(H.runs(pg_url))
    code, out, err = _edgelr("history", "copy", str(back), pg_url, capsys=capsys)   # not empty: refused
    assert code == 1 and out == "" and err.count("\n") == 2 and "is not empty" in err and SECRET not in err
    assert len(H.runs(pg_url)) == n_before


# ------------------------------------------------------------------------------- unreachable, down server
def test_unreachable_server_is_one_line_within_the_deadline(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:          # accepts TCP connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        code, out, err = _edgelr("report", f"postgresql://edgelr:{SECRET}@127.0.0.1:{port}/h?connect_timeout=2",
                                 capsys=capsys)
        took = time.monotonic() - t0
    assert code == 1 and out == "" and took < 8, (took, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("edgelr: error: cannot connect to the history database postgresql://edgelr:***@127.0.0.1")
    assert SECRET not in err


@pytest.mark.timeout(180)
def test_bench_records_in_postgresql_and_spools_when_the_server_is_down(pg_url: str, tmp_path: Path) -> None:
    inventory = write_local_inventory(tmp_path / "inventory.toml", "box")
    down = f"postgresql://edgelr:{SECRET}@127.0.0.1:{_closed_port()}/h?connect_timeout=3"
    code = "import sys; from edgelr.cli.main import main; sys.argv = ['edgelr', *sys.argv[1:]]; main()"

    def bench(history: str, state: str) -> subprocess.Popen[str]:
        return subprocess.Popen([PY, "-c", code, "bench", f"probe={MODEL}", "--device", "box", "--inventory",
                                 str(inventory), "--sessions", "2", "--runs", "5", "--warmup", "1", "--no-lock",
                                 "--history", history], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "XDG_STATE_HOME": str(tmp_path / state)})

    procs = [bench(pg_url, "s1"), bench(down, "s2")]
    (ok_out, ok_err), (down_out, down_err) = (p.communicate(timeout=170) for p in procs)
    assert procs[0].returncode == 0, ok_err[-2000:]
    assert "recorded run" in ok_err and ":***@" in ok_err and SECRET not in ok_out + ok_err
    rows = H.load(pg_url)
    assert set(rows["model"]) == {"probe"} and (rows["metric"] == "latency").sum() == 2 * 5
    assert all(SECRET not in a for a in _stored_argv(pg_url)) and any("***" in a for a in _stored_argv(pg_url))

    assert procs[1].returncode == 1 and "probe" in down_out, down_err[-2000:]   # the summary still printed
    errs = [ln for ln in down_err.splitlines() if ln.startswith("edgelr:")]
    assert len(errs) == 1 and "cannot connect to the history database" in errs[0] and SECRET not in down_err
    spooled = Path(errs[0].rsplit("kept in ", 1)[1].strip())
    assert (pd.read_csv(spooled)["metric"] == "latency").sum() == 2 * 5


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_run_whose_lease_connection_died_still_lands_or_is_refused_whole(pg_url: str) -> None:
    """A server restart (here: the lease's backend terminated) during a long run: the rows are written on
    a new connection while the run is still ``started``; once another writer has reaped it, refused whole."""
    import psycopg

    rid = H.begin_run(pg_url, kind="regress")
    with psycopg.connect(_conninfo(pg_url), autocommit=True) as con:
        con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'edgelr' "
                    "AND pid <> pg_backend_pid() AND datname = current_database()")
    assert H.append_run(make_frame(3), pg_url, kind="regress", run_id=rid) == rid
    assert H.runs(pg_url).set_index("run_id").loc[rid, "status"] == "complete" and len(H.load(pg_url)) == 4

    late = H.begin_run(pg_url, kind="regress")
    with psycopg.connect(_conninfo(pg_url), autocommit=True) as con:
        con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'edgelr' "
                    "AND pid <> pg_backend_pid() AND datname = current_database()")
    H.append_run(make_frame(1), pg_url)                    # another writer reaps the lease-less run
    with pytest.raises(HistoryError, match="already 'failed'|status 'failed'"):
        H.append_run(make_frame(3), pg_url, kind="regress", run_id=late)
    assert late not in set(H.load(pg_url, include_failed=True)["run_id"])


@pytest.mark.timeout(120)
def test_a_server_frozen_mid_write_is_cut_off_after_answer_timeout(pg_url: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's backend stopped (SIGSTOP) inside a write's transaction: its kernel still ACKs, so only the
    watchdog ends the wait; the write fails with one line within answer_timeout and nothing of it is stored."""
    import threading

    import psycopg

    url = pg_url + "&answer_timeout=2"
    first = H.append_run(make_frame(3), url)
    mark = tmp_path / "in_transaction"
    monkeypatch.setenv("EDGELR_HISTORY_TEST_DELAY", "0.5")
    monkeypatch.setenv("EDGELR_HISTORY_TEST_MARK", str(mark))
    outcome: list[BaseException | str] = []

    def write() -> None:
        try:
            outcome.append(H.append_run(make_frame(400), url))
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    worker = threading.Thread(target=write, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists()
    with psycopg.connect(_conninfo(pg_url), autocommit=True) as con:
        (pid,), = con.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'edgelr' "
                              "AND state LIKE 'idle in transaction%' AND datname = current_database()").fetchall()
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        worker.join(30)
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not worker.is_alive() and took < 2 + 0.5 + 3, took
    (err,) = outcome
    assert isinstance(err, HistoryError), err
    assert "no answer for 2 s" in str(err) and "\n" not in str(err) and SECRET not in str(err)
    monkeypatch.delenv("EDGELR_HISTORY_TEST_DELAY")
    rows = H.load(url)
    assert set(rows["run_id"]) == {first} and len(rows) == 4       # the frozen write left nothing


def test_answer_timeout_must_be_positive(pg_url: str) -> None:
    with pytest.raises(HistoryError, match="answer_timeout='0'; expected a positive number of seconds"):
        H.load(pg_url + "&answer_timeout=0")


def test_watchdog_cuts_a_call_that_gets_no_answer_and_ignores_idle_time() -> None:
    """The watchdog alone, on a socket whose peer never answers: time outside busy() does not count, a
    blocked read inside it ends when the watchdog shuts the socket down."""
    from edgelr.report.store_pg import Watchdog

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with socket.create_connection(silent.getsockname()) as con:
            with Watchdog(con, 0.5) as dog:
                time.sleep(1.2)                       # idle between two calls: not cut
                assert not dog.fired
                t0 = time.monotonic()
                with dog.busy():
                    assert con.recv(16) == b""        # blocked until the watchdog shuts the socket down
                took = time.monotonic() - t0
            assert dog.fired and 0.4 < took < 3.0, took
