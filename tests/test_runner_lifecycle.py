"""Benchmark processes are never left running: real processes, real shells, a real sshd.

* the on-device wrapper (``device_agents/procs.py``) under dash, busybox ash and mksh: stdin ending
  (host gone), a lapsed heartbeat lease (blackholed link) and ``kill -9`` of the wrapper itself each stop
  the benchmark program, which runs in its own process group;
* ``kill -9`` of ``edgelr bench`` / ``edgelr regress`` on a local device and of ``edgelr bench`` over SSH
  leaves no runner; so does a TCP connection dropped under a run, a run timeout, and a blackholed link
  (netns); a command cut off by a lost link is stopped when the transport reconnects;
* a leftover runner whose pid file names a dead wrapper is stopped before the next run, and said so.

Processes are found through ``/proc`` (the test sshd runs on this host, so its sessions are visible).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from device_agents.local import LocalTransport
from device_agents.procs import RUNWRAP_SH, parse_leftovers, push_wrapper, run_dir, wrap_command, wrapper_options
from device_agents.ssh import SSHTransport
from edgelr.errors import DeviceError
from tests.sshd import SshdServer, sshd_netns, sshd_server, write_inventory  # noqa: F401  (fixtures)

PY = sys.executable
MODEL = Path(__file__).parent / "fixtures" / "android" / "tiny_mlp.tflite"
EDGELR = [PY, "-m", "edgelr.cli.main"]
SHELLS = [["dash"], ["busybox", "sh"], ["mksh"]]
SLEEPER = "import time; time.sleep(600)"


def alive(text: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``text``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state not in ("Z", "X"):
            out.append(int(entry))
    return out


def wait_for(cond: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def benchmarking(runner: str) -> bool:
    """True once a runner matching ``runner`` is in its timed loop: it has mapped the model and had 1.5 s
    more. Killing edgelr earlier would let the runner die of SIGPIPE at its next log line (XNNPACK's
    INFO on stderr) and hide whether the wrapper stopped it."""
    for pid in alive(runner):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if ".tflite" in maps:
            time.sleep(1.5)
            return bool(alive(runner))
    return False


def _shell(shell: list[str]) -> list[str]:
    if not shutil.which(shell[0]):
        pytest.skip(f"{shell[0]} not installed (make test installs it)")
    return shell


def _wrapper(tmp_path: Path) -> Path:
    wrap = tmp_path / "edgelr_memwrap.sh"
    wrap.write_text(RUNWRAP_SH)
    return wrap


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A private HOME/XDG for CLI runs (no real inventory, history or ~/.ssh)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELR_", "XDG_", "SSH_AUTH_SOCK"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_CACHE_HOME=str(home / ".cache"), EDGELR_TARGETS=os.environ.get("EDGELR_TARGETS", ""), **extra)
    return env


# --- the wrapper on its own, under each POSIX shell ----------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_wrapper_runs_program_in_own_group_and_stops_it_when_stdin_ends(tmp_path: Path, shell: list[str]) -> None:
    sh, wrap, piddir = _shell(shell), _wrapper(tmp_path), tmp_path / "run"
    marker = str(tmp_path / "prog-stdin")
    proc = subprocess.Popen([*sh, str(wrap), "--piddir", str(piddir), "--watch-stdin", "0.05", PY, "-c", SLEEPER,
                             marker], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: list(piddir.glob("bench.*.pid")) and alive(f"-c {SLEEPER} {marker}"), 10)
        (pidfile,) = piddir.glob("bench.*.pid")
        fields = dict(kv.split("=") for kv in pidfile.read_text().split())
        prog = int(fields["pgid"])
        assert int(fields["wrapper"]) == proc.pid and fields["start"].isdigit()
        assert os.getpgid(prog) == prog != os.getpgid(proc.pid)      # its own process group
        assert proc.poll() is None
        assert proc.stdin is not None
        proc.stdin.close()                                            # the host went away
        assert proc.wait(timeout=5) == 143
        assert wait_for(lambda: not alive(marker), 3), "the program outlived the end of stdin"
        assert not pidfile.exists()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_wrapper_lease_stops_program_when_heartbeats_stop(tmp_path: Path, shell: list[str]) -> None:
    sh, wrap = _shell(shell), _wrapper(tmp_path)
    marker = str(tmp_path / "prog-lease")
    proc = subprocess.Popen([*sh, str(wrap), "--piddir", str(tmp_path / "run"), "--lease", "0.6", "0", PY, "-c",
                             SLEEPER, marker], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:                           # heartbeats: it keeps running
            proc.stdin.write(b"\n")
            proc.stdin.flush()
            time.sleep(0.15)
        assert proc.poll() is None and alive(marker)
        t_silent = time.monotonic()                                   # a blackholed link: stdin open, silent
        assert proc.wait(timeout=5) == 143
        assert time.monotonic() - t_silent < 2.5                      # within 2 leases (+ the stop)
        assert wait_for(lambda: not alive(marker), 3)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_guard_stops_program_after_kill_9_of_the_wrapper(tmp_path: Path, shell: list[str]) -> None:
    sh, wrap = _shell(shell), _wrapper(tmp_path)
    marker = str(tmp_path / "prog-guard")
    proc = subprocess.Popen([*sh, str(wrap), "0.05", PY, "-c", SLEEPER, marker], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: alive(f"-c {SLEEPER} {marker}"), 10)
        os.killpg(proc.pid, signal.SIGKILL)                           # the wrapper and its whole group
        proc.wait(timeout=5)
        assert wait_for(lambda: not alive(marker), 4), "the program outlived kill -9 of its wrapper"
    finally:
        proc.kill()


@pytest.mark.timeout(30)
def test_wrapper_keeps_the_exit_status_and_samples_vmhwm(tmp_path: Path) -> None:
    wrap = _wrapper(tmp_path)
    prog = [PY, "-c", "import time; b = bytearray(30 << 20); time.sleep(0.4); print('ok'); raise SystemExit(7)"]
    res = subprocess.run(["dash", str(wrap), "--piddir", str(tmp_path / "run"), "0.05", *prog], capture_output=True,
                         text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert (res.returncode, res.stdout) == (7, "ok\n")
    assert int(res.stderr.rsplit("EDGELR_VMHWM_KB=", 1)[1]) > 30 * 1024
    assert list((tmp_path / "run").glob("bench.*")) == []             # pid file removed
    quiet = subprocess.run(["dash", str(wrap), "0", "sh", "-c", "exit 3"], capture_output=True, text=True, timeout=10)
    assert (quiet.returncode, quiet.stderr) == (3, "")                 # interval 0: no sampling, no line


def test_wrapper_options_follow_the_transport_heartbeat() -> None:
    local = LocalTransport()
    assert wrapper_options(local, "/w/") == ["--piddir", "/w/run", "--watch-stdin"]
    ssh = SSHTransport(host="127.0.0.1", port=22, user="u", heartbeat=2.0)
    assert wrapper_options(ssh, "/w") == ["--piddir", "/w/run", "--lease", "10"]
    assert wrap_command("/w", ["--piddir", "/w/run"], 0.05, ["python3", "/w/runner.py"]) == (
        "exec sh /w/edgelr_memwrap.sh --piddir /w/run 0.05 python3 /w/runner.py")
    assert [x.stopped for x in parse_leftovers("stopped 12 python3 /w/runner.py\nstale /w/run/bench.1.pid\n"
                                               "running 40 41 python3 /w/runner.py --graph=x\n")] == [True, False]


# --- leftovers of an earlier run ----------------------------------------------------------------------------
def _leftover(workdir: Path) -> subprocess.Popen[bytes]:
    """A runner left behind: its own session, a command line naming the workdir, a pid file whose wrapper
    is dead (what a wrapper killed together with its guard, or a host crash, leaves)."""
    prog = subprocess.Popen([PY, "-c", SLEEPER, f"{workdir}/runner.py", "--graph=leftover"], start_new_session=True)
    assert wait_for(lambda: Path(f"/proc/{prog.pid}/stat").exists(), 5)
    start = Path(f"/proc/{prog.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    dead = subprocess.Popen(["true"])
    dead.wait()
    run = Path(run_dir(str(workdir)))
    run.mkdir(parents=True, exist_ok=True)
    (run / f"bench.{dead.pid}.pid").write_text(f"pgid={prog.pid} wrapper={dead.pid} start={start}\n")
    return prog


@pytest.mark.timeout(60)
def test_leftover_runner_is_stopped_before_the_next_run_and_reported(tmp_path: Path) -> None:
    workdir = tmp_path / "dev"
    prog = _leftover(workdir)
    # a live run's program (its wrapper still runs) is reported, never touched
    live_marker = f"{workdir}/runner.py --graph=live"
    live = subprocess.Popen(["sh", str(_wrapper(workdir)), "--piddir", run_dir(str(workdir)), "0", PY, "-c", SLEEPER,
                             live_marker], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: len(list(Path(run_dir(str(workdir))).glob("bench.*.pid"))) == 2, 10)
        inv = tmp_path / "inv.toml"
        inv.write_text(f'[devices.box]\ntransport = "local"\ntarget = "host"\npython = "{PY}"\n'
                       f'workdir = "{workdir}"\n')
        res = subprocess.run([*EDGELR, "bench", str(MODEL), "--device", "box", "--inventory", str(inv), "--runs", "2",
                              "--sessions", "1", "--no-canary", "--no-lock"], capture_output=True, text=True,
                             timeout=50, env=_env(tmp_path))
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"stopped a leftover edgelr benchmark (pid {prog.pid}) from an earlier run" in res.stderr
        assert prog.wait(timeout=5) == -signal.SIGTERM
        assert "another edgelr run is benchmarking on this device" in res.stderr
        assert live.poll() is None and alive(live_marker)
    finally:
        prog.kill()
        os.killpg(live.pid, signal.SIGTERM)
        live.wait(timeout=5)
    assert wait_for(lambda: not alive(str(workdir)), 3)


# --- kill -9 of edgelr: local device ------------------------------------------------------------------------
def _suite(d: Path) -> Path:
    (d / "models").mkdir(parents=True)
    shutil.copyfile(MODEL, d / "models" / "m.tflite")
    (d / "suite.toml").write_text('[suite]\nname = "s"\nruns = 1000000\nsessions = 2\nhistory = "h"\n\n'
                                  '[[models]]\nname = "m"\npath = "models/m.tflite"\n\n[[devices]]\nname = "box"\n')
    return d / "suite.toml"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["bench", "regress"])
def test_kill_9_of_edgelr_leaves_no_local_runner(tmp_path: Path, command: str) -> None:
    workdir = tmp_path / "dev"
    inv = tmp_path / "inv.toml"
    inv.write_text(f'[devices.box]\ntransport = "local"\ntarget = "host"\npython = "{PY}"\nworkdir = "{workdir}"\n')
    if command == "bench":
        argv = ["bench", str(MODEL), "--device", "box", "--inventory", str(inv), "--runs", "1000000",
                "--sessions", "1", "--no-canary", "--no-lock"]
    else:
        argv = ["regress", "--suite", str(_suite(tmp_path / "suite")), "--inventory", str(inv)]
    edgelr = subprocess.Popen([*EDGELR, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=_env(tmp_path))
    runner = f"{workdir}/runner.py --graph="
    try:
        assert wait_for(lambda: benchmarking(runner), 40, 0.1), "the runner never started"
        edgelr.kill()                                                 # kill -9: no handler, no finally
        edgelr.wait(timeout=5)
        assert wait_for(lambda: not alive(str(workdir)), 5), f"left running: {alive(str(workdir))}"
    finally:
        edgelr.kill()
        for pid in alive(str(workdir)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_sigterm_of_edgelr_bench_is_ctrl_c_exit_130_and_stops_the_runner(tmp_path: Path) -> None:
    """Every command treats SIGTERM as Ctrl-C (edgelr.cli.main): bench stops its runner and says so."""
    workdir = tmp_path / "dev"
    inv = tmp_path / "inv.toml"
    inv.write_text(f'[devices.box]\ntransport = "local"\ntarget = "host"\npython = "{PY}"\nworkdir = "{workdir}"\n')
    edgelr = subprocess.Popen([*EDGELR, "bench", str(MODEL), "--device", "box", "--inventory", str(inv), "--runs",
                               "1000000", "--sessions", "1", "--no-canary", "--no-lock", "--no-history"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    runner = f"{workdir}/runner.py --graph="
    try:
        assert wait_for(lambda: benchmarking(runner), 40, 0.1), "the runner never started"
        edgelr.terminate()
        _, err = edgelr.communicate(timeout=15)
        assert edgelr.returncode == 130, err[-2000:]
        assert "interrupted" in err and "Traceback" not in err
        assert wait_for(lambda: not alive(str(workdir)), 5), f"left running: {alive(str(workdir))}"
    finally:
        edgelr.kill()
        for pid in alive(str(workdir)):
            os.kill(pid, signal.SIGKILL)


# --- SSH ----------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_kill_9_of_edgelr_bench_over_ssh_leaves_no_remote_runner(sshd_server: SshdServer, tmp_path: Path) -> None:
    workdir = tmp_path / "remote"
    inv = write_inventory(tmp_path / "inv.toml", sshd_server, python=PY, workdir=str(workdir))
    edgelr = subprocess.Popen([*EDGELR, "bench", str(MODEL), "--device", "sshdev", "--inventory", str(inv),
                               "--runs", "1000000", "--sessions", "1", "--no-canary", "--no-lock"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(tmp_path))
    runner = f"{workdir}/runner.py --graph="
    try:
        assert wait_for(lambda: benchmarking(runner) or edgelr.poll() is not None, 40, 0.1) and alive(runner), (
            edgelr.communicate()[1].decode()[-2000:] if edgelr.poll() is not None else "no runner")
        edgelr.kill()
        edgelr.wait(timeout=5)
        assert wait_for(lambda: not alive(str(workdir)), 5), f"left running on the device: {alive(str(workdir))}"
    finally:
        edgelr.kill()
        edgelr.communicate()


def _ssh_wrapped(t: SSHTransport, workdir: Path, marker: str) -> str:
    push_wrapper(t, str(workdir), timeout=20)
    return wrap_command(str(workdir), wrapper_options(t, str(workdir)), 0.05, [PY, "-c", SLEEPER, marker])


def _run_in_thread(t: SSHTransport, cmd: str, timeout: float) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def go() -> None:
        try:
            t.run(cmd, timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th, errors


@pytest.mark.timeout(60)
def test_dropped_tcp_connection_stops_the_remote_runner(sshd_server: SshdServer, tmp_path: Path) -> None:
    workdir = tmp_path / "remote"
    marker = f"{workdir}/runner.py --graph=drop"
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        th, errors = _run_in_thread(t, _ssh_wrapped(t, workdir, marker), timeout=60)
        assert wait_for(lambda: alive(marker), 10)
        assert t._sock is not None
        t._sock.shutdown(2)                                          # the link drops under the run
        th.join(10)
        assert errors and isinstance(errors[0], DeviceError) and "lost" in str(errors[0])
        assert wait_for(lambda: not alive(str(workdir)), 5), f"left running: {alive(str(workdir))}"


@pytest.mark.timeout(60)
def test_run_timeout_stops_the_wrapped_runner(sshd_server: SshdServer, tmp_path: Path) -> None:
    workdir = tmp_path / "remote"
    marker = f"{workdir}/runner.py --graph=timeout"
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        cmd = _ssh_wrapped(t, workdir, marker)
        with pytest.raises(DeviceError, match="did not finish within 3 s and was stopped"):
            t.run(cmd, timeout=3)
        assert wait_for(lambda: not alive(str(workdir)), 3), f"left running: {alive(str(workdir))}"


@pytest.mark.timeout(60)
def test_command_cut_off_by_a_lost_link_is_stopped_on_reconnect(sshd_server: SshdServer, tmp_path: Path) -> None:
    marker = f"{tmp_path}/plain-sleeper"
    with SSHTransport(**sshd_server.transport_kwargs(), heartbeat=0) as t:
        # no wrapper: nothing on the device watches the link, only the transport can stop it
        th, errors = _run_in_thread(t, f"{PY} -c {SLEEPER!r} {marker} </dev/null", timeout=60)
        assert wait_for(lambda: alive(marker), 10)
        assert t._sock is not None
        t._sock.shutdown(2)
        th.join(10)
        assert errors and isinstance(errors[0], DeviceError)
        time.sleep(0.5)
        assert alive(marker), "sshd stopped it by itself: this test no longer tests the reconnect"
        assert t.run("true", timeout=20).exit_code == 0              # reconnects, stops the cut-off command
        assert wait_for(lambda: not alive(marker), 3)


@pytest.mark.timeout(60)
def test_blackholed_link_lease_stops_the_remote_runner(sshd_netns: SshdServer, tmp_path: Path) -> None:
    workdir = tmp_path / "remote"
    marker = f"{workdir}/runner.py --graph=blackhole"
    t = SSHTransport(**sshd_netns.transport_kwargs(), heartbeat=0.4)  # lease 2 s
    try:
        cmd = _ssh_wrapped(t, workdir, marker)
        assert "--lease 2" in cmd
        th, errors = _run_in_thread(t, cmd, timeout=12)
        assert wait_for(lambda: alive(marker), 10)
        time.sleep(1.5)
        assert alive(marker)                                          # heartbeats keep it going
        sshd_netns.link_down()                                        # packets vanish; sshd notices nothing
        t_down = time.monotonic()
        assert wait_for(lambda: not alive(marker), 8), "the lease did not stop the runner"
        assert time.monotonic() - t_down < 6
        th.join(15)
        assert errors and isinstance(errors[0], DeviceError)
    finally:
        sshd_netns.link_up()
        t.close()
