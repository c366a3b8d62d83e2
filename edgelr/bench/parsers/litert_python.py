"""The LiteRT 2.x Python tool (``ai_edge_litert/tools/benchmark_litert_model.py``): a ``BENCHMARK RESULTS``
block in milliseconds, completed into the timed-run statistics after the last line."""

from __future__ import annotations

import re

from edgelr.bench.output import NAN, BenchOutput, LatencyStats
from edgelr.bench.parsers.base import LINE_PARSERS, LITERT_PYTHON, NUM, on_line, to_float


def _finish_block(out: BenchOutput) -> None:
    """The block's figures -> the output's timings and timed-run statistics (after the last line)."""
    block = out.extra.get("litert_block")
    if not isinstance(block, dict) or "avg" not in block:
        return
    runs = int(block.get("avg_runs", 0))
    out.init_ms = block.get("init", NAN)
    out.first_inference_ms = block.get("warmup_first", NAN)
    out.warmup_avg_ms = block.get("warmup_avg", NAN)
    out.inference_avg_ms = block["avg"]
    out.inference = LatencyStats(runs, NAN, NAN, block.get("min", NAN), block.get("max", NAN), block["avg"],
                                 block.get("std", NAN), block.get("p5", NAN), block.get("median", NAN),
                                 block.get("p95", NAN))


@LINE_PARSERS.register("litert_block_header", priority=LITERT_PYTHON)
@on_line(r"^(?:=+ ?)?\s*BENCHMARK RESULTS\s*(?:=+)?\s*$", finish=_finish_block)
def _block_header(m: re.Match[str], out: BenchOutput) -> None:
    out.in_litert_block = True
    out.tool = "litert_benchmark"


_BLOCK_KEYS = {
    "Model initialization": "init",
    "Warmup (first)": "warmup_first",
    "Warmup (avg)": "warmup_avg",
    "Inference (avg)": "avg",
    "Inference (min)": "min",
    "Inference (max)": "max",
    "Inference (median)": "median",
    "Inference (std)": "std",
    "Inference (p5)": "p5",
    "Inference (p95)": "p95",
}


@LINE_PARSERS.register("litert_block_line", priority=LITERT_PYTHON)
@on_line(rf"^(Model initialization|Warmup \((?:first|avg)\)|Inference \((?:avg|min|max|median|std|p5|p95)\)):"
         rf"\s+({NUM}) ms(?: \((\d+) runs\))?\s*$")
def _block_line(m: re.Match[str], out: BenchOutput) -> None:
    if not out.in_litert_block:
        return
    key, value, runs = _BLOCK_KEYS[m.group(1)], to_float(m.group(2)), m.group(3)
    block = out.extra.setdefault("litert_block", {})
    assert isinstance(block, dict)
    block[key] = value
    if runs is not None:
        block[f"{key}_runs"] = int(runs)


@LINE_PARSERS.register("litert_block_peak", priority=LITERT_PYTHON)
@on_line(rf"^Peak memory:\s+({NUM}) MB")
def _block_peak(m: re.Match[str], out: BenchOutput) -> None:
    out.peak_memory_mb = to_float(m.group(1))
