"""`edgelr bench` / `edgelr devices`: no TensorFlow import, help, devices list/check, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PY = sys.executable

# Runs the CLI in-process in a fresh interpreter and reports which heavy modules it loaded.
PROBE = """
import sys
from edgelr.cli.main import main
sys.argv = ['edgelr', *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
loaded = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization'})
print('LOADED=' + ','.join(loaded), file=sys.stderr)
sys.exit(code)
"""


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-c", PROBE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def loaded(res: subprocess.CompletedProcess[str]) -> str:
    return res.stderr.rsplit("LOADED=", 1)[1].strip()


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    inv = tmp_path / "inventory.toml"
    inv.write_text(f'[devices.testbox]\ntransport = "local"\ntarget = "host"\npython = "{PY}"\n'
                   f'workdir = "{tmp_path / "device"}"\n'
                   f'[devices.pi4]\ntransport = "ssh"\ntarget = "rpi4"\nhost = "192.0.2.1"\nuser = "pi"\n')
    return {"EDGELR_INVENTORY": str(inv), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", [["bench", "--help"], ["devices", "--help"], ["devices", "list"], ["--help"]])
def test_no_tensorflow_import(args: list[str], env: dict[str, str]) -> None:
    res = run_cli(*args, env=env)
    assert res.returncode == 0, res.stderr
    assert loaded(res) == "", f"{args} imported {loaded(res)}"


@pytest.mark.timeout(120)
def test_bench_and_check_on_a_device_do_not_import_tensorflow(env: dict[str, str], tmp_path: Path) -> None:
    res = run_cli("devices", "check", "testbox", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert loaded(res) == ""
    report = json.loads(res.stdout)
    assert report["ready"] is True and report["reachable"] is True
    assert report["program"]["tool"] == "litert_runner"
    assert report["program"]["version"].startswith("litert_runner 1 (ai-edge-litert 2.")
    assert report["cores"] == os.cpu_count() and report["os"] == "Linux"
    # a failing bench still must not pull TensorFlow in (corrupt model: runs the whole path up to the runner)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 32)
    res = run_cli("bench", str(bad), "--device", "testbox", "--runs", "2", env=env)
    assert res.returncode == 1 and loaded(res) == ""


def test_edgelr_help_wall_time(env: dict[str, str]) -> None:
    t0 = time.perf_counter()
    res = subprocess.run([str(Path(PY).parent / "edgelr"), "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env})
    wall = time.perf_counter() - t0
    print(f"edgelr --help wall time: {wall:.2f} s")
    assert res.returncode == 0 and "bench" in res.stdout
    assert wall < 8.0, f"edgelr --help took {wall:.1f} s (TensorFlow alone takes ~10 s to import)"


def test_bench_help_lists_the_options() -> None:
    from click.testing import CliRunner

    from edgelr.cli.bench import bench

    res = CliRunner().invoke(bench, ["--help"])
    assert res.exit_code == 0
    for opt in ("--device", "--inventory", "--threads", "--runs", "--warmup", "--sessions", "--max-time", "--cooldown-c", "--out",
                "--json", "--trust-new-host"):
        assert opt in res.output


def test_devices_list(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from edgelr.cli.devices import devices

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    res = CliRunner().invoke(devices, ["list", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    names = {d["name"]: d for d in data["devices"]}
    assert sorted(names) == ["local", "pi4", "testbox"]
    assert names["pi4"]["address"] == "pi@192.0.2.1:22" and names["pi4"]["transport"] == "ssh"
    assert names["local"]["source"] == "built-in"
    res = CliRunner().invoke(devices, ["list"])
    assert res.exit_code == 0 and "testbox" in res.output and "this machine" in res.output


def test_cli_errors_are_one_line(env: dict[str, str], tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    res = run_cli("bench", str(model), "--device", "nosuch", env=env)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("LOADED=")]
    assert lines == [f"edgelr: error: unknown device 'nosuch'; known devices: local, pi4, testbox "
                     f"(inventory: {env['EDGELR_INVENTORY']})"]
    res = run_cli("bench", str(model), "--out", "x.txt", env=env)
    assert res.returncode == 2 and "expected a .parquet or .csv" in res.stderr
    res = run_cli("bench", str(tmp_path / "missing.tflite"), "--device", "testbox", env=env)
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_devices_check_of_a_device_without_litert(env: dict[str, str], tmp_path: Path) -> None:
    fake_py = tmp_path / "python3"
    fake_py.write_text("#!/bin/sh\necho \"ERROR: ai-edge-litert is not installed for $0\" >&2\nexit 3\n")
    fake_py.chmod(0o755)
    inv = tmp_path / "bare.toml"
    inv.write_text(f'[devices.bare]\ntransport = "local"\npython = "{fake_py}"\nworkdir = "{tmp_path / "d"}"\n')
    res = run_cli("devices", "check", "bare", "--inventory", str(inv), env=env)
    assert res.returncode == 1
    assert "reachable       yes" in res.stdout and "NOT ready" in res.stdout
    assert "pip install ai-edge-litert" in res.stderr
