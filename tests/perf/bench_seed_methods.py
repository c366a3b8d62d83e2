"""Benchmark: the seed methods for low-rank training (issue 14 part 4) against the plain pipeline.

For the Fashion-MNIST reference CNN (tests/perf/bench_compress_fmnist.py) and JapaneseVowels' LSTM(128)
(tests/perf/bench_compress_lstm.py; ``make perf-deps``), at ~2x / 4x / 8x fewer MACs, runs ``compress``
(int8 full-integer, post-training quantization; same fine-tuning settings for every column) with:

- plain: the rank policy ``macs:F`` (F by bisection for the whole-model target; CNN ``auto`` = Tucker-2 +
  SVD; LSTM ``svd-recurrent``), weights-only factorization (``data_aware=False``);
- data-aware: the same with data-aware factorization (``data_aware=True``, compress's default); every
  column below is data-aware plus its method;
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


class Part:
    """One model and data set: the run setup, the original's int8 score and its teacher outputs, shared by
    every column (the columns differ only in their compress options)."""

    def __init__(self, name: str, model: Any, data: Any, common: dict[str, Any]) -> None:
        from edgelr.compress.attempt import AttemptRunner, RunSetup
        from edgelr.compress.convert import convert
        from edgelr.compress.evaluate import detect_task
        from edgelr.compress.options import check_options
        from edgelr.compress.validate import validate_tflite
        from edgelr.targets import get_target

        self.name, self.model, self.data, self.common = name, model, data, common
        self.target = get_target("host")
        opts = check_options(dict(common))
        self.setup = RunSetup(name, model, data, detect_task(model, data.num_classes), self.target, "int8", opts)
        self.base = AttemptRunner(self.setup, lambda msg: None)
        conv = convert(model, "int8", io_dtype=self.target.io_dtype, representative=self.base.calibration)
        val = validate_tflite(conv.content, data.x_test, data.y_test, classifier=True, progress=False)
        self.acc_float, self.acc_int8 = self.base.original_test, float(val.accuracy)

    def run(self, column: str, options: dict[str, Any]) -> dict[str, Any]:
        """Factorize (with the column's seed method), fine-tune, convert to int8 and validate."""
        from edgelr.compress.attempt import AttemptRunner
        from edgelr.compress.lowrank_train import train_and_factorize
        from edgelr.compress.options import check_options, resolve_plan_options, with_calibration
        from edgelr.rewrite.cost import model_cost

        def log(msg: str) -> None:
            print(f"  [{self.name} {column}] {msg}", file=sys.stderr, flush=True)

        opts = check_options({**self.common, **options})
        runner = AttemptRunner(dataclasses.replace(self.setup, options=opts), log)
        runner._teacher = self.base.teacher
        plan_options = with_calibration(resolve_plan_options(opts, self.target), opts, runner.calibration)
        t0 = time.perf_counter()
        fact, report = train_and_factorize(runner, plan_options, log)
        attempt = runner.run(fact, report, column)
        p0, m0 = model_cost(self.model)
        used = [str(p) for p in report["policy"] if str(p)]
        return {"column": column, "policy": used[0] if used else str(plan_options.rank_policy),
                "macs_x": m0 / attempt.macs,
                "params_x": p0 / attempt.params, "acc_factorized": attempt.test_factorized,
                "acc_finetuned": attempt.test_finetuned, "acc_int8": float(attempt.validation.accuracy),
                "seconds": time.perf_counter() - t0,
                "ranks": {str(r["layer"]): str(r["ranks"]) for _, r in report.iterrows() if not r["skipped"]}}


def run_part(part: Part, targets: list[float], method: str, columns: list[str], settings: dict[str, Any],
             out: Path, doc: dict[str, Any]) -> None:
    doc["meta"]["parts"][part.name].update(acc_float=part.acc_float, acc_int8=part.acc_int8)
    for target_x in targets:
        kw = {"target": "host", "min_reduction": 0.1, "method": method}
        policy, planned = bisect_policy(part.model, target_x, "macs", steps=10, **kw)
        print(f"[{part.name}] {target_x:g}x: {policy} (planned {planned:.2f}x)", file=sys.stderr, flush=True)
        for column in columns:
            extra: dict[str, Any] = {"method": method, "rank_policy": policy, "data_aware": True}
            if column == "plain":
                extra["data_aware"] = False
            elif column == "nuclear":
                extra.update(nuclear=settings["nuclear"], nuclear_every=settings["every"],
                             lowrank_epochs=settings["lowrank_epochs"])
            elif column == "orthogonal":
                extra.update(orthogonal=settings["orthogonal"], overparam_epochs=settings["lowrank_epochs"])
            elif column == "deeptwist":
                extra.update(deeptwist_every=settings["every"], lowrank_epochs=settings["lowrank_epochs"])
            elif column == "cv":
                others = [bisect_kind(part.model, target_x, kind, **kw)[0] for kind in ("rank", "energy")]
                extra.update(cv_folds=3, cv_policies=[policy, *others], cv_epochs=settings["cv_epochs"])
            elif column == "tensor3":
                if method != "svd-recurrent":
                    continue
                extra["method"] = "tensor3"
                extra["rank_policy"], _ = bisect_policy(part.model, target_x, "macs", steps=10,
                                                        **{**kw, "method": "tensor3"})
            try:
                row = part.run(column, extra)
            except Exception as exc:  # a failing method must not lose the other columns
                row = {"column": column, "policy": extra["rank_policy"], "error": f"{type(exc).__name__}: {exc}"}
            row.update(part=part.name, target_x=target_x, loadavg=os.getloadavg()[0])
            doc["rows"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            (out / f"seed_methods{doc['meta']['suffix']}.json").write_text(json.dumps(doc, indent=1))


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
    ap.add_argument("--lstm-epochs", type=int, default=40, help="LSTM training epochs")
    ap.add_argument("--lstm-ft", type=int, default=4, help="LSTM fine-tuning epochs (every column)")
    ap.add_argument("--lstm-lowrank", type=int, default=2, help="LSTM epochs of low-rank training before factorization")
    ap.add_argument("--out", default=str(ROOT / "reports"))
    ap.add_argument("--render-only", action="store_true",
                    help="merge seed_methods*.json (parts run as separate processes) into seed_methods.md")
    ap.add_argument("--suffix", default="", help="json file suffix (run the parts in two processes)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render_only:
        docs = [json.loads(p.read_text()) for p in sorted(out.glob("seed_methods*.json"))]
        doc = docs[0]
        for other in docs[1:]:  # a later file's row replaces an earlier one for the same cell (a re-run)
            keys = {(r["part"], r["target_x"], r["column"]) for r in other["rows"]}
            doc["rows"] = [r for r in doc["rows"] if (r["part"], r["target_x"], r["column"]) not in keys]
            doc["rows"] += other["rows"]
            doc["meta"]["parts"].update(other["meta"]["parts"])
            doc["meta"]["command"] += " ; " + other["meta"]["command"]
            doc["meta"]["seconds"] = max(doc["meta"].get("seconds", 0), other["meta"].get("seconds", 0))
            doc["meta"]["loadavg_end"] = other["meta"].get("loadavg_end", doc["meta"].get("loadavg_end", 0))
            doc.setdefault("notes", []).extend(other.get("notes", []))
        notes = out / "seed_methods_notes.md"
        if notes.exists():
            doc["notes"] = notes.read_text().splitlines()
        write_report(out / "seed_methods.md", render(doc))
        return 0

    from edgelr.data import load_data
    from edgelr.tfcompat import keras2

    k2 = keras2()
    t_start = time.perf_counter()
    targets = [float(v) for v in args.targets.split(",")]
    columns = args.columns.split(",")
    doc: dict[str, Any] = {"meta": {"columns": columns, "parts": {}, "loadavg_start": os.getloadavg()[0],
                                    "suffix": args.suffix,
                                    "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, "rows": []}
    doc["meta"]["command"] = ".venv/bin/python tests/perf/bench_seed_methods.py " + " ".join(sys.argv[1:])
    common = {"qat": False, "progress": False, "batch_size": 128, "learning_rate": 1e-3, "strip_names": True}
    if "fmnist" in args.parts:
        from bench_compress_fmnist import reference_cnn

        k2.utils.set_random_seed(0)
        data = load_data("fashion-mnist").subset(train=args.fmnist_train, test=args.fmnist_test)
        model = reference_cnn(k2)
        model.compile(k2.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(data.x_train, data.y_train, epochs=2, batch_size=128, verbose=0)
        settings = {"nuclear": 0.1, "every": 2, "lowrank_epochs": 1, "orthogonal": 1e-3, "cv_epochs": 1}
        part_common = {**common, "epochs": 1, "max_train": args.fmnist_ft}
        doc["meta"]["parts"]["Fashion-MNIST CNN"] = {
            "description": (f"Reference CNN (5 convs + 2 dense, ~73 M MACs) trained 2 epochs on the first "
                            f"{args.fmnist_train} training images; test on the first {args.fmnist_test}. Every "
                            f"column: 1 epoch of distillation fine-tuning on {args.fmnist_ft} samples, batch 128, "
                            "lr 1e-3, no QAT (post-training int8). Low-rank training before factorization: 1 epoch "
                            f"(same sampling). Settings: {settings}."),
            "settings": settings}
        run_part(Part("Fashion-MNIST CNN", model, data, part_common), targets, "auto",
                 [c for c in columns if c != "tensor3"], settings, out, doc)
    if "lstm" in args.parts:
        from bench_compress_lstm import build_lstm, load

        k2.utils.set_random_seed(0)
        data = load()
        model = build_lstm(k2)
        model.fit(data.x_train, data.y_train, epochs=args.lstm_epochs, batch_size=32, verbose=0)
        settings = {"nuclear": 0.1, "every": 2, "lowrank_epochs": args.lstm_lowrank, "orthogonal": 1e-3,
                    "cv_epochs": args.lstm_ft}
        part_common = {**common, "epochs": args.lstm_ft, "batch_size": 32}
        doc["meta"]["parts"]["JapaneseVowels LSTM"] = {
            "description": (f"LSTM(128) -> Dense(9), trained {args.lstm_epochs} epochs on 243 sequences (27 for "
                            f"validation, 370 test). Every column: {args.lstm_ft} epochs of distillation fine-tuning, "
                            "batch 32, lr 1e-3, no QAT (int8 with the recurrent layer unrolled). Low-rank training "
                            f"before factorization: {args.lstm_lowrank} epochs. Settings: {settings}."),
            "settings": settings}
        run_part(Part("JapaneseVowels LSTM", model, data, part_common), targets, "svd-recurrent", columns, settings,
                 out, doc)
    doc["meta"]["seconds"] = time.perf_counter() - t_start
    doc["meta"]["loadavg_end"] = os.getloadavg()[0]
    (out / f"seed_methods{args.suffix}.json").write_text(json.dumps(doc, indent=1))
    write_report(out / f"seed_methods{args.suffix}.md", render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
