"""Benchmark: the accuracy search on MACs vs on the device's latency table, the whole ``edgelr compress``.

The Fashion-MNIST reference CNN (bench_compress_fmnist.py), trained briefly here, is compressed twice with the
same accuracy budget, seed and fine-tuning, as a user would:

* ``MAC-driven``:   ``edgelr compress model.keras --data fashion-mnist --target host --max-accuracy-drop B``
* ``table-driven``: the same + ``--latency-device local`` (builds the table, then the plan, the allocation and
  the search minimise measured latency within the budget).

Both int8 ``.tflite`` files and the original's are then measured with ``edgelr bench`` in the same interleaved
sessions; the speed-ups are paired per block (95 % Wilcoxon / Hodges-Lehmann interval), the table-driven one
over the MAC-driven one too. Accuracy is each run's own int8 test accuracy (summary.json).

Usage: .venv/bin/python tests/perf/bench_latency_search.py [--budget 1.0] [--train-samples 15000]
       [--epochs 2] [--sessions 10] [--workdir /tmp/edgelr-latency-search]
Writes reports/latency_search.md and reports/latency_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _perfutil import write_report  # noqa: E402
from bench_compress_fmnist import reference_cnn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EDGELR = [sys.executable, "-m", "edgelr.cli.main"]


def log(msg: str) -> None:
    print(f"[latency_search] {msg}", file=sys.stderr, flush=True)


def train(path: Path, train_samples: int, epochs: int) -> None:
    from edgelr.data import load_data
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.utils.set_random_seed(0)
    data = load_data("fashion-mnist").subset(train=train_samples)
    model = reference_cnn(k2)
    model.compile(k2.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=128, verbose=0)
    model.save(path)


def compress(model: Path, out: Path, args: Any, *extra: str) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    cmd = [*EDGELR, "compress", str(model), "--data", "fashion-mnist", "--target", "host",
           "--max-accuracy-drop", str(args.budget), "--max-train", str(args.train_samples), "--epochs",
           str(args.ft_epochs), "--seed", "0", "--out", str(out), "--force", "--json", *extra]
    log(" ".join(cmd[2:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"compress failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--train-samples", type=int, default=15000)
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the original")
    ap.add_argument("--ft-epochs", type=int, default=2, help="compress --epochs")
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--workdir", default="/tmp/edgelr-latency-search")
    ap.add_argument("--json", default=str(ROOT / "reports" / "latency_search.json"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "latency_search.md"))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    if args.render_only:
        return render_only(args)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "fmnist_cnn.keras"
    if not model.is_file():
        log("training the reference CNN")
        train(model, args.train_samples, args.epochs)
    env_cache = work / "cache"
    os.environ["XDG_CACHE_HOME"] = str(env_cache)   # the latency table of this run only
    load_before = os.getloadavg()
    mac, mac_s = compress(model, work / "mac", args)
    tab, tab_s = compress(model, work / "table", args, "--latency-device", "local")
    files = {"original": work / "mac" / "baseline.tflite", "MAC-driven": work / "mac" / "model.tflite",
             "table-driven": work / "table" / "model.tflite"}
    names = [a for k in files for a in ("--name", k)]
    log("measuring the models interleaved")
    proc = subprocess.run([*EDGELR, "bench", *map(str, files.values()), *names, "--device", "local",
                           "--sessions", str(args.sessions), "--runs", str(args.runs), "--reference", "MAC-driven",
                           "--no-history", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench failed ({proc.returncode}): {proc.stderr[-2000:]}")
    bench = json.loads(proc.stdout)
    import hashlib

    doc = {"command": sys.argv[1:], "budget": args.budget, "load_before": load_before,
           "sha256": {k: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for k, f in files.items()},
           "load_after": os.getloadavg(), "mac": mac, "table": tab, "mac_s": mac_s, "table_s": tab_s,
           "bench": bench.get("summary", bench)}
    Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    write_report(args.out, render(doc))
    return 0


def render_only(args: Any) -> int:
    write_report(args.out, render(json.loads(Path(args.json).read_text())))
    return 0


def render(doc: dict[str, Any]) -> list[str]:
    lines = ["# The accuracy search on MACs vs on the device's latency table", "",
             "Generated by `.venv/bin/python tests/perf/bench_latency_search.py " + " ".join(doc["command"]) + "` on"
             " this project's shared 2-core x86-64 machine (device `local`, target `host`, int8). Load average"
             f" before / after: {' '.join(f'{v:.2f}' for v in doc['load_before'])} /"
             f" {' '.join(f'{v:.2f}' for v in doc['load_after'])}.", "",
             "| run | accuracy (int8) | drop | params x | MACs x | compress wall |", "|---|---|---|---|---|---|"]
    for label, key in (("MAC-driven", "mac"), ("table-driven (--latency-device local)", "table")):
        s = doc[key]
        lines.append(f"| {label} | {s['original']['tflite_score']:.2f} -> {s['compressed']['tflite_score']:.2f} % | "
                     f"{s['drop_points']:.2f} | {s['reduction']['params_x']:.2f} | {s['reduction']['macs_x']:.2f} | "
                     f"{doc[key + '_s']:.0f} s |")
    lines += ["", f"Measured with `edgelr bench` in the same {doc['bench'][0]['sessions']} interleaved sessions "
              "(reference: MAC-driven; speed-up = reference / model, 95 % interval of the per-block ratios):", "",
              "| model | sha256 | median ms | session CV | speed-up vs MAC-driven |", "|---|---|---|---|---|"]
    for r in doc["bench"]:
        lines.append(f"| {r['model']} | {doc.get('sha256', {}).get(r['model'], '-')} | {r['median_ms']:.4f} | "
                     f"{r['session_cv']} | {r['speedup']} |")
    lines += ["", *doc.get("notes", [])]
    return lines


if __name__ == "__main__":
    sys.exit(main())
