"""Helpers shared by the CLI commands: JSON output, tables, messages on stderr."""

from __future__ import annotations

import json
import math
from typing import Any

import click


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return str(obj)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def echo_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (NaN becomes null)."""
    click.echo(json.dumps(_clean(data), indent=2, default=_default))


def info(msg: str) -> None:
    """A message for the user, on stderr."""
    click.echo(msg, err=True)


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Plain-text table of ``rows`` (no pandas import needed)."""
    if not rows:
        return "(none)"
    cols = columns or list(rows[0])
    cells = [[_cell_text(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    out.append("  ".join("-" * w for w in widths))
    for row in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return "\n".join(out)


def _cell_text(v: Any) -> str:
    """One table cell: floats to 4 significant digits (NaN blank), ints with thousands separators."""
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ",".join(_cell_text(x) for x in v)
    return str(v)


def not_available(name: str) -> None:
    """For sub-commands a later release fills in."""
    from edgelr.errors import NotAvailableError

    raise NotAvailableError(f"'edgelr {name}' is not available yet in this version")


