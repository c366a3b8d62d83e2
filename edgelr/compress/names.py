"""The names ``edgelr compress`` gives its outputs, written beside them and read back by ``edgelr bench``.

A compress run of ``net.keras`` writes ``out/model.tflite`` (named ``net``: the model users deploy) and
``out/baseline.tflite`` (``net (baseline)``: the original, converted alike). The names go to
``out/names.json``, to the history rows of the compress run, and ``edgelr bench out/model.tflite`` picks
them up, so the history never keys a series by a file stem such as ``model``.
"""

from __future__ import annotations

import json
from pathlib import Path

NAMES_FILE = "names.json"
BASELINE_SUFFIX = " (baseline)"


def output_names(model: str) -> dict[str, str]:
    """Output file name -> model name, for a compress run of the model called ``model``."""
    return {"model.tflite": model, "baseline.tflite": f"{model}{BASELINE_SUFFIX}"}


def recorded_name(path: str | Path) -> str | None:
    """The name compress recorded for ``path`` in its folder's ``names.json``, or None."""
    p = Path(path)
    try:
        names = json.loads((p.parent / NAMES_FILE).read_text())
    except (OSError, ValueError):
        return None
    name = names.get(p.name) if isinstance(names, dict) else None
    return name if isinstance(name, str) and name else None
