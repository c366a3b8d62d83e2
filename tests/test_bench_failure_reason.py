"""The reason a failed benchmark gives is its real error line, never an INFO/WARNING log line.

``--threads 100000`` makes LiteRT's XNNPACK crash (SIGSEGV) after its last log line, ``INFO: Created
TensorFlow Lite XNNPACK delegate for CPU.``, when it cannot create its threads; edgelr used to give that
INFO line as the reason. The runner runs as ``nobody`` with at most 64 processes (``prlimit``,
``setpriv``): unbounded, XNNPACK created ~21,000 threads and used up the machine's PIDs (pid_max 32768),
so that other tests' processes could not start theirs (OpenBLAS then raises SIGINT in them).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from edgelr.bench.parse import failure_reason, parse_benchmark_output
from edgelr.errors import BenchmarkError

PY = sys.executable
MODEL = Path(__file__).parent / "fixtures" / "android" / "tiny_mlp.tflite"
XNNPACK_INFO = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def test_reason_skips_info_and_warning_lines() -> None:
    # an ERROR line wins, wherever it is
    assert failure_reason("INFO: STARTING!\n", f"ERROR: Failed to allocate tensors\n{XNNPACK_INFO}\n", 1) == (
        "Failed to allocate tensors")
    # logcat severities too: E is the reason, W/I are not
    assert failure_reason("", "E tflite  : Node 3 failed to prepare\nW tflite  : slow\nI tflite  : done\n", 1) == (
        "Node 3 failed to prepare")
    # a bare stderr line (a shell's or Python's message) is a reason; log lines are not
    assert failure_reason("", f"MemoryError: out of memory\n{XNNPACK_INFO}\nWARNING: x\n", 1) == (
        "MemoryError: out of memory")
    # nothing but log lines: the signal says it
    assert failure_reason("INFO: count=3 curr=5 (all same)\n", XNNPACK_INFO + "\n", 139) == (
        "killed by SIGSEGV (the program crashed)")
    assert failure_reason("", "", -9) == "killed by SIGKILL (killed, e.g. out of memory)"
    assert failure_reason("", XNNPACK_INFO, 1) == ""
    with pytest.raises(BenchmarkError) as info:
        parse_benchmark_output("INFO: STARTING!\n", XNNPACK_INFO + "\n", 139, program="litert_runner")
    assert str(info.value) == "litert_runner exited with code 139: killed by SIGSEGV (the program crashed)"


NPROC = 64
"""Processes (threads included) the crashing runner's user may have."""


@pytest.fixture
def bounded_python() -> Iterator[tuple[str, Path]]:
    """A device Python that runs as ``nobody`` with RLIMIT_NPROC = :data:`NPROC` (root ignores the limit),
    and a world-writable device workdir; skips when this machine cannot drop to ``nobody``."""
    if os.geteuid() != 0 or not (shutil.which("prlimit") and shutil.which("setpriv")):
        pytest.skip("needs root, prlimit and setpriv to bound the crashing runner's threads")
    d = Path(tempfile.mkdtemp(prefix="edgelr-bounded-"))
    try:
        d.chmod(0o777)
        py = d / "python"
        py.write_text(f"#!/bin/sh\nexec prlimit --nproc={NPROC}:{NPROC} setpriv --reuid=65534 --regid=65534 "
                      f"--clear-groups -- {shlex.quote(PY)} \"$@\"\n")
        py.chmod(0o755)
        probe = subprocess.run([str(py), "-c", "import ai_edge_litert"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"nobody cannot run this venv's Python with LiteRT: {probe.stderr.strip()[-200:]}")
        (d / "dev").mkdir()
        (d / "dev").chmod(0o777)
        yield str(py), d / "dev"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(60)
def test_runner_with_100000_threads_names_the_crash_not_an_info_line(bounded_python: tuple[str, Path]) -> None:
    """The real runner through the local transport and the harness (the CLI caps --threads at 1024 now)."""
    from device_agents.inventory import DeviceSpec
    from device_agents.local import LocalTransport
    from edgelr.bench.run import BenchSettings, benchmark

    python, workdir = bounded_python
    spec = DeviceSpec(name="box", transport="local", python=python, workdir=str(workdir))
    with pytest.raises(BenchmarkError) as info:
        benchmark(spec, LocalTransport(), [MODEL], BenchSettings(threads=100000, runs=2, sessions=1, canary=False,
                                                                 cooldown_timeout_s=1))
    msg = str(info.value)
    assert "exited with code 139: killed by SIGSEGV (the program crashed)" in msg, msg
    assert "INFO" not in msg and "XNNPACK" not in msg and "\n" not in msg
