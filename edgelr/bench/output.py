"""What a benchmark program said about one model, typed: :class:`BenchOutput` (milliseconds, MB).

Filled by :func:`edgelr.bench.parse.parse_benchmark_output`; read by the harnesses and the orchestration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NAN = float("nan")


@dataclass
class LatencyStats:
    """One ``count=... first=... curr=... min=... max=... avg=... std=...`` line, in milliseconds.

    Fields a build does not print (``p5``/``median``/``p95`` in older builds, everything but ``count``
    and ``curr`` in the ``(all same)`` form) are filled from what is known or NaN.
    """

    count: int
    first: float
    curr: float
    min: float
    max: float
    avg: float
    std: float
    p5: float = NAN
    median: float = NAN
    p95: float = NAN


@dataclass
class DelegateInfo:
    """``Replacing N out of M node(s) with delegate (NAME) node, yielding P partitions ...``."""

    name: str
    replaced: int
    total: int
    partitions: int
    subgraph: int = 0


@dataclass
class BenchOutput:
    """Everything a benchmark program said about one model, in ms and MB; NaN when it did not say.

    ``samples_ms`` holds the per-run latencies (shape (num_runs,)) when the program printed them
    (edgelr's runner does; ``benchmark_model`` does not). ``raw`` is the full text as received.
    ``extra["op_summary"]``: with ``--enable_op_profiling``, the last "Summary by node type" table as
    dicts (node_type, count, avg_ms, avg_pct, cdf_pct, mem_kb, times_called).
    """

    raw: str = ""
    tool: str = "unknown"
    tool_version: str = ""
    families: list[str] = field(default_factory=list)
    warmup: LatencyStats | None = None
    inference: LatencyStats | None = None
    init_ms: float = NAN
    first_inference_ms: float = NAN
    warmup_avg_ms: float = NAN
    inference_avg_ms: float = NAN
    memory_init_mb: float = NAN
    memory_overall_mb: float = NAN
    peak_memory_mb: float = NAN
    delegates: list[DelegateInfo] = field(default_factory=list)
    samples_ms: list[float] = field(default_factory=list)
    unconsumed_flags: str = ""
    failed: bool = False
    errors: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    stats_lines: list[LatencyStats] = field(default_factory=list, repr=False)  # every count=... line, in order
    in_litert_block: bool = field(default=False, repr=False)  # inside a BENCHMARK RESULTS block

    @property
    def latency_avg_ms(self) -> float:
        """Mean latency of the timed runs (ms): the summary line, else the stats line, else the samples."""
        if math.isfinite(self.inference_avg_ms):
            return self.inference_avg_ms
        if self.inference is not None:
            return self.inference.avg
        if self.samples_ms:
            return sum(self.samples_ms) / len(self.samples_ms)
        return NAN
