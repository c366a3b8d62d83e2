"""edgelr.bench.parse against golden outputs of every benchmark_model family (tests/fixtures/bench)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgelr.bench.parse import parse_benchmark_output, strip_prefix
from edgelr.bench.parsers import LINE_PARSERS
from edgelr.errors import BenchmarkError

FIX = Path(__file__).parent / "fixtures" / "bench"


def read(name: str) -> str:
    return (FIX / name).read_text()


def test_info_prefixed_with_percentiles_delegate_and_memory() -> None:
    out = parse_benchmark_output(read("bm_info_percentiles.txt"))
    assert out.warmup is not None and out.inference is not None
    assert out.warmup.count == 12 and out.warmup.first == pytest.approx(156.677)
    assert out.warmup.avg == pytest.approx(43.2681)
    inf = out.inference
    assert (inf.count, inf.first, inf.curr, inf.min, inf.max) == (50, 33.228, 33.13, 32.687, 33.239)
    assert inf.avg == pytest.approx(33.0718) and inf.std == pytest.approx(0.129)
    assert (inf.p5, inf.median, inf.p95) == (32.801, 33.08, 33.23)
    assert out.init_ms == pytest.approx(3.501)
    assert out.first_inference_ms == pytest.approx(156.677)
    assert out.warmup_avg_ms == pytest.approx(43.2681)
    assert out.inference_avg_ms == pytest.approx(33.0718)
    assert out.memory_init_mb == pytest.approx(54.2852) and out.memory_overall_mb == pytest.approx(73.4102)
    assert out.peak_memory_mb == pytest.approx(75.1)
    assert len(out.delegates) == 1
    d = out.delegates[0]
    assert (d.name, d.replaced, d.total, d.partitions, d.subgraph) == ("TfLiteXNNPackDelegate", 539, 548, 19, 0)
    assert out.samples_ms == []
    assert out.raw.startswith("INFO: STARTING!")


def test_bare_lines_without_percentiles() -> None:
    out = parse_benchmark_output(read("bm_bare.txt"))
    assert out.warmup is not None and out.warmup.count == 5216
    assert out.inference is not None and out.inference.count == 10463
    assert out.inference.avg == pytest.approx(0.0944203)
    assert math.isnan(out.inference.p5) and math.isnan(out.inference.median)
    assert out.init_ms == pytest.approx(0.717) and out.first_inference_ms == pytest.approx(0.191)
    assert out.memory_overall_mb == pytest.approx(3.26562)
    assert math.isnan(out.peak_memory_mb)


def test_oldest_average_timings_and_all_same() -> None:
    out = parse_benchmark_output(read("bm_oldest.txt"))
    assert out.warmup is not None
    assert (out.warmup.count, out.warmup.min, out.warmup.max, out.warmup.std) == (1, 83.235, 83.235, 0.0)
    assert out.warmup_avg_ms == pytest.approx(83.235)
    assert out.init_ms == pytest.approx(38.467)  # the summary line wins over "Initialized session in"
    assert out.inference_avg_ms == pytest.approx(79.7609)
    assert math.isnan(out.first_inference_ms)
    assert "average_timings_old" in out.families and "inference_timings" not in out.families


def test_exponents_and_all_same() -> None:
    out = parse_benchmark_output(read("bm_exponent_all_same.txt"))
    assert out.warmup is not None and out.warmup.curr == pytest.approx(10012.3)
    assert out.inference is not None and out.inference.avg == pytest.approx(9992.42)
    assert out.inference.std == pytest.approx(3.8205)
    assert out.init_ms == pytest.approx(1204.55)
    assert out.latency_avg_ms == pytest.approx(9992.42)
    assert out.memory_overall_mb == pytest.approx(1024.25)


@pytest.mark.parametrize("name", ["bm_android_logcat.txt", "bm_android_tag.txt"])
def test_android_logcat_prefixes(name: str) -> None:
    out = parse_benchmark_output(read(name))
    assert out.inference is not None and out.warmup is not None
    assert out.init_ms == pytest.approx(9.87)
    if name == "bm_android_logcat.txt":
        assert out.inference.count == 1630 and out.inference.p95 == pytest.approx(0.64)
        assert out.peak_memory_mb == pytest.approx(8.75)
        assert out.delegates[0].replaced == 12 and out.delegates[0].total == 12
    else:
        assert out.inference.count == 50 and out.inference_avg_ms == pytest.approx(1.0005)


def test_litert2_block_reference_form() -> None:
    out = parse_benchmark_output(read("litert_block_reference.txt"))
    assert out.tool == "litert_benchmark"
    assert out.init_ms == pytest.approx(12.34)  # milliseconds, not microseconds
    assert out.inference_avg_ms == pytest.approx(3.21)
    assert out.inference is not None and out.inference.count == 50
    assert out.peak_memory_mb == pytest.approx(40.12)


def test_litert_python_tool_real_output() -> None:
    out = parse_benchmark_output(read("litert_python_tool.stdout.txt"), read("litert_python_tool.stderr.txt"))
    assert out.tool == "litert_benchmark"
    assert out.init_ms == pytest.approx(5.05)
    assert out.first_inference_ms == pytest.approx(0.08)
    assert out.warmup_avg_ms == pytest.approx(0.03)
    assert out.inference is not None and out.inference.count == 20
    assert (out.inference.avg, out.inference.min, out.inference.max, out.inference.std) == (0.01, 0.01, 0.01, 0.0)


def test_runner_json_line_gives_samples() -> None:
    text = ("INFO: count=3 first=100 curr=300 min=100 max=300 avg=200 std=82\n"
            "INFO: Inference timings in us: Init: 50, First inference: 900, Warmup (avg): 900, Inference (avg): 200\n"
            'EDGELR_RESULT_JSON {"version": "litert_runner 1 (x)", "samples_us": [100, 200, 300]}\n')
    out = parse_benchmark_output(text)
    assert out.tool == "litert_runner" and out.tool_version == "litert_runner 1 (x)"
    assert out.samples_ms == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("name, message", [
    ("unconsumed_flags.txt", "did not understand flag(s) '--num_thread=4'"),
    ("benchmarking_failed.txt", "'Benchmarking failed.': Failed to mmap model corrupt.tflite"),
    ("truncated.txt", "printed no inference timing"),
    ("runner_bad_json.txt", "EDGELR_RESULT_JSON line is not valid JSON"),
])
def test_malformed_outputs_raise(name: str, message: str) -> None:
    with pytest.raises(BenchmarkError) as info:
        parse_benchmark_output(read(name))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_failure_on_stderr_and_nonzero_exit() -> None:
    with pytest.raises(BenchmarkError, match="Benchmarking failed"):
        parse_benchmark_output("INFO: STARTING!\n", "ERROR: oops\nBenchmarking failed.\n", 1)
    # an INFO line is never the reason: the signal is (a shell's 128+11)
    with pytest.raises(BenchmarkError, match=r"exited with code 139: killed by SIGSEGV \(the program crashed\)$"):
        parse_benchmark_output("INFO: count=1", "", 139)
    # a good output with a non-zero exit is still a failure
    with pytest.raises(BenchmarkError, match="exited with code 2"):
        parse_benchmark_output(read("bm_bare.txt"), "", 2)


def test_prefix_stripping() -> None:
    assert strip_prefix("INFO: count=1 curr=5 (all same)") == ("count=1 curr=5 (all same)", False)
    assert strip_prefix("ERROR: bad") == ("bad", True)
    assert strip_prefix("11-23 05:01:02.345  4321  4321 E tflite  : ERROR: x") == ("x", True)
    assert strip_prefix("I/tflite  ( 4321): count=2") == ("count=2", False)
    assert strip_prefix("count=2") == ("count=2", False)


def test_every_family_has_a_fixture_that_uses_it() -> None:
    seen: set[str] = set()
    for f in FIX.glob("*.txt"):
        try:
            seen.update(parse_benchmark_output(f.read_text()).families)
        except BenchmarkError:
            pass
    for name in ("unconsumed_flags.txt", "benchmarking_failed.txt"):  # error families
        seen.update({"unconsumed_flags", "failed"})
    seen.add("edgelr_runner_json")  # covered by test_runner_json_line_gives_samples
    missing = set(LINE_PARSERS) - seen - {"version"}
    assert not missing, f"families without a golden fixture: {missing}"


def test_op_profiling_tables_do_not_disturb_timings_and_give_the_node_summary() -> None:
    out = parse_benchmark_output(read("bm_op_profiling.txt"))
    assert out.inference is not None and out.inference.count == 62     # "Timings (microseconds): count=" ignored
    assert out.warmup is not None and out.warmup.count == 31
    assert out.inference_avg_ms == pytest.approx(16.0104)
    summary = out.extra["op_summary"]
    assert [r["node_type"] for r in summary] == ["CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "SOFTMAX"]
    assert summary[0] == {"node_type": "CONV_2D", "count": 15, "avg_ms": 10.503, "avg_pct": 68.599,
                          "cdf_pct": 68.599, "mem_kb": 0.0, "times_called": 15}
    assert "_op_section" not in out.extra
