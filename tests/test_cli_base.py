"""The CLI conventions: help without TensorFlow, exit codes, targets listing, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

EDGELR = [sys.executable, "-m", "edgelr.cli.main"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGELR, *args], capture_output=True, text=True, timeout=120, env=env)


def test_help_lists_every_subcommand_and_does_not_import_tensorflow() -> None:
    code = ("import sys; from edgelr.cli.main import main\n"
            "try:\n main(['--help'])\nexcept SystemExit: pass\n"
            "print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_ABSENT', file=sys.stderr)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert "TF_ABSENT" in proc.stderr
    for name in ("demo", "inspect", "compress", "bench", "devices", "regress", "report", "targets"):
        assert f"  {name}" in proc.stdout
    assert "Exit codes" in proc.stdout
    assert elapsed < 10  # generous: wall time is measured by tests/perf, this only catches a TF import


def test_targets_json_lists_required_profiles_with_fields() -> None:
    proc = run("targets", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"rpi4", "rpi5", "pixel7", "pixel8", "generic-arm64", "host"} <= set(data)
    assert data["rpi4"]["cpu"] == "cortex-a72" and data["rpi4"]["cores"] == 4 and data["rpi4"]["os"] == "linux"
    assert data["rpi5"]["cpu"] == "cortex-a76"
    for name in ("pixel7", "pixel8"):
        assert data[name]["os"] == "android" and int(data[name]["affinity_mask"], 16) > 0
    for prof in data.values():
        for field in ("os", "abi", "threads", "affinity_mask", "quantization", "delegate", "rank_multiple",
                      "memory_budget_mb"):
            assert field in prof
    assert data["rpi4"]["quantization"] == "int8"


def test_user_targets_file_overrides_and_adds(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    f.write_text('[targets.rpi4]\nthreads = 2\n\n[targets.jetson]\nbase = "generic-arm64"\ncpu = "carmel"\n')
    proc = run("targets", "--json", "--targets", str(f))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["rpi4"]["threads"] == 2 and data["rpi4"]["cpu"] == "cortex-a72"
    assert data["jetson"]["cpu"] == "carmel" and data["jetson"]["rank_multiple"] == 8


@pytest.mark.parametrize("content, needle", [
    ('[targets.x]\nos = "linux"\n', "lacks field"),
    ('[targets.rpi4]\nquantization = "int4"\n', "quantization='int4'"),
    ('[targets.rpi4\n', "not valid TOML"),
    ('[targets.rpi4]\nbogus = 1\n', "unknown field"),
    ('[targets.rpi4]\noutput_cost = -1\n', "output_cost=-1"),
    ('[targets.rpi4]\noutput_cost = "high"\n', "output_cost='high'"),
])
def test_bad_user_targets_file_is_one_clear_line(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "t.toml"
    f.write_text(content)
    proc = run("targets", "--targets", str(f))
    assert proc.returncode == 1
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_target_lists_valid_ones() -> None:
    from edgelr.errors import TargetError
    from edgelr.targets import get_target

    with pytest.raises(TargetError, match="unknown target 'rpi9'.*generic-arm64.*rpi4"):
        get_target("rpi9")


def test_usage_error_exit_code_2() -> None:
    proc = run("targets", "--no-such-flag")
    assert proc.returncode == 2
    assert "No such option" in proc.stderr


def test_unknown_command_exit_code_2() -> None:
    proc = run("frobnicate")
    assert proc.returncode == 2


def test_host_rank_multiple_follows_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rank_multiple = 0`` resolves to the kernel tile of the machine: 16 for float on x86-64, else 8."""
    import platform

    monkeypatch.delenv("EDGELR_TARGETS")  # conftest pins host to 8 for the other tests

    from edgelr.targets import get_target, native_rank_multiple

    assert native_rank_multiple("x86_64", "none") == 16 and native_rank_multiple("x86_64", "float16") == 16
    assert native_rank_multiple("x86_64", "int8") == 8 and native_rank_multiple("aarch64", "none") == 8
    host = get_target("host")
    assert host.rank_multiple == native_rank_multiple(platform.machine(), host.quantization)
    assert get_target("rpi4").rank_multiple == 8
    f = tmp_path / "t.toml"
    f.write_text('[targets.board]\nbase = "rpi4"\nrank_multiple = 0\nquantization = "none"\n')
    assert get_target("board", f).rank_multiple == native_rank_multiple(quantization="none")
    f.write_text('[targets.board]\nbase = "rpi4"\nrank_multiple = -8\n')
    from edgelr.errors import TargetError

    with pytest.raises(TargetError, match="rank_multiple=-8"):
        get_target("board", f)
