"""The reason a failed benchmark gives is its real error line, never an INFO/WARNING log line.

``--threads 100000`` makes LiteRT's XNNPACK crash (SIGSEGV) after its last log line, ``INFO: Created
TensorFlow Lite XNNPACK delegate for CPU.``; edgelr used to give that INFO line as the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

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


@pytest.mark.timeout(60)
def test_runner_with_100000_threads_names_the_crash_not_an_info_line(tmp_path: Path) -> None:
    """The real runner through the local transport and the harness (the CLI caps --threads at 1024 now)."""
    from device_agents.inventory import DeviceSpec
    from device_agents.local import LocalTransport
    from edgelr.bench.run import BenchSettings, benchmark

    spec = DeviceSpec(name="box", transport="local", python=PY, workdir=str(tmp_path / "dev"))
    with pytest.raises(BenchmarkError) as info:
        benchmark(spec, LocalTransport(), [MODEL], BenchSettings(threads=100000, runs=2, sessions=1, canary=False,
                                                                 cooldown_timeout_s=1))
    msg = str(info.value)
    # XNNPACK's 100000 threads either exhaust the process limit while the wrapper samples (it cannot fork)
    # or the runner crashes after its last INFO line; either is the real reason, an INFO line never is
    assert ("exited with code 139: killed by SIGSEGV (the program crashed)" in msg
            or "the device ran out of processes while it ran (the benchmark wrapper could not fork" in msg), msg
    assert "INFO" not in msg and "XNNPACK" not in msg and "\n" not in msg
