"""Devices from a real labgrid coordinator (labgrid 26.0.1), started by these tests.

The lab: ``labgrid-coordinator`` on the host side of lab host 0's veth pair, and two "lab hosts", each a
network namespace running a real OpenSSH sshd and a real ``labgrid-exporter`` that exports the sshd as
a ``NetworkService`` (group ``rpi4-a`` on ``lab0``, ``rpi4-b`` on ``lab1``). Places ``rpi4-a`` and
``rpi4-b`` (tag ``board=rpi4``) match them. edgelr reserves and acquires places through the coordinator
and reaches the boards with its own SSH transport (host keys verified from a known_hosts file). The
benchmark on the "board" is edgelr's runner with this venv's LiteRT on the small model edgelr ships.

A third exporter on this host (loopback) exports a loopback sshd as place ``pixel-a``: the lab host of a
phone (the protocol-level adbd STAND-IN of tests/adb_standin.py behind a real adb server), reached
through a port forwarded over that SSH connection.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from device_agents.labgrid import LabClient, LabgridTransport
from edgelr.errors import DeviceError, Interrupted
from tests.sshd import SshdServer, _free_port, start_sshd

EDGELR = [sys.executable, "-m", "edgelr.cli.main"]
BIN = Path(sys.executable).parent
MODEL = Path(__file__).parent.parent / "edgelr" / "data" / "noise_probe.tflite"


@dataclass
class Lab:
    coordinator: str
    hosts: list[SshdServer]
    key: Path
    known_hosts: Path
    dir: Path
    procs: list[subprocess.Popen[bytes]]

    def client(self) -> LabClient:
        return LabClient(self.coordinator, timeout=5.0)

    def places(self) -> dict[str, tuple[str, str | None, str | None]]:
        c = self.client()
        try:
            return {p.name: (p.state, p.acquired, p.reservation) for p in c.places()}
        finally:
            c.close()

    def wait_free(self, timeout: float = 10.0) -> dict[str, tuple[str, str | None, str | None]]:
        deadline = time.monotonic() + timeout
        while True:
            places = self.places()
            if all(s == "free" for s, _, _ in places.values()) or time.monotonic() > deadline:
                return places
            time.sleep(0.2)


def _outside_ip(server: SshdServer) -> str:
    """The host side of the lab host's veth pair (10.a.b.1 for a lab host at 10.a.b.2)."""
    return server.host.rsplit(".", 1)[0] + ".1"


