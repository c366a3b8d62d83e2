"""edgelr's on-device runner (``device_agents/runner.py``): one ``EDGELR_RESULT_JSON`` line with the per-run
samples (the rest of its output is ``benchmark_model``'s format)."""

from __future__ import annotations

import json
import re

from edgelr.bench.output import BenchOutput
from edgelr.bench.parsers.base import LINE_PARSERS, LITERT_RUNNER, on_line
from edgelr.errors import BenchmarkError


@LINE_PARSERS.register("edgelr_runner_json", priority=LITERT_RUNNER)
@on_line(r"^EDGELR_RESULT_JSON (.*)$")
def _runner_json(m: re.Match[str], out: BenchOutput) -> None:
    try:
        rec = json.loads(m.group(1))
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"the runner's EDGELR_RESULT_JSON line is not valid JSON ({exc}); "
                             f"the output was truncated or the runner is from another version") from None
    if not isinstance(rec, dict):
        raise BenchmarkError("the runner's EDGELR_RESULT_JSON line is not a JSON object; the runner is from "
                             "another version")
    out.tool = "litert_runner"
    out.tool_version = str(rec.get("version", out.tool_version))
    out.samples_ms = [float(x) / 1000.0 for x in rec.get("samples_us", [])]
    out.extra["runner"] = rec
