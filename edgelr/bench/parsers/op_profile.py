"""``benchmark_model --enable_op_profiling``: the last "Summary by node type" table goes to
``BenchOutput.extra["op_summary"]`` (dicts: node_type, count, avg_ms, avg_pct, cdf_pct, mem_kb, times_called)."""

from __future__ import annotations

import re

from edgelr.bench.output import BenchOutput
from edgelr.bench.parsers.base import LINE_PARSERS, NUM, OP_PROFILE, on_line, to_float


def _forget_section(out: BenchOutput) -> None:
    out.extra.pop("_op_section", None)


@LINE_PARSERS.register("op_profile_header", priority=OP_PROFILE)
@on_line(r"^=+ ?(Summary by node type|Run Order|Top by Computation Time|Top by Memory Use) ?=+\s*$",
         finish=_forget_section)
def _op_header(m: re.Match[str], out: BenchOutput) -> None:
    section = m.group(1)
    out.extra["_op_section"] = section
    if section == "Summary by node type":  # init and regular runs each print one; the last one wins
        out.extra["op_summary"] = []


@LINE_PARSERS.register("op_summary_row", priority=OP_PROFILE)
@on_line(rf"^(\S+)\s+(\d+)\s+({NUM})\s+({NUM})%\s+({NUM})%\s+({NUM})\s+(\d+)\s*$")
def _op_row(m: re.Match[str], out: BenchOutput) -> None:
    if out.extra.get("_op_section") != "Summary by node type":
        return
    rows = out.extra.setdefault("op_summary", [])
    assert isinstance(rows, list)
    rows.append({"node_type": m.group(1), "count": int(m.group(2)), "avg_ms": to_float(m.group(3)),
                 "avg_pct": to_float(m.group(4)), "cdf_pct": to_float(m.group(5)), "mem_kb": to_float(m.group(6)),
                 "times_called": int(m.group(7))})


# Per node: ``--enable_op_profiling`` prints a "Run Order" table for the initialization and another for the
# regular runs (after "Operator-wise Profiling Info for Regular Benchmark Runs:"); only the latter is the
# model's ops. Rows go to ``BenchOutput.extra["op_profile"]`` (dicts: node_type, first_ms, avg_ms, pct,
# cdf_pct, mem_kb, times_called, name, order), in run order.
def _forget_phase(out: BenchOutput) -> None:
    out.extra.pop("_op_phase", None)


@LINE_PARSERS.register("op_profile_phase", priority=OP_PROFILE)
@on_line(r"^(?:Operator-wise )?Profiling Info for (Benchmark Initialization|Regular Benchmark Runs):\s*$",
         finish=_forget_phase)
def _op_phase(m: re.Match[str], out: BenchOutput) -> None:
    out.extra["_op_phase"] = "runs" if m.group(1).startswith("Regular") else "init"
    if out.extra["_op_phase"] == "runs":
        out.extra["op_profile"] = []  # a second regular-runs table replaces the first


@LINE_PARSERS.register("op_run_order_row", priority=OP_PROFILE)
@on_line(rf"^(\S+)\s+({NUM})\s+({NUM})\s+({NUM})%\s+({NUM})%\s+({NUM})\s+(\d+)\s+(\S.*?)\s*$")
def _op_node_row(m: re.Match[str], out: BenchOutput) -> None:
    if out.extra.get("_op_section") != "Run Order" or out.extra.get("_op_phase") != "runs":
        return
    rows = out.extra.setdefault("op_profile", [])
    assert isinstance(rows, list)
    rows.append({"node_type": m.group(1), "first_ms": to_float(m.group(2)), "avg_ms": to_float(m.group(3)),
                 "pct": to_float(m.group(4)), "cdf_pct": to_float(m.group(5)), "mem_kb": to_float(m.group(6)),
                 "times_called": int(m.group(7)), "name": m.group(8), "order": len(rows)})
