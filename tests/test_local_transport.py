"""device_agents.local.LocalTransport: commands, deadlines that kill the process group, sha256 push skip."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from device_agents.files import sha256_file
from device_agents.local import LocalTransport
from device_agents.transport import TRANSPORTS
from edgelr.errors import DeviceError


def test_registered_and_runs_argv_and_shell_strings() -> None:
    assert TRANSPORTS["local"] is LocalTransport
    t = LocalTransport()
    res = t.run(["printf", "%s|", "a b", "it's"], timeout=10)
    assert (res.exit_code, res.stdout, res.stderr) == (0, "a b|it's|", "")
    res = t.run("echo out; echo err >&2; exit 3", timeout=10)
    assert (res.exit_code, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert t.run("echo $EDGELR_T", timeout=10, env={"EDGELR_T": "v"}).stdout == "v\n"


@pytest.mark.timeout(30)
def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    t = LocalTransport()
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="timed out after 0.5 s"):
        # a grandchild that would outlive a plain kill of the shell
        t.run(f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.5)
    assert time.monotonic() - t0 < 10
    pid = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{pid}/stat") as fh:  # a zombie awaiting its (killed) parent counts as gone
            if fh.read().split(")")[-1].split()[0] == "Z":
                break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {pid} survived the timeout")


def test_push_skips_by_sha256_and_pull(tmp_path: Path) -> None:
    t = LocalTransport()
    src = tmp_path / "model.tflite"
    src.write_bytes(b"\x00model-bytes" * 100)
    remote = tmp_path / "device" / "work" / "model.tflite"
    assert t.push(src, str(remote), timeout=10) is True
    assert remote.read_bytes() == src.read_bytes() and (remote.stat().st_mode & 0o777) == 0o644
    assert t.push(src, str(remote), timeout=10) is False          # same sha256: skipped
    assert t.push(src, str(remote), timeout=10, mode=0o755) is False
    assert (remote.stat().st_mode & 0o777) == 0o755                # but the mode is applied
    src.write_bytes(b"changed")
    assert t.push(src, str(remote), timeout=10) is True
    assert sha256_file(remote) == sha256_file(src)
    assert not [p for p in remote.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    back = tmp_path / "back" / "m.tflite"
    t.pull(str(remote), back, timeout=10)
    assert back.read_bytes() == b"changed"
    with pytest.raises(DeviceError, match="no such file"):
        t.push(tmp_path / "missing.tflite", str(remote), timeout=10)
    with pytest.raises(DeviceError, match="cannot copy"):
        t.pull(str(tmp_path / "nope"), back, timeout=10)
    t.close()
    t.close()
