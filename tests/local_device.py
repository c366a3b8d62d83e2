"""The inventory of a ``local`` device running this interpreter (edgelr's LiteRT runner, target host)."""

from __future__ import annotations

import sys
from pathlib import Path


def write_local_inventory(path: Path, name: str = "testbox", workdir: Path | None = None) -> Path:
    """Write ``[devices.<name>]`` (transport local, target host, this Python) to ``path``; return it."""
    workdir = workdir or path.parent / "device"
    path.write_text(f'[devices.{name}]\ntransport = "local"\ntarget = "host"\npython = "{sys.executable}"\n'
                    f'workdir = "{workdir}"\n')
    return path
