"""The output-parser registry: one :class:`LineParser` per output family of a benchmark program.

A parser module registers each family with two decorators: the registry's (name and priority) over
:func:`on_line` (the regex, matched with ``re.match`` against one log line without its prefix, and an
optional ``finish`` step run once after the last line)::

    @LINE_PARSERS.register("stats", priority=BENCHMARK_MODEL)
    @on_line(rf"^count=(\d+) first=({NUM}) ...")
    def _stats(m: re.Match[str], out: BenchOutput) -> None: ...

A line goes to the first parser (highest priority first) whose regex matches it. The modules are
imported by :mod:`edgelr.bench.parsers`; adding a family is one function in one of them, adding a
program's output format is one module plus one import line there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from device_agents.registry import Registry
from edgelr.bench.output import NAN, BenchOutput

#: A number as C++ iostreams print it: 33071.8, 9.99242e+06, -1, nan, inf.
NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"

#: Priorities of the parser modules: a line is offered to the higher ones first.
BENCHMARK_MODEL, OP_PROFILE, LITERT_PYTHON, LITERT_RUNNER = 40, 30, 20, 10

Handler = Callable[[re.Match[str], BenchOutput], None]


@dataclass(frozen=True)
class LineParser:
    """One output family: ``handler`` fills the output from a line ``pattern`` matches; ``finish`` (when
    set) completes the output after the last line."""

    pattern: re.Pattern[str]
    handler: Handler
    finish: Callable[[BenchOutput], None] | None = None

    def __call__(self, text: str, out: BenchOutput) -> bool:
        """Feed one line (without its log prefix); True when it belongs to this family."""
        m = self.pattern.match(text)
        if m is None:
            return False
        self.handler(m, out)
        return True


def on_line(pattern: str, finish: Callable[[BenchOutput], None] | None = None) -> Callable[[Handler], LineParser]:
    """Decorator: the handler of lines matching ``pattern`` -> a :class:`LineParser` (to register)."""

    def deco(handler: Handler) -> LineParser:
        return LineParser(re.compile(pattern), handler, finish)

    return deco


#: Output families by name, tried first-match in priority order by :func:`edgelr.bench.parse.parse_benchmark_output`.
LINE_PARSERS: Registry[LineParser] = Registry("output parser")


def to_float(text: str | None) -> float:
    """A printed number (or None) -> float, NaN for None."""
    return NAN if text is None else float(text)


def us_to_ms(text: str | None) -> float:
    """Microseconds as printed -> milliseconds."""
    return to_float(text) / 1000.0
