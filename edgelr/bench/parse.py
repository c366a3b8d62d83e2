"""Parse the text that benchmark programs print into one typed result (milliseconds, MB).

The programs: LiteRT/TFLite ``benchmark_model`` (every output family its builds have printed, see
REFERENCE.md section 3), the LiteRT 2.x Python tool (``ai_edge_litert/tools/benchmark_litert_model.py``,
a ``BENCHMARK RESULTS`` block in milliseconds) and edgelr's own ``device_agents/runner.py`` (the
``benchmark_model`` lines plus one ``EDGELR_RESULT_JSON`` line with the per-run samples).

Each output family is one :class:`LineFamily` in :data:`FAMILIES` (a regex over one log line and a
handler that fills the :class:`BenchOutput`); adding a family is adding one ``@family(...)`` function.
Log prefixes (``INFO: ``, bare, Android logcat ``I tflite  : ``) are stripped before matching.

Example
-------
>>> out = parse_benchmark_output("INFO: count=3 curr=1000 (all same)\\n")
>>> out.inference.avg
1.0
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from edgelr.errors import BenchmarkError

NAN = float("nan")

# A number as C++ iostreams print it: 33071.8, 9.99242e+06, -1, nan, inf.
_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"


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
    _stats_lines: list[LatencyStats] = field(default_factory=list, repr=False)
    _in_block: bool = field(default=False, repr=False)

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


Handler = Callable[[re.Match[str], BenchOutput], None]


@dataclass(frozen=True)
class LineFamily:
    """One output family: a regex matched (``re.match``) against a log line without its prefix."""

    name: str
    pattern: re.Pattern[str]
    handler: Handler


FAMILIES: list[LineFamily] = []


def family(name: str, pattern: str) -> Callable[[Handler], Handler]:
    """Decorator: register ``handler`` for lines matching ``pattern`` (tried in registration order)."""

    def deco(handler: Handler) -> Handler:
        FAMILIES.append(LineFamily(name, re.compile(pattern), handler))
        return handler

    return deco


def _f(text: str | None) -> float:
    return NAN if text is None else float(text)


def _us(text: str | None) -> float:
    """Microseconds as printed -> milliseconds."""
    return _f(text) / 1000.0


# --- log-line prefixes -------------------------------------------------------------------------------
_PREFIXES = [
    # logcat threadtime: "11-23 05:01:02.345  4321  4321 I tflite  : msg"
    re.compile(r"^\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+(?P<sev>[VDIWEF])\s+tflite\s*:\s?"),
    # logcat brief: "I/tflite  ( 4321): msg"
    re.compile(r"^(?P<sev>[VDIWEF])/tflite\s*\(\s*\d+\):\s?"),
    # logcat tag-only: "I tflite  : msg"
    re.compile(r"^(?P<sev>[VDIWEF])\s+tflite\s*:\s?"),
    # benchmark_model's own severity prefix (newer builds; older ones print bare lines)
    re.compile(r"^(?P<sev>INFO|WARNING|VERBOSE|ERROR): "),
]


def strip_prefix(line: str) -> tuple[str, bool]:
    """``line`` without its log prefix(es), and whether it was an error line."""
    text, sev = _split_severity(line)
    return text, sev == "error"


def _split_severity(line: str) -> tuple[str, str]:
    """``line`` without its log prefix(es) and its severity: ``error``, ``log`` (INFO, WARNING, VERBOSE,
    logcat V/D/I/W) or ``""`` (no prefix: a bare line, as older builds and crashing programs print)."""
    text = line.rstrip("\r\n")
    sev = ""
    for rx in _PREFIXES:  # a logcat line may also carry "ERROR: " after the tag
        m = rx.match(text)
        if m:
            sev = "error" if sev == "error" or m.group("sev") in ("E", "F", "ERROR") else "log"
            text = text[m.end():]
    return text, sev


# lines that say nothing about why a program failed
_NOT_A_REASON = re.compile(r"^(?:Benchmarking failed\.?|EDGELR_VMHWM_KB=\d+|EDGELR_RESULT_JSON .*)$")


def failure_reason(stdout: str, stderr: str, exit_code: int) -> str:
    """The line that says why a benchmark program failed, for a one-line error message.

    The last ``ERROR``-level line (either stream); else the last bare (unprefixed) line of stderr, such
    as a shell's ``Segmentation fault`` or a Python exception; never an ``INFO``/``WARNING`` log line (a
    crashing XNNPACK still logs ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` last); else
    the signal that ended the program (exit code 128+N as shells report it, or -N). "" when nothing
    tells.
    """
    errors: list[str] = []
    bare: list[str] = []
    for stream, lines in (("out", stdout.splitlines()), ("err", stderr.splitlines())):
        for line in lines:
            text, sev = _split_severity(line)
            text = text.strip()
            if not text or _NOT_A_REASON.match(text):
                continue
            if sev == "error":
                errors.append(text)
            elif sev == "" and stream == "err":
                bare.append(text)
    if errors:
        return errors[-1][:300]
    if bare:
        return bare[-1][:300]
    return _signal_text(exit_code)


def _signal_text(exit_code: int) -> str:
    import signal  # noqa: PLC0415

    num = -exit_code if exit_code < 0 else exit_code - 128 if 128 < exit_code < 128 + 65 else 0
    if not num:
        return ""
    try:
        name = signal.Signals(num).name
    except ValueError:
        name = f"signal {num}"
    what = {"SIGSEGV": " (the program crashed)", "SIGKILL": " (killed, e.g. out of memory)",
            "SIGABRT": " (the program aborted)", "SIGBUS": " (the program crashed)",
            "SIGTERM": " (stopped)"}.get(name, "")
    return f"killed by {name}{what}"


# --- benchmark_model families ------------------------------------------------------------------------
@family("stats_all_same", rf"^count=(\d+) curr=({_NUM}) \(all same\)\s*$")
def _stats_all_same(m: re.Match[str], out: BenchOutput) -> None:
    v = _us(m.group(2))
    out._stats_lines.append(LatencyStats(int(m.group(1)), v, v, v, v, v, 0.0, v, v, v))


@family(
    "stats",
    rf"^count=(\d+) first=({_NUM}) curr=({_NUM}) min=({_NUM}) max=({_NUM}) avg=({_NUM}) std=({_NUM})"
    rf"(?: p5=({_NUM}) median=({_NUM}) p95=({_NUM}))?\s*$",
)
def _stats(m: re.Match[str], out: BenchOutput) -> None:
    g = m.groups()
    out._stats_lines.append(LatencyStats(int(g[0]), *(_us(x) for x in g[1:])))


@family(
    "inference_timings",
    rf"^Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), Warmup \(avg\): ({_NUM}), "
    rf"Inference \(avg\): ({_NUM})",
)
def _timings(m: re.Match[str], out: BenchOutput) -> None:
    out.init_ms, out.first_inference_ms, out.warmup_avg_ms, out.inference_avg_ms = (_us(x) for x in m.groups())


@family(
    "average_timings_old",
    rf"^Average inference timings in us: Warmup: ({_NUM}), Init: ({_NUM}), Inference: ({_NUM})",
)
def _timings_old(m: re.Match[str], out: BenchOutput) -> None:
    out.warmup_avg_ms, out.init_ms, out.inference_avg_ms = (_us(x) for x in m.groups())


@family("memory_delta",
        rf"^Memory footprint delta from the start of the tool \(MB\): init=({_NUM}) overall=({_NUM})")
def _memory_delta(m: re.Match[str], out: BenchOutput) -> None:
    out.memory_init_mb, out.memory_overall_mb = _f(m.group(1)), _f(m.group(2))


@family("peak_memory", rf"^Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})")
def _peak_memory(m: re.Match[str], out: BenchOutput) -> None:
    out.peak_memory_mb = _f(m.group(1))


@family("delegate",
        r"^Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]*)\) node, yielding (\d+) partitions?"
        r"(?: for (?:the )?subgraph (\d+))?")
def _delegate(m: re.Match[str], out: BenchOutput) -> None:
    out.delegates.append(DelegateInfo(m.group(3), int(m.group(1)), int(m.group(2)), int(m.group(4)),
                                      int(m.group(5) or 0)))


@family("init_session", rf"^Initialized session in ({_NUM}) ?ms")
def _init_session(m: re.Match[str], out: BenchOutput) -> None:
    if not math.isfinite(out.init_ms):
        out.init_ms = _f(m.group(1))


@family("unconsumed_flags", r"^Unconsumed cmdline flags:\s*(.*)$")
def _unconsumed(m: re.Match[str], out: BenchOutput) -> None:
    out.unconsumed_flags = (out.unconsumed_flags + " " + m.group(1)).strip()


@family("failed", r"^Benchmarking failed\.?")
def _failed(m: re.Match[str], out: BenchOutput) -> None:
    out.failed = True


@family("version", r"^(?:The TensorFlow Lite|LiteRT|TF ?Lite) (?:runtime )?version:? \[?([^\]\s]+)\]?")
def _version(m: re.Match[str], out: BenchOutput) -> None:
    out.tool_version = m.group(1)


# --- op profiling (--enable_op_profiling): the "Summary by node type" table -----------------------------
@family("op_profile_header", r"^=+ ?(Summary by node type|Run Order|Top by Computation Time|Top by Memory Use)"
                             r" ?=+\s*$")
def _op_header(m: re.Match[str], out: BenchOutput) -> None:
    section = m.group(1)
    out.extra["_op_section"] = section
    if section == "Summary by node type":  # init and regular runs each print one; the last one wins
        out.extra["op_summary"] = []


@family("op_summary_row",
        rf"^(\S+)\s+(\d+)\s+({_NUM})\s+({_NUM})%\s+({_NUM})%\s+({_NUM})\s+(\d+)\s*$")
def _op_row(m: re.Match[str], out: BenchOutput) -> None:
    if out.extra.get("_op_section") != "Summary by node type":
        return
    rows = out.extra.setdefault("op_summary", [])
    assert isinstance(rows, list)
    rows.append({"node_type": m.group(1), "count": int(m.group(2)), "avg_ms": _f(m.group(3)),
                 "avg_pct": _f(m.group(4)), "cdf_pct": _f(m.group(5)), "mem_kb": _f(m.group(6)),
                 "times_called": int(m.group(7))})


# --- LiteRT 2.x Python tool: a block in milliseconds -------------------------------------------------
@family("litert_block_header", r"^(?:=+ ?)?\s*BENCHMARK RESULTS\s*(?:=+)?\s*$")
def _block_header(m: re.Match[str], out: BenchOutput) -> None:
    out._in_block = True
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


@family("litert_block_line",
        rf"^(Model initialization|Warmup \((?:first|avg)\)|Inference \((?:avg|min|max|median|std|p5|p95)\)):"
        rf"\s+({_NUM}) ms(?: \((\d+) runs\))?\s*$")
def _block_line(m: re.Match[str], out: BenchOutput) -> None:
    if not out._in_block:
        return
    key, value, runs = _BLOCK_KEYS[m.group(1)], _f(m.group(2)), m.group(3)
    block = out.extra.setdefault("litert_block", {})
    assert isinstance(block, dict)
    block[key] = value
    if runs is not None:
        block[f"{key}_runs"] = int(runs)


@family("litert_block_peak", rf"^Peak memory:\s+({_NUM}) MB")
def _block_peak(m: re.Match[str], out: BenchOutput) -> None:
    out.peak_memory_mb = _f(m.group(1))


# --- edgelr runner: one JSON record with the per-run samples -----------------------------------------
@family("edgelr_runner_json", r"^EDGELR_RESULT_JSON (.*)$")
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


# --- entry point --------------------------------------------------------------------------------------
def _finish_block(out: BenchOutput) -> None:
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


def parse_benchmark_output(stdout: str, stderr: str = "", exit_code: int = 0,
                           program: str = "benchmark_model") -> BenchOutput:
    """Parse what a benchmark program printed.

    Parameters
    ----------
    stdout, stderr
        The program's output streams (order does not matter; both are scanned).
    exit_code
        The program's exit code; non-zero is a failure.
    program
        Name used in error messages.

    Returns
    -------
    BenchOutput
        Times in ms, memory in MB. With two stats lines the first is the warm-up, the second the
        timed runs (``benchmark_model`` prints them in that order); with one it is the timed runs.

    Raises
    ------
    BenchmarkError
        ``Unconsumed cmdline flags`` (a misspelled flag: the tool runs on with defaults), ``Benchmarking
        failed.``, a non-zero exit code, or output without any latency figure.
    """
    raw = stdout if not stderr else f"{stdout}\n{stderr}"
    out = BenchOutput(raw=raw, tool="benchmark_model")
    for line in raw.splitlines():
        text, is_err = strip_prefix(line)
        if is_err:
            out.errors.append(text.strip())
        text = text.strip()
        if not text:
            continue
        for fam in FAMILIES:
            m = fam.pattern.match(text)
            if m:
                fam.handler(m, out)
                if fam.name not in out.families:
                    out.families.append(fam.name)
                break
    _finish_block(out)
    out.extra.pop("_op_section", None)
    stats = out._stats_lines
    if len(stats) >= 2:
        out.warmup, out.inference = stats[-2], stats[-1]
    elif len(stats) == 1:
        out.inference = stats[0]
    if out.unconsumed_flags:
        raise BenchmarkError(f"{program} did not understand flag(s) '{out.unconsumed_flags}' (it reported "
                             f"'Unconsumed cmdline flags' and would run with defaults); fix the flag names")
    reason = failure_reason(stdout, stderr, exit_code)
    detail = f": {reason}" if reason else ""
    if out.failed:
        raise BenchmarkError(f"{program} reported 'Benchmarking failed.'{detail}")
    if exit_code != 0:
        tail = detail or ("" if raw.strip() else " without output")
        raise BenchmarkError(f"{program} exited with code {exit_code}{tail}")
    if not math.isfinite(out.latency_avg_ms):
        raise BenchmarkError(f"{program} printed no inference timing that edgelr recognises "
                             f"(last line: {_last_line(raw)!r}); pass a LiteRT benchmark_model build or "
                             f"device_agents/runner.py")
    return out


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""
