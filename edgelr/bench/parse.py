"""Parse the text that benchmark programs print into one typed result (milliseconds, MB).

The programs: LiteRT/TFLite ``benchmark_model`` (every output family its builds have printed, see
REFERENCE.md section 3), the LiteRT 2.x Python tool (``ai_edge_litert/tools/benchmark_litert_model.py``,
a ``BENCHMARK RESULTS`` block in milliseconds) and edgelr's own ``device_agents/runner.py`` (the
``benchmark_model`` lines plus one ``EDGELR_RESULT_JSON`` line with the per-run samples).

Each output family is one registered :class:`~edgelr.bench.parsers.base.LineParser` in
:data:`~edgelr.bench.parsers.LINE_PARSERS` (a regex over one log line and a handler that fills the
:class:`~edgelr.bench.output.BenchOutput`); the families live in the modules of
:mod:`edgelr.bench.parsers`. Log prefixes (``INFO: ``, bare, Android logcat ``I tflite  : ``) are
stripped here before matching.

Example
-------
>>> out = parse_benchmark_output("INFO: count=3 curr=1000 (all same)\\n")
>>> out.inference.avg
1.0
"""

from __future__ import annotations

import math
import re

from edgelr.bench.output import BenchOutput, DelegateInfo, LatencyStats
from edgelr.bench.parsers import LINE_PARSERS
from edgelr.errors import BenchmarkError

__all__ = ["BenchOutput", "DelegateInfo", "LatencyStats", "failure_reason", "parse_benchmark_output",
           "strip_prefix"]


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
    parsers = LINE_PARSERS.items()
    for line in raw.splitlines():
        text, is_err = strip_prefix(line)
        if is_err:
            out.errors.append(text.strip())
        text = text.strip()
        if not text:
            continue
        for name, parser in parsers:
            if parser(text, out):
                if name not in out.families:
                    out.families.append(name)
                break
    for _, parser in parsers:
        if parser.finish is not None:
            parser.finish(out)
    stats = out.stats_lines
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
