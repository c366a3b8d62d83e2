"""Benchmark-program output parsers, one module per program's output format (see :mod:`.base`).

This is the one module that imports the parser modules; importing one registers its line families in
:data:`~edgelr.bench.parsers.base.LINE_PARSERS`. Adding an output format is one module plus one import
line below.
"""

from edgelr.bench.parsers import benchmark_model, litert_python, litert_runner, op_profile  # noqa: F401
from edgelr.bench.parsers.base import LINE_PARSERS, LineParser

__all__ = ["LINE_PARSERS", "LineParser"]
