"""Wall time of `edgelr --help` and `edgelr bench --help` (goal: under 1 s; TensorFlow never imported).

Run: .venv/bin/python tests/perf/bench_cli_startup.py   (writes reports/cli_startup.md)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGELR = Path(sys.executable).parent / "edgelr"


def wall(args: list[str], n: int = 10) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([str(EDGELR), *args], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    rows = []
    for args in (["--help"], ["bench", "--help"], ["targets", "--json"]):
        t = wall(args)
        rows.append((" ".join(args), statistics.median(t), min(t), max(t)))
    probe = subprocess.run([sys.executable, "-c", "import sys, edgelr.cli.main as m\n"
                            "from edgelr.cli.main import COMMANDS\nimport importlib\n"
                            "[importlib.import_module(v[0]) for k, v in COMMANDS.items() if k in ('bench','devices','targets','regress','report')]\n"
                            "print('tensorflow' in sys.modules)"], capture_output=True, text=True, check=True)
    lines = ["# CLI start-up wall time", "", f"Machine: {subprocess.getoutput('nproc')} cores. "
             f"Command: `.venv/bin/python tests/perf/bench_cli_startup.py` (10 runs each).", "",
             "| command | median s | min s | max s |", "|---|---|---|---|"]
    lines += [f"| `edgelr {a}` | {med:.3f} | {lo:.3f} | {hi:.3f} |" for a, med, lo, hi in rows]
    lines += ["", f"TensorFlow imported by bench/devices/targets/regress/report modules: {probe.stdout.strip()}"]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "reports" / "cli_startup.md").write_text(text)


if __name__ == "__main__":
    main()
