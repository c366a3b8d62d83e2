"""android_bench/harness.sh under dash, busybox sh (with busybox's own applets) and mksh (Android's shell),
so bash-isms fail here.

The "phone" is the stand-in's sandbox (tests/adb_standin.py: fixture sysfs, getprop/dumpsys scripts) and
the benchmark is tests/fake_benchmark_model.py (a real LiteRT benchmark on this host).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from device_agents.android import parse_odpm, parse_thermalservice
from edgelr.bench.harnesses.android import _assemble, harness_path, parse_harness_output
from edgelr.bench.parse import parse_benchmark_output
from tests.adb_standin import AdbdStandin
from tests.fake_benchmark_model import write_launcher

MODEL = Path(__file__).parent / "fixtures" / "android" / "tiny_mlp.tflite"


def _shell(name: str, tmp: Path) -> tuple[list[str], str]:
    """argv of the shell and a PATH prefix holding its userland (busybox applets for busybox)."""
    if name in ("dash", "mksh"):                  # mksh: Android's /system/bin/sh
        if shutil.which(name) is None:
            pytest.skip(f"{name} is not installed (apt-get install {name})")
        return [name], ""
    bb = shutil.which("busybox")
    if bb is None:
        pytest.skip("busybox is not installed (apt-get install busybox); make test installs it")
    applets = tmp / "bb"
    applets.mkdir()
    for tool in ("cat", "sleep", "dirname", "rm", "sed", "sha256sum", "head", "tr", "nproc", "printf"):
        (applets / tool).symlink_to(bb)
    return [bb, "sh"], str(applets)


@pytest.fixture(params=["dash", "busybox", "mksh"])
def sandbox(request: pytest.FixtureRequest, tmp_path: Path):
    argv, applets = _shell(request.param, tmp_path)
    dev = AdbdStandin(tmp_path / "phone", shell=argv)
    env = dev.env()
    if applets:
        env["PATH"] = f"{dev.root / 'bin'}:{applets}:/usr/bin:/bin"
    workdir = dev.tmp_dir / "edgelr"
    workdir.mkdir(parents=True)
    shutil.copy(harness_path(), workdir / "harness.sh")
    bench = write_launcher(workdir / "benchmark_model")
    yield argv, env, workdir, bench
    dev.stop()


def _run(argv: list[str], env: dict[str, str], workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*argv, str(workdir / "harness.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.timeout(90)
def test_harness_syntax_is_posix(sandbox) -> None:
    argv, env, workdir, _ = sandbox
    res = subprocess.run([*argv, "-n", str(workdir / "harness.sh")], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr


@pytest.mark.timeout(120)
def test_harness_runs_benchmark_and_samples(sandbox) -> None:
    argv, env, workdir, bench = sandbox
    res = _run(argv, env, workdir, "--bin", str(bench), "--mask", "1", "--interval", "0.05", "--",
               f"--graph={MODEL}", "--num_runs=5", "--num_threads=1", "--min_secs=0.4")
    assert res.returncode == 0, res.stderr
    h = parse_harness_output(res.stdout)
    assert h.exit_code == 0
    assert h.result["pinned"] == "1" and h.result["pin_note"] == ""
    assert int(h.result["samples"]) == len(h.samples) >= 3
    # VmHWM of a Python process running LiteRT: tens of MB, and the max over the samples
    assert int(h.result["vmhwm_kb"]) == max(s[1] for s in h.samples) > 20_000
    assert {s[3] for s in h.samples} == {"-412345"} and {s[6] for s in h.samples} == {"Discharging"}
    assert len(parse_odpm(h.blocks["odpm_before"]).rails) == 16
    assert parse_thermalservice(h.blocks["thermal_after"]).hottest_c == 62.5
    bench_out = parse_benchmark_output(h.blocks["bench_stdout"], h.blocks["bench_stderr"], h.exit_code)
    assert bench_out.inference is not None and bench_out.inference.count >= 5
    run = _assemble(bench_out, h, "arm64-v8a", str(bench), "")
    assert run.avg_power_w == pytest.approx(2.0, rel=0.15)                 # the stand-in's ODPM: 1.5 W + 0.5 W
    assert sorted(os.listdir(workdir)) == ["benchmark_model", "harness.sh"]  # its temp files are removed


@pytest.mark.timeout(120)
def test_harness_reports_benchmark_failure(sandbox, tmp_path: Path) -> None:
    argv, env, workdir, bench = sandbox
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    res = _run(argv, env, workdir, "--bin", str(bench), "--", f"--graph={bad}")
    assert res.returncode == 0
    h = parse_harness_output(res.stdout)
    assert h.exit_code == 1 and h.result["pinned"] == "none"
    assert "Benchmarking failed." in h.blocks["bench_stderr"]


@pytest.mark.timeout(60)
def test_harness_usage_errors(sandbox) -> None:
    argv, env, workdir, bench = sandbox
    res = _run(argv, env, workdir, "--bogus", "1")
    assert res.returncode == 64 and "unknown option '--bogus'" in res.stderr
    res = _run(argv, env, workdir, "--bin", str(workdir / "absent"), "--", "--graph=x")
    assert res.returncode == 65 and "missing or not executable" in res.stderr


@pytest.mark.timeout(60)
def test_harness_bad_mask_runs_unpinned_and_says_so(sandbox, tmp_path: Path) -> None:
    argv, env, workdir, _ = sandbox
    fake = tmp_path / "quick"
    fake.write_text("#!/bin/sh\necho 'INFO: count=2 curr=1000 (all same)'\n")
    fake.chmod(0o755)
    env = dict(env, PATH=env["PATH"].replace(f"{workdir.parent.parent.parent.parent / 'bin'}:", ""))
    res = _run(argv, env, workdir, "--bin", str(fake), "--mask", "zz", "--", "--graph=x")
    h = parse_harness_output(res.stdout)
    assert h.result["pinned"] == "none" and "taskset zz failed" in h.result["pin_note"]
    assert "count=2 curr=1000" in h.blocks["bench_stdout"]