def _exporter(lab_dir: Path, name: str, group: str, host: str, port: int, coordinator: str,
              netns: str | None) -> subprocess.Popen[bytes]:
    cfg = lab_dir / f"{name}.yaml"
    cfg.write_text(f"{group}:\n  NetworkService:\n    address: {host}\n    port: {port}\n    username: root\n")
    argv = [str(BIN / "labgrid-exporter"), "-c", coordinator, "-n", name, "--hostname", host, str(cfg)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    log = open(lab_dir / f"{name}.log", "wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    d = tmp_path_factory.mktemp("lab")
    hosts: list[SshdServer] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            hosts.append(start_sshd(d / f"lab{i}", netns=True))
        hosts.append(start_sshd(d / "phonehost"))       # the phone's lab host, on loopback
        # one client key for the lab, one known_hosts file holding every lab host's key
        for h in hosts[1:]:
            shutil.copy(hosts[0].client_key.with_suffix(".pub"), h.dir / "authorized_keys")
        known = d / "known_hosts"
        known.write_text("".join(h.host_key_line() for h in hosts))
        coord_ip, port = _outside_ip(hosts[0]), _free_port()
        coordinator = f"{coord_ip}:{port}"
        # lab host 1 reaches the coordinator at lab host 0's outside address through its own veth
        subprocess.run(["ip", "netns", "exec", hosts[1].netns or "", "ip", "route", "add", f"{coord_ip}/32",
                        "via", _outside_ip(hosts[1])], check=True, capture_output=True)
        (d / "coordinator").mkdir()
        procs.append(subprocess.Popen([str(BIN / "labgrid-coordinator"), "-l", coordinator], cwd=d / "coordinator",
                                      stdout=open(d / "coordinator.log", "wb"), stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}))   # its log is read
        deadline = time.monotonic() + 30
        client = None
        while client is None:     # an exporter that cannot reach the coordinator exits: wait for it first
            try:
                client = LabClient(coordinator, timeout=5.0)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        exporters = {f"lab{i}": (f"lab{i}", group, h.host, h.port, coordinator, h.netns)
                     for i, (h, group) in enumerate(zip(hosts[:2], ("rpi4-a", "rpi4-b")))}
        exporters["lab2"] = ("lab2", "pixel-a", hosts[2].host, hosts[2].port, coordinator, None)
        running = {name: _exporter(d, *args) for name, args in exporters.items()}
        procs.extend(running.values())
        try:
            want = {"lab0/rpi4-a/NetworkService/NetworkService", "lab1/rpi4-b/NetworkService/NetworkService",
                    "lab2/pixel-a/NetworkService/NetworkService"}
            while not want <= set(client.resources()):
                assert time.monotonic() < deadline, f"exporters did not register: {client.resources()}"
                for name, p in running.items():   # supervise, as a lab host would (exit 100: lost coordinator)
                    if p.poll() is not None:
                        running[name] = _exporter(d, *exporters[name])
                        procs.append(running[name])
                time.sleep(0.2)
            for name, exporter in (("rpi4-a", "lab0"), ("rpi4-b", "lab1"), ("pixel-a", "lab2")):
                client.add_place(name, [f"{exporter}/{name}/NetworkService"],
                                 {"board": "pixel7" if name.startswith("pixel") else "rpi4"})
        finally:
            client.close()
        yield Lab(coordinator, hosts, hosts[0].client_key, known, d, procs)
    finally:
        _stop(procs)
        for h in hosts:
            h.stop()


def _inventory(lab: Lab, path: Path, coordinator: str | None = None, **extra: str) -> Path:
    common = (f'key = "{lab.key}"\nknown_hosts = "{lab.known_hosts}"\npython = "{sys.executable}"\n'
              f'target = "host"\n' + "".join(f"{k} = {v}\n" for k, v in extra.items()))
    path.write_text(f'[lab]\ncoordinator = "{coordinator or lab.coordinator}"\n\n'
                    f'[devices.pi]\ntransport = "labgrid"\ntags = {{board = "rpi4"}}\n'
                    f'workdir = "{path.parent / "w-pi"}"\n{common}\n'
                    f'[devices.pi-a]\ntransport = "labgrid"\nplace = "rpi4-a"\n'
                    f'workdir = "{path.parent / "w-pia"}"\n{common}')
    return path


def _env(tmp: Path, name: str = "h") -> dict[str, str]:
    """A private HOME, lock dir and history: each call is a separate "runner" (only labgrid is shared)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELR_", "XDG_", "SSH_AUTH_SOCK", "LG_"))}
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / "data"),
               XDG_CACHE_HOME=str(home / ".cache"), EDGELR_LOCK_DIR=str(home / "locks"))
    return env


def _raised(fn: Callable[[], object]) -> list[BaseException]:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        return [exc]
    return []


def _suite(d: Path, device: str, sessions: int = 2, runs: int = 3) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL, d / "probe.tflite")
    (d / "suite.toml").write_text(f'[suite]\nname = "lab"\nsessions = {sessions}\nruns = {runs}\nconfirm = false\n'
                                  f'history = "history"\n\n[[models]]\nname = "probe"\npath = "probe.tflite"\n\n'
                                  f'[[devices]]\nname = "{device}"\n\n[thresholds]\nlatency = "50%"\n')
    return d / "suite.toml"


def _edgelr(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGELR, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.timeout(120)
def test_devices_list_shows_places_and_bench_runs_through_a_place(lab: Lab, tmp_path: Path) -> None:
    inv = _inventory(lab, tmp_path / "inv.toml")
    env = _env(tmp_path)
    listed = _edgelr(env, "devices", "list", "--inventory", str(inv), "--json")
    assert listed.returncode == 0, listed.stderr
    places = {p["place"]: p for p in json.loads(listed.stdout)["lab_places"]}
    assert places["rpi4-a"]["state"] == "free" and places["rpi4-a"]["tags"] == "board=rpi4"
    assert places["rpi4-a"]["devices"] == "pi, pi-a" and places["rpi4-b"]["devices"] == "pi"
    assert places["pixel-a"]["devices"] == ""

    res = _edgelr(env, "bench", str(MODEL), "--device", "pi-a", "--inventory", str(inv), "--runs", "3",
                  "--sessions", "1", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)           # stdout is edgelr's JSON only: labgrid printed nothing there
    (summary,) = data["summary"]
    assert summary["device"] == "pi-a" and summary["samples"] == 3
    assert {r["transport"] for r in data["rows"]} == {"labgrid"}
    assert "acquired labgrid place rpi4-a" in res.stderr and "Traceback" not in res.stderr
    # it really ran on lab host 0 (its sshd logged the login) and the place is free again
    assert "Accepted publickey" in (lab.hosts[0].dir / "sshd.log").read_text()
    assert lab.wait_free() == {n: ("free", None, None) for n in ("pixel-a", "rpi4-a", "rpi4-b")}


@pytest.mark.timeout(150)
def test_two_benches_of_a_tagged_device_run_at_once_on_two_places(lab: Lab, tmp_path: Path) -> None:
    """The place is the lock (``Transport.reserves``): two benches of the tagged device from one runner (one
    lock dir) are not serialized by edgelr's per-host device lock; the coordinator gives each a place."""
    inv = _inventory(lab, tmp_path / "inv.toml")
    env = _env(tmp_path)
    procs = [subprocess.Popen([*EDGELR, "bench", str(MODEL), "--device", "pi", "--inventory", str(inv), "--runs",
                               "300", "--sessions", "3", "--no-history", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    errs = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        errs.append(err)
    assert not any("device pi: busy" in e for e in errs), errs
    acquired = sorted(next(line.split("acquired labgrid place ")[1].split()[0] for line in e.splitlines()
                           if "acquired labgrid place " in line) for e in errs)
    assert acquired == ["rpi4-a", "rpi4-b"], errs
    assert lab.wait_free() == {n: ("free", None, None) for n in ("pixel-a", "rpi4-a", "rpi4-b")}


@pytest.mark.timeout(150)
def test_regress_spreads_over_matching_places_and_two_runs_take_turns(lab: Lab, tmp_path: Path) -> None:
    inv = _inventory(lab, tmp_path / "inv.toml")
    held = lab.client()                    # someone else holds rpi4-a when both runs start
    lease = held.lease(place="rpi4-a")
    # run A: device "pi" (board=rpi4) -> one run per matching place, in parallel
    # run B, from another "runner" (own lock dir and history): it wants place rpi4-a too
    a = subprocess.Popen([*EDGELR, "regress", "--suite", str(_suite(tmp_path / "a", "pi")), "--inventory",
                          str(inv), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(tmp_path, "a"))
    b = subprocess.Popen([*EDGELR, "regress", "--suite", str(_suite(tmp_path / "b", "pi-a")), "--inventory",
                          str(inv), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(tmp_path, "b"))
    try:
        deadline = time.monotonic() + 60
        while sum(r["state"] == "waiting" and r["filter"] == {"name": "rpi4-a"} for r in held.reservations()) < 2:
            assert time.monotonic() < deadline and a.poll() is None and b.poll() is None
            time.sleep(0.2)
    finally:
        held.release(lease)
        held.close()
    out_a, err_a = a.communicate(timeout=120)
    out_b, err_b = b.communicate(timeout=120)
    assert a.returncode == 0, err_a[-2000:]
    assert b.returncode == 0, err_b[-2000:]
    assert {c["device"] for c in json.loads(out_a)["comparisons"]} == {"pi@rpi4-a", "pi@rpi4-b"}
    assert {c["device"] for c in json.loads(out_b)["comparisons"]} == {"pi-a"}
    assert "[pi@rpi4-a] place rpi4-a is busy; waiting" in err_a and "[pi-a] place rpi4-a is busy; waiting" in err_b
    assert "Traceback" not in err_a + err_b and "ERROR" not in err_a + err_b
    # the coordinator's own log: rpi4-a went to one run at a time (acquired, released, acquired, released)
    events = [line.split(": place ")[1].split()[0] for line in (lab.dir / "coordinator.log").read_text().splitlines()
              if line.startswith("rpi4-a: place ")]
    assert events[-6:] == ["acquired", "released"] * 3, events
    assert lab.wait_free()["rpi4-a"] == ("free", None, None)


@pytest.mark.timeout(60)
def test_coordinator_down_is_one_clear_line(lab: Lab, tmp_path: Path) -> None:
    inv = _inventory(lab, tmp_path / "inv.toml", coordinator=f"127.0.0.1:{_free_port()}")
    t0 = time.monotonic()
    res = _edgelr(_env(tmp_path), "bench", str(MODEL), "--device", "pi-a", "--inventory", str(inv), "--runs", "3")
    took = time.monotonic() - t0
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "labgrid coordinator 127.0.0.1:" in lines[0] and "Traceback" not in res.stderr
    assert res.stdout == "" and took < 20
    # a coordinator that accepts the connection but never answers (hung): one error after the timeout
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(1)
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match=r"labgrid coordinator 127\.0\.0\.1:\d+: connect failed \(no answer "
                                              r"within 1 s\)"):
            LabClient(f"127.0.0.1:{hung.getsockname()[1]}", timeout=1.0)
        assert time.monotonic() - t0 < 4


@pytest.mark.parametrize("table, message", [
    ('transport = "labgrid"\n', "names no place; add place"),
    ('transport = "labgrid"\nplace = "a"\ntags = {board = "rpi4"}\n', "set place or tags, not both"),
    ('transport = "labgrid"\ntags = {board = 4}\n', "must be strings"),
])
def test_bad_labgrid_entries_are_one_clear_line(tmp_path: Path, table: str, message: str) -> None:
    from device_agents.inventory import load_inventory
    from edgelr.errors import InventoryError

    inv = tmp_path / "inv.toml"
    inv.write_text(f'[lab]\ncoordinator = "127.0.0.1:1"\n\n[devices.x]\n{table}')
    with pytest.raises(InventoryError, match=message):
        load_inventory(inv)
    inv.write_text('[devices.x]\ntransport = "labgrid"\nplace = "a"\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LG_COORDINATOR", raising=False)
        with pytest.raises(InventoryError, match=r"no coordinator is set; add \[lab\] coordinator"):
            load_inventory(inv)
        mp.setenv("LG_COORDINATOR", "lab:20408")
        assert load_inventory(inv)["x"].coordinator == "lab:20408"


@pytest.mark.timeout(90)
def test_ctrl_c_releases_the_place_and_a_busy_place_times_out(lab: Lab, tmp_path: Path) -> None:
    inv = _inventory(lab, tmp_path / "inv.toml", place_wait="1.5")
    proc = subprocess.Popen([*EDGELR, "bench", str(MODEL), "--device", "pi-a", "--inventory", str(inv),
                             "--runs", "100000", "--sessions", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path, "long"))
    deadline = time.monotonic() + 40
    while lab.places()["rpi4-a"][0] != "acquired":
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    # meanwhile another runner wanting the place gives up after place_wait, saying who holds it
    other = LabgridTransport(lab.coordinator, place="rpi4-a", place_wait=1.5, key=str(lab.key),
                             known_hosts=str(lab.known_hosts), device="other", progress=lambda _m: None)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=r"place rpi4-a stayed busy for 1.5 s \(rpi4-a \(acquired by "):
        other.run(["true"], timeout=10)
    assert time.monotonic() - t0 < 5
    other.close()
    # what regress does on Ctrl-C: close() from the main thread while a worker waits for the place
    waiting = LabgridTransport(lab.coordinator, place="rpi4-a", place_wait=60, key=str(lab.key),
                               known_hosts=str(lab.known_hosts), device="waiting", progress=lambda _m: None)
    outcome: list[BaseException] = []
    worker = threading.Thread(target=lambda: outcome.extend(_raised(lambda: waiting.run(["true"], timeout=10))))
    worker.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    waiting.close()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - t0 < 3
    assert len(outcome) == 1 and isinstance(outcome[0], Interrupted)
    held = lab.client()
    try:    # its reservation was cancelled: only the running bench's remains
        assert [r["state"] for r in held.reservations() if r["filter"] == {"name": "rpi4-a"}] == ["acquired"]
    finally:
        held.close()
    time.sleep(1.0)          # the benchmark is running on the board now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-1500:]
    assert lab.wait_free(5)["rpi4-a"] == ("free", None, None)


@pytest.mark.timeout(120)
def test_phone_on_a_lab_host_through_forwarded_adb(lab: Lab, tmp_path: Path) -> None:
    from tests.adb_standin import AdbdStandin, AdbServer
    from tests.fake_benchmark_model import write_launcher

    if shutil.which("adb") is None:
        pytest.skip("Debian package 'adb' is not installed (make test installs it)")
    server = AdbServer(tmp_path / "adbhome")          # the lab host's adb server (on loopback)
    phone = AdbdStandin(tmp_path / "phone")
    try:
        assert "connected" in server.connect(phone.serial)
        bm = write_launcher(tmp_path / "benchmark_model")
        inv = tmp_path / "inv.toml"
        inv.write_text(f'[lab]\ncoordinator = "{lab.coordinator}"\n\n[devices.pixel]\ntransport = "labgrid"\n'
                       f'place = "pixel-a"\nos = "android"\ntarget = "pixel7"\nserial = "{phone.serial}"\n'
                       f'adb_port = {server.port}\nkey = "{lab.key}"\nknown_hosts = "{lab.known_hosts}"\n'
                       f'benchmark_binary = "/data/local/tmp/edgelr/bin/{{abi}}/benchmark_model"\n'
                       f'benchmark_binary_local = "{bm}"\n')
        model = Path(__file__).parent / "fixtures" / "android" / "tiny_mlp.tflite"
        env = _env(tmp_path)
        res = _edgelr(env, "bench", str(model), "--device", "pixel", "--inventory", str(inv), "--runs", "3",
                      "--sessions", "1", "--json")
        assert res.returncode == 0, res.stderr[-2000:]
        rows = {r["metric"]: r for r in json.loads(res.stdout)["rows"] if r["sample"] == -1}
        lat = rows["latency_avg"]
        assert (lat["device"], lat["transport"], lat["target"], lat["tool"]) == ("pixel", "labgrid", "pixel7",
                                                                                "android_bench")
        assert lat["value"] > 0 and rows["avg_power"]["value"] > 0       # the stand-in's ODPM rails
        assert "acquired labgrid place pixel-a" in res.stderr
        # the adb traffic went through the phone host's sshd (a direct-tcpip forward to its adb server):
        # no command ran over that SSH connection, yet it carried the pushed model and more
        log = (lab.hosts[2].dir / "sshd.log").read_text()
        received = [int(m) for m in re.findall(r"Transferred: sent \d+, received (\d+) bytes", log)]
        assert "Accepted publickey" in log and received and max(received) > model.stat().st_size
        # ADB_SERVER_SOCKET (or adb_server = "tcp:HOST:PORT"): the host's adb server directly, no forward
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ADB_SERVER_SOCKET", f"tcp:127.0.0.1:{server.port}")
            t = LabgridTransport(lab.coordinator, place="pixel-a", os="android", serial=phone.serial,
                                 key=str(lab.key), known_hosts=str(lab.known_hosts), progress=lambda _m: None)
            try:
                assert t.run(["echo", "hi"], timeout=20).stdout.strip() == "hi"
                assert t._forward is None and t.place_name == "pixel-a"
                assert lab.places()["pixel-a"][0] == "acquired"
            finally:
                t.close()
        assert lab.wait_free()["pixel-a"] == ("free", None, None)
    finally:
        phone.stop()
        server.stop()
