"""Benchmark: the seed methods for low-rank training (issue 14 part 4) against the plain pipeline.

For the Fashion-MNIST reference CNN (tests/perf/bench_compress_fmnist.py) and JapaneseVowels' LSTM(128)
(tests/perf/bench_compress_lstm.py; ``make perf-deps``), at ~2x / 4x / 8x fewer MACs, runs ``compress``
(int8 full-integer, post-training quantization; same fine-tuning settings for every column) with:

- plain: the rank policy ``macs:F`` (F by bisection for the whole-model target; CNN ``auto`` = Tucker-2 +
  SVD; LSTM ``svd-recurrent``);
- data-aware: the data-aware factorization option when it exists in ``CompressOptions`` (else n/a);
- + nuclear: ``nuclear`` (proximal SVT) during ``lowrank_epochs`` of training before factorization;
- + orthogonal: the He-Jiang-Wu flow (``overparam_epochs`` over-parameterized with soft orthogonality, then
  the same policy) and soft orthogonality of the factors during fine-tuning;
- + DeepTwist: ``deeptwist_every`` during ``lowrank_epochs`` of training before factorization;
- + CV ranks: ``cv_folds=3`` over three policies of about the same MACs (``macs:F``, ``rank:N``,
  ``energy:E``, each bisected to the target), the most compressed within one SE of the best;
- tensor3 (LSTM only): the 3-D gate tensor by Tucker-2 (``method="tensor3"``, ``macs:F`` bisected for it).

Usage: .venv/bin/python tests/perf/bench_seed_methods.py [--parts fmnist,lstm] [--targets 2,4,8]
Writes reports/seed_methods.md and reports/seed_methods.json (rows appended as they finish).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _perfutil import bisect_policy, write_report

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("plain", "data-aware", "nuclear", "orthogonal", "deeptwist", "cv", "tensor3")


def bisect_kind(model: Any, target_x: float, kind: str, **kw: Any) -> tuple[str, float]:
    """An ``energy:E`` or ``rank:N`` policy whose whole-model MAC reduction is closest to ``target_x``."""
    from edgelr.rewrite import factorize_model
    from edgelr.rewrite.cost import model_cost

    full = model_cost(model)[1]

    def red(spec: str) -> float:
        fact, _ = factorize_model(model, rank_policy=spec, progress=False, **kw)
        return full / model_cost(fact)[1]

    best, err = ("", 1.0), float("inf")
    if kind == "rank":
        lo, hi = 1, 512
        while lo <= hi:
            n = (lo + hi) // 2
            x = red(f"rank:{n}")
            if abs(x - target_x) < err:
                best, err = (f"rank:{n}", x), abs(x - target_x)
            lo, hi = (n + 1, hi) if x > target_x else (lo, n - 1)
        return best
    lo_e, hi_e = 0.3, 0.99999
    for _ in range(10):
        e = (lo_e + hi_e) / 2
        x = red(f"energy:{e:.5f}")
        if abs(x - target_x) < err:
            best, err = (f"energy:{e:.5f}", x), abs(x - target_x)
        lo_e, hi_e = (e, hi_e) if x > target_x else (lo_e, e)
    return best


def run_one(model: Any, data: Any, column: str, policy: str, extra: dict[str, Any], common: dict[str, Any]) -> dict:
    from edgelr.compress.pipeline import compress

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = compress(model, data, "host", Path(tmp) / "out", rank_policy=policy, **common, **extra)
        secs = time.perf_counter() - t0
    s, r = res.summary, res.report
    return {"column": column, "policy": policy, "macs_x": s["reduction"]["macs_x"],
            "params_x": s["reduction"]["params_x"], "acc_float_original": r["original"]["test"],
            "acc_factorized": r["factorized"]["test_before_finetune"],
            "acc_finetuned": r["factorized"]["test_after_finetune"], "acc_int8_original": s["original"]["tflite_score"],
            "acc_int8": s["compressed"]["tflite_score"], "seconds": secs,
            "ranks": {str(row["layer"]): str(row["ranks"]) for row in r["layers"] if not row.get("skipped")}}


def run_part(name: str, model: Any, data: Any, targets: list[float], common: dict[str, Any], method: str,
             columns: list[str], settings: dict[str, Any], out: Path, doc: dict[str, Any]) -> None:
    from edgelr.compress.options import CompressOptions

    has_data_aware = "data_aware" in {f.name for f in dataclasses.fields(CompressOptions)}
    for target_x in targets:
        kw = {"target": "host", "min_reduction": 0.1, "method": method}
        policy, planned = bisect_policy(model, target_x, "macs", steps=10, **kw)
        print(f"[{name}] {target_x:g}x: {policy} (planned {planned:.2f}x)", file=sys.stderr, flush=True)
        for column in columns:
            extra: dict[str, Any] = {"method": method}
            pol = policy
            if column == "data-aware":
                if not has_data_aware:
                    doc["rows"].append({"part": name, "target_x": target_x, "column": column, "na": "not landed"})
                    continue
                extra["data_aware"] = True
            elif column == "nuclear":
                extra.update(nuclear=settings["nuclear"], nuclear_every=settings["every"],
                             lowrank_epochs=settings["lowrank_epochs"])
            elif column == "orthogonal":
                extra.update(orthogonal=settings["orthogonal"], overparam_epochs=settings["lowrank_epochs"])
            elif column == "deeptwist":
                extra.update(deeptwist_every=settings["every"], lowrank_epochs=settings["lowrank_epochs"])
            elif column == "cv":
                others = [bisect_kind(model, target_x, kind, **kw)[0] for kind in ("rank", "energy")]
                extra.update(cv_folds=3, cv_policies=[policy, *others], cv_epochs=settings["cv_epochs"])
            elif column == "tensor3":
                if method != "svd-recurrent":
                    continue
                extra["method"] = "tensor3"
                pol, _ = bisect_policy(model, target_x, "macs", steps=10, **{**kw, "method": "tensor3"})
            try:
                row = run_one(model, data, column, pol, extra, common)
            except Exception as exc:  # a failing method must not lose the other columns
                row = {"column": column, "policy": pol, "error": f"{type(exc).__name__}: {exc}"}
            row.update(part=name, target_x=target_x, loadavg=os.getloadavg()[0])
            doc["rows"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            (out / "seed_methods.json").write_text(json.dumps(doc, indent=1))


def render(doc: dict[str, Any]) -> list[str]:
    meta = doc["meta"]
    md = ["# Seed methods for low-rank training: int8 accuracy at ~2x / 4x / 8x fewer MACs", "",
          f"Command: `{meta['command']}` ({meta['date_utc']}, {meta['seconds'] / 60:.0f} min; 2 shared cores, load "
          f"average {meta['loadavg_start']:.1f} at the start, {meta['loadavg_end']:.1f} at the end).", ""]
    for part, p in meta["parts"].items():
        md += [f"## {part}", "", p["description"], "",
               "Cells: int8 `.tflite` test accuracy % (MACs reduction reached). Original float "
               f"{p['acc_float']:.2f} %, original int8 {p['acc_int8']:.2f} %.", "",
               "| target | " + " | ".join(meta["columns"]) + " |", "|---|" + "---|" * len(meta["columns"])]
        rows = [r for r in doc["rows"] if r["part"] == part]
        for t in sorted({r["target_x"] for r in rows}):
            cells = []
            for c in meta["columns"]:
                r = next((r for r in rows if r["target_x"] == t and r["column"] == c), None)
                if r is None:
                    cells.append("")
                elif "na" in r:
                    cells.append(r["na"])
                elif "error" in r:
                    cells.append(f"error: {r['error'][:60]}")
                else:
                    cells.append(f"{r['acc_int8']:.2f} ({r['macs_x']:.2f}x)")
            md.append(f"| {t:g}x | " + " | ".join(cells) + " |")
        md += ["", "Policies: " + "; ".join(f"{r['target_x']:g}x {r['column']} `{r['policy']}`" for r in rows
                                            if "policy" in r and r["column"] in ("plain", "cv", "tensor3")), ""]
    md += ["## Notes", "", *doc.get("notes", []), ""]
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="fmnist,lstm")
    ap.add_argument("--targets", default="2,4,8")
    ap.add_argument("--columns", default=",".join(COLUMNS))
    ap.add_argument("--fmnist-train", type=int, default=6000, help="CNN training subset")
    ap.add_argument("--fmnist-test", type=int, default=2000, help="test subset")
    ap.add_argument("--fmnist-ft", type=int, default=2000, help="training samples per fine-tuning epoch")
    ap.add_argument("--lstm-epochs", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "reports"))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render_only:
        doc = json.loads((out / "seed_methods.json").read_text())
        write_report(out / "seed_methods.md", render(doc))
        return 0

    from edgelr.compress.evaluate import detect_task  # noqa: F401  (edgelr importable)
    from edgelr.data import load_data
    from edgelr.tfcompat import keras2

    k2 = keras2()
    t_start = time.perf_counter()
    targets = [float(v) for v in args.targets.split(",")]
    columns = args.columns.split(",")
    doc: dict[str, Any] = {"meta": {"columns": columns, "parts": {}, "loadavg_start": os.getloadavg()[0],
                                    "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, "rows": []}
    doc["meta"]["command"] = ".venv/bin/python tests/perf/bench_seed_methods.py " + " ".join(sys.argv[1:])
    common = {"qat": False, "progress": False, "batch_size": 128, "learning_rate": 1e-3}
    if "fmnist" in args.parts:
        from bench_compress_fmnist import reference_cnn

        k2.utils.set_random_seed(0)
        data = load_data("fashion-mnist").subset(train=args.fmnist_train, test=args.fmnist_test)
        model = reference_cnn(k2)
        model.compile(k2.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=2, batch_size=128, verbose=0)
        settings = {"nuclear": 0.05, "every": 4, "lowrank_epochs": 1, "orthogonal": 1e-3, "cv_epochs": 1}
        part_common = {**common, "epochs": 1, "max_train": args.fmnist_ft}
        doc["meta"]["parts"]["Fashion-MNIST CNN"] = {
            "description": (f"Reference CNN (5 convs + 2 dense, ~73 M MACs) trained 2 epochs on the first "
                            f"{args.fmnist_train} training images; test on the first {args.fmnist_test}. Every "
                            f"column: 1 epoch of distillation fine-tuning on {args.fmnist_ft} samples, batch 128, "
                            "lr 1e-3, no QAT (post-training int8). Low-rank training before factorization: 1 epoch "
                            f"(same sampling). Settings: {settings}."),
            "settings": settings}
        from edgelr.compress.evaluate import evaluate  # noqa: F401
        run_part("Fashion-MNIST CNN", model, data, targets, part_common, "auto", [c for c in columns if c != "tensor3"],
                 settings, out, doc)
        rows = [r for r in doc["rows"] if r["part"] == "Fashion-MNIST CNN" and "acc_int8_original" in r]
        if rows:
            doc["meta"]["parts"]["Fashion-MNIST CNN"].update(acc_float=rows[0]["acc_float_original"],
                                                            acc_int8=rows[0]["acc_int8_original"])
    if "lstm" in args.parts:
        from bench_compress_lstm import LENGTH, load

        k2.utils.set_random_seed(0)
        data = load()
        inp = k2.Input((LENGTH, 12))
        h = k2.layers.LSTM(128, name="lstm")(inp)
        model = k2.Model(inp, k2.layers.Dense(9, activation="softmax", name="head")(h), name="vowels_lstm")
        model.compile(k2.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=args.lstm_epochs, batch_size=32, verbose=0)
        settings = {"nuclear": 0.05, "every": 4, "lowrank_epochs": 5, "orthogonal": 1e-3, "cv_epochs": 5}
        part_common = {**common, "epochs": 10, "batch_size": 32}
        doc["meta"]["parts"]["JapaneseVowels LSTM"] = {
            "description": (f"LSTM(128) -> Dense(9), trained {args.lstm_epochs} epochs on 243 sequences (27 for "
                            "validation, 370 test). Every column: 10 epochs of distillation fine-tuning, batch 32, "
                            f"lr 1e-3, no QAT (int8 with the recurrent layer unrolled). Low-rank training before "
                            f"factorization: 5 epochs. Settings: {settings}."),
            "settings": settings}
        run_part("JapaneseVowels LSTM", model, data, targets, part_common, "svd-recurrent", columns, settings, out, doc)
        rows = [r for r in doc["rows"] if r["part"] == "JapaneseVowels LSTM" and "acc_int8_original" in r]
        if rows:
            doc["meta"]["parts"]["JapaneseVowels LSTM"].update(acc_float=rows[0]["acc_float_original"],
                                                              acc_int8=rows[0]["acc_int8_original"])
    doc["meta"]["seconds"] = time.perf_counter() - t_start
    doc["meta"]["loadavg_end"] = os.getloadavg()[0]
    (out / "seed_methods.json").write_text(json.dumps(doc, indent=1))
    write_report(out / "seed_methods.md", render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
