"""The files of a compress run, written atomically, and its rows in the results history.

Written to ``out_dir`` (into a temporary sibling directory first, renamed into place at the end, so a
failed run never leaves half a directory):

- ``model.tflite``     the compressed model, quantized per the target (or ``quantize``)
- ``model.keras``      the factorized, fine-tuned float model (tf_keras)
- ``baseline.tflite``  the original model converted with the same quantization (fair comparisons)
- ``report.json``      everything measured (see :class:`edgelr.compress.result.CompressResult`)
- ``layers.csv``       one row per original layer: method, ranks, params and MACs before/after, QAT
- ``summary.md``       a short human summary (:func:`summary_markdown`)
- ``names.json``       the model names of the two ``.tflite`` files (``<model>``, ``<model> (baseline)``),
  read by ``edgelr bench`` (:mod:`edgelr.compress.names`)
- ``search.csv`` / ``search.png``  candidates of the accuracy-aware rank search (``max_accuracy_drop``)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgelr.compress.names import NAMES_FILE, output_names
from edgelr.compress.result import CompressResult
from edgelr.errors import UsageError

OUTPUT_FILES = ("model.tflite", "model.keras", "baseline.tflite", "report.json", "layers.csv", "summary.md",
                NAMES_FILE)


def check_out_dir(out_dir: str | os.PathLike[str] | None, force: bool) -> Path | None:
    """``out_dir`` as a Path; an existing non-empty directory (or a file) raises UsageError unless ``force``."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is an existing file; pass a directory path")
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"output directory {out} already exists and is not empty; pass --force to replace it "
                         "or choose another --out")
    return out


def summary_markdown(result: CompressResult) -> str:
    """The ``summary.md`` text."""
    s, r = result.summary, result.report
    task_metric = s["metric"]
    unit = " %" if task_metric == "accuracy" else ""

    def f(v: Any, fmt: str = ".2f") -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [f"# edgelr compress: {s['model']} for {s['target']}", "",
             result.message, "",
             "| | original | compressed | ratio |", "|---|---:|---:|---:|",
             f"| params | {s['original']['params']:,} | {s['compressed']['params']:,} | {s['reduction']['params_x']:.2f}x |",
             f"| MACs | {s['original']['macs']:,} | {s['compressed']['macs']:,} | {s['reduction']['macs_x']:.2f}x |",
             f"| {task_metric} (float, test) | {f(s['original']['score'])}{unit} | {f(s['compressed']['score_float'])}{unit} | |",
             f"| {task_metric} ({s['quantization']} .tflite, test) | {f(s['original']['tflite_score'])}{unit} | "
             f"{f(s['compressed']['tflite_score'])}{unit} | |",
             f"| .tflite size (bytes) | {s['original']['tflite_bytes']:,} | {s['compressed']['tflite_bytes']:,} | "
             f"{s['reduction']['tflite_size_x']:.2f}x |", ""]
    fac = r["factorized"]
    lines += [f"Accuracy path ({task_metric}, test): original {f(r['original']['test'])} -> factorized "
              f"{f(fac['test_before_finetune'])} -> fine-tuned {f(fac['test_after_finetune'])} -> "
              f"{s['quantization']} .tflite {f(s['compressed']['tflite_score'])}.", ""]
    if fac.get("layers_not_factorized"):
        lines += ["Layers kept as they were: " + "; ".join(f"{x['layer']} ({x['reason']})"
                                                         for x in fac["layers_not_factorized"]) + ".", ""]
    q = r["qat"]
    if q.get("applied"):
        lines += [f"Quantization-aware: {', '.join(q['quantization_aware']) or 'none'}. "
                  f"Float during QAT (int8 by calibration): {', '.join(q['float']) or 'none'}.", ""]
    else:
        lines += [f"QAT: not applied ({q.get('error')}).", ""]
    path = r["tflite"].get("int8_path") or {}
    if "val_qat_tflite" in path:
        lines += [f"int8 model used: {path['used']} (validation {task_metric}: QAT {path['val_qat_tflite']:.4g}, "
                  f"post-training {path['val_post_training_tflite']:.4g}).", ""]
    ops = r["tflite"]["validation"]["ops"]
    lines += [f"TFLite ops: {', '.join(f'{k} x{v}' for k, v in sorted(ops['ops'].items()))}; XNNPACK takes "
              f"{ops['num_delegated']} of {ops['num_nodes']} nodes"
              + (f" (not: {', '.join(sorted(ops['not_delegated']))})" if ops["not_delegated"] else "") + ".", ""]
    if r["tflite"]["notes"]:
        lines += ["Conversion notes: " + "; ".join(r["tflite"]["notes"]), ""]
    if r.get("search"):
        lines += ["## Rank search candidates", "", "See search.csv and search.png.", ""]
        lines += _candidates_md(r["search"]["candidates"]) + [""]
    return "\n".join(lines)


def _candidates_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    cols = ["label", "macs", "params", "macs_x", "val_score", "tried", "tflite_drop"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("" if v is None else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool)
                                               else f"{v:.3g}" if isinstance(v, float) else str(v)))
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_outputs(out: Path, result: CompressResult) -> None:
    """Write every output of ``result`` to ``out`` atomically (an existing ``out`` is replaced whole);
    sets ``result.summary["outputs"]`` and ``result.report["layers"]``."""
    search_info = result.report.get("search")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "model.tflite").write_bytes(result.tflite)
        (tmp / "baseline.tflite").write_bytes(result.baseline_tflite)
        result.model.save(str(tmp / "model.keras"))
        result.layers.to_csv(tmp / "layers.csv", index=False)
        outputs = {n: str(out / n) for n in OUTPUT_FILES}
        if search_info:
            import pandas as pd

            pd.DataFrame(search_info["candidates"]).to_csv(tmp / "search.csv", index=False)
            outputs["search.csv"] = str(out / "search.csv")
            from edgelr.compress.search import plot_candidates

            if plot_candidates(search_info, tmp / "search.png", result.summary):
                outputs["search.png"] = str(out / "search.png")
        result.summary["outputs"] = outputs
        result.report["layers"] = json.loads(result.layers.to_json(orient="records"))
        (tmp / "report.json").write_text(json.dumps(_jsonable(result.report), indent=2))
        (tmp / "summary.md").write_text(summary_markdown(result))
        (tmp / NAMES_FILE).write_text(json.dumps(output_names(result.summary["model"]), indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def append_history(history: str, result: CompressResult, name: str, target: str) -> None:
    """Append the run's host rows to ``history``: size, params, MACs (and accuracy) of ``<name> (baseline)``
    and ``<name>``, the names of ``names.json``."""
    import pandas as pd

    from edgelr.report.history import append_run

    s = result.summary
    rows: list[dict[str, Any]] = []
    names = output_names(name)
    for model_name, part in ((names["baseline.tflite"], s["original"]), (names["model.tflite"], s["compressed"])):
        values = [("model_size", part["tflite_bytes"], "bytes"), ("params", part["params"], "count"),
                  ("macs", part["macs"], "count")]
        if s["metric"] == "accuracy" and part["tflite_score"] is not None:
            values.append(("accuracy", part["tflite_score"], "%"))
        rows += [{"model": model_name, "metric": m, "value": float(v), "unit": u} for m, v, u in values]
    frame = pd.DataFrame(rows)
    frame["device"] = "host"
    frame["target"] = target
    frame["transport"] = "local"
    frame["tool"] = "compress"
    frame["sample"] = -1
    frame["note"] = s["quantization"]
    append_run(frame, history, kind="compress")
