"""End to end: `edgelr bench` through a real sshd, the real LiteRT runtime on the "device" side.

The device's Python is this venv's (it has ai-edge-litert); the model is a tiny Keras MLP converted
with TensorFlow in a fixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sshd import SshdServer, sshd_server, write_inventory  # noqa: F401  (fixture)

EDGELR = [sys.executable, "-m", "edgelr.cli.main"]
DEVICE_PYTHON = sys.executable  # the venv's python: has ai-edge-litert, like a prepared Pi

_MAKE_MODEL = """
import sys
from edgelr.tfcompat import tf, keras2
k = keras2()
k.utils.set_random_seed(0)
m = k.Sequential([k.layers.Input((16,)), k.layers.Dense(32, activation="relu"), k.layers.Dense(4)])
open(sys.argv[1], "wb").write(tf().lite.TFLiteConverter.from_keras_model(m).convert())
"""


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 -> 32 -> 4 float32 MLP as .tflite (built with TensorFlow in a subprocess)."""
    out = tmp_path_factory.mktemp("model") / "tiny.tflite"
    proc = subprocess.run([sys.executable, "-c", _MAKE_MODEL, str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: a private HOME/XDG so no real ~/.ssh, inventory or history is used."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELR_", "XDG_", "SSH_AUTH_SOCK"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_CACHE_HOME=str(home / ".cache"))
    return env


def _bench(model: Path, inv: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGELR, "bench", str(model), "--device", "sshdev", "--inventory", str(inv), "--runs", "5",
                           "--sessions", "1",
                           "--json", *extra], capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_edgelr_bench_over_ssh_with_real_litert(sshd_server: SshdServer, tiny_tflite: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "device work dir"
    inv = write_inventory(tmp_path / "inv.toml", sshd_server, python=DEVICE_PYTHON, workdir=str(workdir))
    env = _env(tmp_path)

    proc = _bench(tiny_tflite, inv, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    (summary,) = data["summary"]
    assert (summary["model"], summary["device"], summary["samples"], summary["repeats"]) == ("tiny", "sshdev", 5, 1)
    assert summary["avg_ms"] > 0 and summary["peak_mb"] > 0
    rows = data["rows"]
    sha = hashlib.sha256(tiny_tflite.read_bytes()).hexdigest()
    assert {r["transport"] for r in rows} == {"ssh"} and {r["model_sha256"] for r in rows} == {sha}
    assert {r["tool"] for r in rows} == {"litert_runner"}
    latency = sorted((r["sample"], r["value"]) for r in rows if r["metric"] == "latency")
    assert [s for s, _ in latency] == [0, 1, 2, 3, 4] and all(v > 0 for _, v in latency)
    # the model really went through SFTP into the device's workdir, byte for byte
    on_device = list((workdir / "models").glob("*tiny.tflite"))
    assert len(on_device) == 1 and on_device[0].read_bytes() == tiny_tflite.read_bytes()
    assert "tiny: pushed" in proc.stderr

    again = _bench(tiny_tflite, inv, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tiny: already on the device" in again.stderr  # sha256 matched: not sent again


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_edgelr_bench_refuses_unknown_host_until_trusted(sshd_server: SshdServer, tiny_tflite: Path,
                                                         tmp_path: Path) -> None:
    kh = tmp_path / "kh"
    kh.write_text("")
    inv = write_inventory(tmp_path / "inv.toml", sshd_server, python=DEVICE_PYTHON, workdir=str(tmp_path / "w"),
                          known_hosts=str(kh))
    env = _env(tmp_path)
    refused = _bench(tiny_tflite, inv, env)
    assert refused.returncode == 1
    assert "not known" in refused.stderr and "--trust-new-host" in refused.stderr
    assert refused.stdout == "" and kh.read_text() == ""

    trusted = _bench(tiny_tflite, inv, env, "--trust-new-host")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert sshd_server.host_key_line().split(None, 1)[1].strip() in kh.read_text()
    assert _bench(tiny_tflite, inv, env).returncode == 0  # remembered
