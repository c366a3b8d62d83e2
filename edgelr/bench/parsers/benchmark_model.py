"""LiteRT/TFLite ``benchmark_model`` output (every family its builds have printed, REFERENCE.md section 3):
the warm-up and timed stats lines (us), the timings summary, memory lines, delegates, errors, version.
edgelr's ``device_agents/runner.py`` prints the same lines."""

from __future__ import annotations

import math
import re

from edgelr.bench.output import BenchOutput, DelegateInfo, LatencyStats
from edgelr.bench.parsers.base import BENCHMARK_MODEL, LINE_PARSERS, NUM, on_line, to_float, us_to_ms


@LINE_PARSERS.register("stats_all_same", priority=BENCHMARK_MODEL)
@on_line(rf"^count=(\d+) curr=({NUM}) \(all same\)\s*$")
def _stats_all_same(m: re.Match[str], out: BenchOutput) -> None:
    v = us_to_ms(m.group(2))
    out.stats_lines.append(LatencyStats(int(m.group(1)), v, v, v, v, v, 0.0, v, v, v))


@LINE_PARSERS.register("stats", priority=BENCHMARK_MODEL)
@on_line(rf"^count=(\d+) first=({NUM}) curr=({NUM}) min=({NUM}) max=({NUM}) avg=({NUM}) std=({NUM})"
         rf"(?: p5=({NUM}) median=({NUM}) p95=({NUM}))?\s*$")
def _stats(m: re.Match[str], out: BenchOutput) -> None:
    g = m.groups()
    out.stats_lines.append(LatencyStats(int(g[0]), *(us_to_ms(x) for x in g[1:])))


@LINE_PARSERS.register("inference_timings", priority=BENCHMARK_MODEL)
@on_line(rf"^Inference timings in us: Init: ({NUM}), First inference: ({NUM}), Warmup \(avg\): ({NUM}), "
         rf"Inference \(avg\): ({NUM})")
def _timings(m: re.Match[str], out: BenchOutput) -> None:
    out.init_ms, out.first_inference_ms, out.warmup_avg_ms, out.inference_avg_ms = (us_to_ms(x) for x in m.groups())


@LINE_PARSERS.register("average_timings_old", priority=BENCHMARK_MODEL)
@on_line(rf"^Average inference timings in us: Warmup: ({NUM}), Init: ({NUM}), Inference: ({NUM})")
def _timings_old(m: re.Match[str], out: BenchOutput) -> None:
    out.warmup_avg_ms, out.init_ms, out.inference_avg_ms = (us_to_ms(x) for x in m.groups())


@LINE_PARSERS.register("memory_delta", priority=BENCHMARK_MODEL)
@on_line(rf"^Memory footprint delta from the start of the tool \(MB\): init=({NUM}) overall=({NUM})")
def _memory_delta(m: re.Match[str], out: BenchOutput) -> None:
    out.memory_init_mb, out.memory_overall_mb = to_float(m.group(1)), to_float(m.group(2))


@LINE_PARSERS.register("peak_memory", priority=BENCHMARK_MODEL)
@on_line(rf"^Overall peak memory footprint \(MB\) via periodic monitoring: ({NUM})")
def _peak_memory(m: re.Match[str], out: BenchOutput) -> None:
    out.peak_memory_mb = to_float(m.group(1))


@LINE_PARSERS.register("delegate", priority=BENCHMARK_MODEL)
@on_line(r"^Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]*)\) node, yielding (\d+) partitions?"
         r"(?: for (?:the )?subgraph (\d+))?")
def _delegate(m: re.Match[str], out: BenchOutput) -> None:
    out.delegates.append(DelegateInfo(m.group(3), int(m.group(1)), int(m.group(2)), int(m.group(4)),
                                      int(m.group(5) or 0)))


@LINE_PARSERS.register("init_session", priority=BENCHMARK_MODEL)
@on_line(rf"^Initialized session in ({NUM}) ?ms")
def _init_session(m: re.Match[str], out: BenchOutput) -> None:
    if not math.isfinite(out.init_ms):
        out.init_ms = to_float(m.group(1))


@LINE_PARSERS.register("unconsumed_flags", priority=BENCHMARK_MODEL)
@on_line(r"^Unconsumed cmdline flags:\s*(.*)$")
def _unconsumed(m: re.Match[str], out: BenchOutput) -> None:
    out.unconsumed_flags = (out.unconsumed_flags + " " + m.group(1)).strip()


@LINE_PARSERS.register("failed", priority=BENCHMARK_MODEL)
@on_line(r"^Benchmarking failed\.?")
def _failed(m: re.Match[str], out: BenchOutput) -> None:
    out.failed = True


@LINE_PARSERS.register("version", priority=BENCHMARK_MODEL)
@on_line(r"^(?:The TensorFlow Lite|LiteRT|TF ?Lite) (?:runtime )?version:? \[?([^\]\s]+)\]?")
def _version(m: re.Match[str], out: BenchOutput) -> None:
    out.tool_version = m.group(1)
