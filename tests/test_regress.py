"""`edgelr regress` end to end through the real `local` device and a real sshd, plus suite parsing.

Models are tiny Keras MLPs converted with TensorFlow in a subprocess: a "fast" one and a much wider
"slow" one that is stored under the same suite name to simulate a regressing model update.
This host is shared and noisy (a model run twice was flagged +41 % under load when inferences were
treated as samples), so the suites use the realistic 5 % latency threshold on purpose: latency is
compared over sessions and a suggested change is confirmed by a paired, interleaved re-run of the
stored baseline model, which is what must keep an unchanged model from being flagged here. The
statistics are tested in test_report_stats.py and measured in tests/perf/bench_detection.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgelr.errors import UsageError
from edgelr.report import history as H
from edgelr.report.suite import load_suite
from tests.sshd import SshdServer, sshd_server, write_inventory  # noqa: F401  (fixture)

EDGELR = [sys.executable, "-m", "edgelr.cli.main"]

_MAKE_MODELS = """
import sys
from edgelr.tfcompat import tf, keras2
k = keras2()
k.utils.set_random_seed(0)
def build(widths, path):
    m = k.Sequential([k.layers.Input((64,), batch_size=1)] + [k.layers.Dense(w, activation="relu") for w in widths]
                     + [k.layers.Dense(10)])
    open(path, "wb").write(tf().lite.TFLiteConverter.from_keras_model(m).convert())
build([512, 512], sys.argv[1])
build([1536, 1536, 1536], sys.argv[2])
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(fast, slow) .tflite files: 64-512-512-10 and 64-1536-1536-1536-10 (~15x the MACs) float32 MLPs."""
    d = tmp_path_factory.mktemp("models")
    fast, slow = d / "fast.tflite", d / "slow.tflite"
    proc = subprocess.run([sys.executable, "-c", _MAKE_MODELS, str(fast), str(slow)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return fast, slow


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELR_", "XDG_", "SSH_AUTH_SOCK"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
               EDGELR_LOCK_DIR=str(tmp_path / "locks"), **extra)
    return env


SESSIONS = 8
CONFIRM_SESSIONS = 16   # the paired re-run's cap (40 by default; smaller keeps the tests short)


def _suite(d: Path, devices: list[str], runs: int = 10, sessions: int = SESSIONS) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "suite.toml").write_text(f"""
[suite]
name = "nightly"
runs = {runs}
sessions = {sessions}
confirm_sessions = {CONFIRM_SESSIONS}
history = "reports/history"

[[models]]
name = "classifier"
path = "models/classifier.tflite"

