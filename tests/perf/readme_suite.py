"""The README's regression suite on this machine: an unchanged model run again and again, quiet and beside
the load generator of bench_detection.py, must flag nothing; a 2x slower model must be flagged.

The suite is the README's (sessions 10, runs 20, thresholds latency 5 %, peak_memory 10 %, energy 8 %,
accuracy 0.5pt) with the device set to ``local`` and the model the CNN of bench_detection.py; the slower
model is the same CNN widened (about 2x the MACs; its measured ratio is in the flagging run's verdict).

Run:  .venv/bin/python tests/perf/readme_suite.py [--reruns 10] [--no-load]
Writes reports/readme_suite.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detection import load_generator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EDGELR = [sys.executable, "-c", "import sys; from edgelr.cli.main import main; sys.argv = ['edgelr', *sys.argv[1:]]; main()"]

SUITE = """
[suite]
name = "nightly"
sessions = 10
runs = 20
history = "reports/history"

[[models]]
name = "classifier"
path = "models/classifier.tflite"

[[devices]]
name = "local"

[thresholds]
latency = "5%"
peak_memory = "10%"
energy = "8%"
accuracy = "0.5pt"
"""

_MAKE = """
import sys
from edgelr.tfcompat import tf, keras2
k = keras2()
k.utils.set_random_seed(0)
def build(mid, last, path):
    L = k.layers
    m = k.Sequential([L.Input((32, 32, 3), batch_size=1), L.Conv2D(32, 3, padding="same", activation="relu"),
                      L.Conv2D(mid, 3, strides=2, padding="same", activation="relu"),
                      L.Conv2D(last, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(), L.Dense(10)])
    open(path, "wb").write(tf().lite.TFLiteConverter.from_keras_model(m).convert())
build(64, 64, sys.argv[1])    # 15.0 M MACs (the CNN of bench_detection.py)
build(96, 96, sys.argv[2])    # 29.2 M MACs: about 2x
"""


def regress(d: Path, *extra: str) -> tuple[int, dict, float, str]:
    t0 = time.monotonic()
    p = subprocess.run([*EDGELR, "regress", "--suite", str(d / "suite.toml"), "--json", *extra], capture_output=True,
                       text=True, cwd=d, timeout=1800)
    wall = time.monotonic() - t0
    try:
        out = json.loads(p.stdout)
    except ValueError:
        out = {}
    return p.returncode, out, wall, p.stderr


def verdicts(out: dict) -> str:
    parts = []
    for c in out.get("comparisons", []):
        if c["metric"] in ("latency", "peak_memory") and c["status"] not in ("not-measured",):
            eff = c.get("effect")
            parts.append(f"{c['metric']} {c['status']}" + (f" {eff:+.1%}" if isinstance(eff, float) else "")
                         + (" (paired)" if "paired" in str(c.get("method")) else ""))
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reruns", type=int, default=10)
    ap.add_argument("--no-load", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "reports" / "readme_suite.md"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgelr-readme-suite-") as tmp:
        d = Path(tmp)
        (d / "models").mkdir()
        (d / "suite.toml").write_text(SUITE)
        fast, slow = d / "fast.tflite", d / "slow.tflite"
        subprocess.run([sys.executable, "-c", _MAKE, str(fast), str(slow)], check=True, capture_output=True, timeout=600)
        shutil.copyfile(fast, d / "models" / "classifier.tflite")
        rc, out, wall, err = regress(d, "--accept")
        rows.append(("first run (accepted)", "quiet", rc, verdicts(out), wall))
        for load in ([False] if args.no_load else [False, True]):
            for i in range(args.reruns):
                gens = load_generator(600) if load else []
                try:
                    rc, out, wall, err = regress(d)
                finally:
                    for g in gens:
                        g.terminate()
                rows.append((f"unchanged #{i + 1}", "load" if load else "quiet", rc, verdicts(out), wall))
                print(rows[-1], file=sys.stderr)
                if rc not in (0, 3):
                    print(err[-2000:], file=sys.stderr)
        shutil.copyfile(slow, d / "models" / "classifier.tflite")
        rc, out, wall, err = regress(d)
        rows.append(("2x slower model", "quiet", rc, verdicts(out), wall))
        noise = out.get("noise", {}).get("local", {})
    unchanged = [r for r in rows if r[0].startswith("unchanged")]
    flagged = sum(r[2] == 3 for r in unchanged)
    lines = ["# The README's suite on this machine (tests/perf/readme_suite.py)", "",
             f"2 cores, shared; load average at the end {os.getloadavg()[0]:.2f}. Device `local`, sessions 10, runs 20, "
             f"latency threshold 5 %, paired confirmation on (the default).", "",
             f"Unchanged model: flagged in **{flagged} of {len(unchanged)}** reruns "
             f"({sum(r[1] == 'quiet' for r in unchanged)} quiet, {sum(r[1] == 'load' for r in unchanged)} beside the "
             f"load generator). 2x slower model: exit {rows[-1][2]} ({'flagged' if rows[-1][2] == 3 else 'NOT flagged'}).",
             "", "| run | condition | exit | verdicts | wall s |", "|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.0f} |" for r in rows]
    if noise:
        lines += ["", f"Noise floor the last run reported: session CV {noise.get('session_cv', 0):.1%}, smallest "
                  f"detectable change at K=10 {noise.get('min_detectable_change', 0):.1%} ({noise.get('source')})."]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
