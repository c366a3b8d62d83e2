"""`edgelr bench` takes the device lock that `regress` takes: a second measurement of a busy device waits
(and says so) instead of sharing the device; `--no-lock` skips the lock for experts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.local_device import write_local_inventory

from edgelr.bench.lock import device_lock

PY = sys.executable
MODEL = Path(__file__).resolve().parents[1] / "edgelr" / "data" / "noise_probe.tflite"
CODE = "import sys; from edgelr.cli.main import main; sys.argv = ['edgelr', *sys.argv[1:]]; main()"


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    inv = write_local_inventory(tmp_path / "inventory.toml", "box")
    return subprocess.Popen([PY, "-c", CODE, "bench", str(MODEL), "--device", "box", "--inventory", str(inv),
                             "--sessions", "1", "--runs", "3", "--no-history", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EDGELR_LOCK_DIR": str(tmp_path / "locks")})


@pytest.mark.timeout(180)
def test_bench_waits_for_the_device_lock_and_no_lock_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELR_LOCK_DIR", str(tmp_path / "locks"))
    with device_lock("box"):              # another run measures the device
        waiting = _start(tmp_path)
        free = _start(tmp_path, "--no-lock")
        out_free, err_free = free.communicate(timeout=150)
        assert free.returncode == 0, err_free[-1500:]
        assert waiting.poll() is None     # still waiting after the other one finished a whole run
    out, err = waiting.communicate(timeout=150)
    assert waiting.returncode == 0, err[-1500:]
    assert "device box: busy" in err and "busy" not in err_free
    assert "noise_probe" in out and "noise_probe" in out_free


@pytest.mark.timeout(60)
def test_ctrl_c_while_waiting_for_the_lock_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELR_LOCK_DIR", str(tmp_path / "locks"))
    with device_lock("box"):
        proc = _start(tmp_path)
        deadline = time.monotonic() + 40
        seen = ""
        while "busy" not in seen and time.monotonic() < deadline:   # wait until it is waiting
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert "busy" in seen
        proc.send_signal(2)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