{''.join(f'[[devices]]{chr(10)}name = "{x}"{chr(10)}' for x in devices)}
[thresholds]
latency = "5%"
peak_memory = "25%"
energy = "8%"
accuracy = "0.5pt"
""")
    return d / "suite.toml"


def _put_model(suite_dir: Path, src: Path) -> None:
    (suite_dir / "models").mkdir(exist_ok=True)
    shutil.copyfile(src, suite_dir / "models" / "classifier.tflite")


def _regress(suite: Path, env: dict[str, str], *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGELR, "regress", "--suite", str(suite), "--json", *extra], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _latency(out: dict) -> dict:
    return next(c for c in out["comparisons"] if c["metric"] == "latency")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_regress_local_same_model_passes_slower_model_fails(models: tuple[Path, Path], tmp_path: Path) -> None:
    fast, slow = models
    suite = _suite(tmp_path / "s", ["local"])
    env = _env(tmp_path)
    _put_model(suite.parent, fast)

    first = _regress(suite, env)
    assert first.returncode == 0, first.stderr[-1500:]
    out1 = json.loads(first.stdout)
    assert out1["accepted"] is True and _latency(out1)["status"] == "no-baseline"
    assert "accepted as the baseline" in first.stderr

    second = _regress(suite, env)
    assert second.returncode == 0, second.stdout + second.stderr[-1500:]
    out2 = json.loads(second.stdout)
    lat = _latency(out2)
    assert lat["status"] in ("ok", "improvement") and lat["baseline"] == f"accepted:{out1['run_id']}"
    assert lat["method"] in ("mann-whitney-u (sessions)", "wilcoxon-signed-rank (paired re-run)")
    if lat["method"].startswith("mann-whitney"):   # not suggested: the stored comparison stands
        assert lat["n_current"] == lat["n_baseline"] == SESSIONS and abs(lat["effect"]) < 0.025
    else:                                          # re-run with as many blocks as the noise needs, <= the cap
        assert SESSIONS <= lat["n_current"] == lat["n_baseline"] <= CONFIRM_SESSIONS

    _put_model(suite.parent, slow)        # a much wider model under the same name
    third = _regress(suite, env)
    assert third.returncode == 3, third.stderr[-1500:]
    out3 = json.loads(third.stdout)
    lat = _latency(out3)
    assert lat["status"] == "regression" and lat["p_value"] < 0.01 and lat["ci_low"] > 0.5
    assert lat["current"] > 5 * lat["baseline_value"]
    assert lat["method"] == "wilcoxon-signed-rank (paired re-run)" and "decided by the paired re-run" in lat["note"]
    assert "regression(s) in run" in third.stderr

    fourth = _regress(suite, env, "--accept", "--accept-as", "v2")   # the slow model becomes the baseline
    assert fourth.returncode == 0, fourth.stderr[-1500:]
    out4 = json.loads(fourth.stdout)
    assert _latency(out4)["status"] == "regression"   # still reported against the old baseline

    hist = suite.parent / "reports" / "history"
    r = H.runs(hist)
    r = r[r["kind"] == "regress"]
    assert r["run_id"].tolist() == [o["run_id"] for o in (out1, out2, out3, out4)]
    assert set(r["status"]) == {"complete"} and set(r["kind"]) == {"regress"} and set(r["suite"]) == {"nightly"}
    assert H.baselines(hist)[["name", "run_id"]].values.tolist() == [
        ["accepted", out1["run_id"]], ["v2", out4["run_id"]], ["accepted", out4["run_id"]]]
    frame = H.load(hist, kinds=["regress"])
    assert set(frame["model"]) == {"classifier"} and set(frame["device"]) == {"local"}
    assert (frame[frame["metric"] == "latency"].groupby("run_id").size() == SESSIONS * 10).all()
    assert H.model_file(hist, frame["model_sha256"].iloc[0]) is not None   # content-addressed copy kept
    comps = H.load_comparisons(hist)
    assert comps[comps["metric"] == "latency"]["status"].tolist() == [
        "no-baseline", _latency(out2)["status"], "regression", "regression"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_device_down_is_an_error_for_that_device_others_stored(models: tuple[Path, Path], tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:        # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inv = tmp_path / "inv.toml"
    inv.write_text(f'[devices.down]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = {port}\nuser = "root"\n'
                   f'connect_timeout = 3.0\n')
    suite = _suite(tmp_path / "s", ["local", "down"], runs=10)
    _put_model(suite.parent, models[0])
    proc = _regress(suite, _env(tmp_path), "--inventory", str(inv))
    assert proc.returncode == 1, proc.stderr[-1500:]
    out = json.loads(proc.stdout)
    assert list(out["errors"]) == ["down"]
    assert "[down] ERROR" in proc.stderr and "1 device(s) failed" in proc.stderr
    hist = suite.parent / "reports" / "history"
    r = H.runs(hist)
    assert r["status"].tolist() == ["partial"] and "down" in r["error"].item()
    assert set(H.load(hist)["device"]) == {"local"}


@pytest.mark.timeout(120)
def test_every_device_failing_is_one_line_with_each_devices_own_error(models: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:    # ports nobody listens on
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    inv = tmp_path / "inv.toml"
    inv.write_text("".join(f'[devices.down{i}]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = {p}\nuser = "root"\n'
                           f'connect_timeout = 3.0\n' for i, p in enumerate(ports)))
    suite = _suite(tmp_path / "s", ["down0", "down1"], runs=10)
    _put_model(suite.parent, models[0])
    proc = _regress(suite, _env(tmp_path), "--inventory", str(inv))
    assert proc.returncode == 1, proc.stderr[-1500:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgelr:")]
    assert len(errors) == 1 and "internal error" not in errors[0] and "Traceback" not in proc.stderr
    assert "no device produced results" in errors[0] and "down0" in errors[0] and "down1" in errors[0]
    assert str(ports[0]) in errors[0] and str(ports[1]) in errors[0]   # each device's own error, not a summary
    r = H.runs(suite.parent / "reports" / "history")
    assert r["status"].tolist() == ["failed"] and str(ports[0]) in r["error"].item() and str(ports[1]) in r["error"].item()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_regress_killed_mid_write_leaves_complete_runs_only(models: tuple[Path, Path], tmp_path: Path) -> None:
    suite = _suite(tmp_path / "s", ["local"], runs=10)
    _put_model(suite.parent, models[0])
    env = _env(tmp_path)
    assert _regress(suite, env).returncode == 0
    mark = tmp_path / "in-transaction"
    proc = subprocess.Popen([*EDGELR, "regress", "--suite", str(suite)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**env, "EDGELR_HISTORY_TEST_DELAY": "60",
                                                         "EDGELR_HISTORY_TEST_MARK": str(mark)})
    deadline = time.monotonic() + 200
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), proc.communicate()[1][-1500:]
    proc.send_signal(signal.SIGKILL)    # rows are inside the uncommitted transaction now
    proc.wait(timeout=30)
    killed = mark.read_text()
    hist = suite.parent / "reports" / "history"
    r = H.runs(hist).set_index("run_id")
    assert len(r) == 2 and r.loc[killed, "status"] == "failed" and "interrupted" in r.loc[killed, "error"]
    frame = H.load(hist, include_failed=True)
    assert set(frame["run_id"]) == set(r.index) - {killed}
    assert sqlite3.connect(H.store_path(hist)).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # the store keeps working: the next run compares with the first one
    again = _regress(suite, env)
    assert again.returncode == 0, again.stderr[-1500:]
    unknown = _regress(suite, env, "--baseline", "nope")    # refused before any device work
    assert unknown.returncode == 2 and "no baseline of that name" in unknown.stderr
    runs = H.runs(hist)   # plus a "confirm" run when the stored comparison suggested a change
    assert (runs["kind"] == "regress").sum() == 3 and set(runs["kind"]) <= {"regress", "confirm"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_regress_over_real_sshd(models: tuple[Path, Path], sshd_server: SshdServer, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.toml", sshd_server, python=sys.executable, workdir=str(tmp_path / "w"))
    suite = _suite(tmp_path / "s", ["sshdev"])
    env = _env(tmp_path)
    _put_model(suite.parent, models[0])
    first = _regress(suite, env, "--inventory", str(inv))
    assert first.returncode == 0, first.stderr[-1500:]
    _put_model(suite.parent, models[1])
    second = _regress(suite, env, "--inventory", str(inv))
    assert second.returncode == 3, second.stderr[-1500:]
    out = json.loads(second.stdout)
    lat = _latency(out)
    assert lat["device"] == "sshdev" and lat["status"] == "regression"
    frame = H.load(suite.parent / "reports" / "history")
    assert set(frame["transport"]) == {"ssh"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cron_schedule_runs_under_flock_and_logs_each_run(models: tuple[Path, Path], tmp_path: Path) -> None:
    suite = _suite(tmp_path / "s", ["local"], runs=10)
    _put_model(suite.parent, models[0])
    env = _env(tmp_path)
    sched = tmp_path / "sched"
    proc = subprocess.run([*EDGELR, "regress", "--suite", str(suite), "--install-schedule", "cron", "--every",
                           "daily 02:30", "--schedule-dir", str(sched)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    cron = sched / "edgelr-regress-nightly.cron"
    assert proc.stdout.strip() == str(cron) and "crontab -" in proc.stderr
    line = [x for x in cron.read_text().splitlines() if x and not x.startswith("#")]
    assert len(line) == 1 and line[0].startswith("30 2 * * * ")
    command = line[0].split(" ", 5)[5].replace(r"\%", "%")   # what cron hands to /bin/sh
    hist = suite.parent / "reports" / "history"
    logs = hist / "logs"
    run = subprocess.run(["/bin/sh", "-c", command], env=env, timeout=240, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (log,) = logs.glob("regress-nightly-*.log")
    assert "regress nightly: run" in log.read_text()
    assert len(H.runs(hist)) == 1
    # a run still holding the lock: the scheduled one skips (flock -n exits 1) and stores nothing
    holder = subprocess.Popen(["flock", str(hist / "regress-nightly.lock"), "sleep", "30"])
    try:
        time.sleep(0.3)
        skipped = subprocess.run(["/bin/sh", "-c", command], env=env, timeout=60)
        assert skipped.returncode == 1
    finally:
        holder.kill()
        holder.wait()
    assert len(H.runs(hist)) == 1


def test_systemd_units_are_valid(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / "models").mkdir()
    (d / "models" / "classifier.tflite").write_bytes(b"TFL3")
    suite = _suite(d, ["local"])
    proc = subprocess.run([*EDGELR, "regress", "--suite", str(suite), "--install-schedule", "systemd", "--every",
                           "weekly mon 03:15", "--schedule-dir", str(tmp_path / "units")], capture_output=True,
                          text=True, env=_env(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    service, timer = (Path(x) for x in proc.stdout.split())
    assert service.name == "edgelr-regress-nightly.service" and timer.name == "edgelr-regress-nightly.timer"
    assert "OnCalendar=Mon *-*-* 03:15:00" in timer.read_text()
    text = service.read_text()
    assert "flock -n" in text and "%%Y%%m%%d" in text and "$$(date" in text and str(suite) in text
    if shutil.which("systemd-analyze"):
        v = subprocess.run(["systemd-analyze", "verify", str(service), str(timer)], capture_output=True, text=True)
        assert v.returncode == 0, v.stderr
        c = subprocess.run(["systemd-analyze", "calendar", "Mon *-*-* 03:15:00"], capture_output=True, text=True)
        assert c.returncode == 0 and "Mon" in c.stdout


def test_bad_every_and_bad_suites(tmp_path: Path) -> None:
    d = tmp_path / "s"
    (d / "models").mkdir(parents=True)
    (d / "models" / "classifier.tflite").write_bytes(b"TFL3")
    suite = _suite(d, ["local"])
    s = load_suite(suite)
    assert s.history == (d / "reports" / "history").resolve()
    assert s.models[0].path == (d / "models" / "classifier.tflite").resolve() and s.runs == 10 and s.sessions == SESSIONS
    assert s.thresholds == {"latency": "5%", "peak_memory": "25%", "energy": "8%", "accuracy": "0.5pt"}
    proc = subprocess.run([*EDGELR, "regress", "--suite", str(suite), "--install-schedule", "cron", "--every",
                           "sometimes"], capture_output=True, text=True, env=_env(tmp_path), timeout=60)
    assert proc.returncode == 2 and "--every 'sometimes' is not understood" in proc.stderr
    text = suite.read_text()
    cases = [
        (text.replace('latency = "5%"', 'latency = "100"'), "expected a relative"),
        (text.replace('path = "models/classifier.tflite"', 'path = "models/nope.tflite"'), "does not exist"),
        (text.replace('runs = 10', 'runs = 0'), "runs=0"),
        (text.replace('runs = 10', 'runs = 10\nthreads = true'), "threads=True"),
        (text.replace('runs = 10', 'runs = 10\nrepeat = 3'), "both sessions and repeat"),
        (text.replace('sessions = 8', 'sessions = 0'), "sessions=0"),
        (text.replace('[thresholds]', '[thresholds]\nhappiness = "1%"'), "does not measure"),
        (text.replace('history = "reports/history"', 'histroy = "x"'), "unknown [suite] key"),
        (text.replace('path = "models/classifier.tflite"', 'recipe = "compress.toml"'), "compress recipe"),
        ("[suite\n", "not valid TOML"),
    ]
    for body, msg in cases:
        suite.write_text(body)
        with pytest.raises(UsageError, match=msg.replace("[", r"\[")):
            load_suite(suite)
    with pytest.raises(UsageError, match="no such file"):
        load_suite(tmp_path / "missing.toml")


def _runners_of(root: Path) -> list[int]:
    """Pids of live processes whose command line mentions ``root`` (the test's own model/work folders)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if str(root) in cmd and "edgelr.cli.main" not in cmd and state != "Z":
            pids.append(int(d.name))
    return pids


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_stops_regress_at_once_keeps_rows_and_leaves_no_runner(models: tuple[Path, Path], tmp_path: Path) -> None:
    # far more work than the ~20 s before the interrupt, even on a quiet machine (with 400 x 50 the run had
    # already been stored complete there, and the interrupt hit what came after it)
    suite = _suite(tmp_path / "s", ["box"], runs=4000, sessions=200)
    _put_model(suite.parent, models[1])
    env = _env(tmp_path)
    inv = tmp_path / "inv.toml"   # a local device whose workdir is this test's, so _runners_of sees its runner
    inv.write_text(f'[devices.box]\ntransport = "local"\ntarget = "host"\npython = "{sys.executable}"\n'
                   f'workdir = "{tmp_path / "dev"}"\n')
    proc = subprocess.Popen([*EDGELR, "regress", "--suite", str(suite), "--inventory", str(inv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    hist = suite.parent / "reports" / "history"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline - 100 and proc.poll() is None:   # ~20 s in: sessions are running
        time.sleep(0.5)
    while not _runners_of(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)                                                # interrupt a session, not a gap
    assert proc.poll() is None and _runners_of(tmp_path)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err[-1500:]
    assert took < 2.0, f"regress took {took:.1f} s to stop"
    assert "Traceback" not in err and "interrupted" in err
    time.sleep(0.3)
    assert _runners_of(tmp_path) == []
    r = H.runs(hist)
    assert len(r) == 1 and r["status"].item() in ("partial", "failed") and "interrupted" in r["error"].item()
