"""Benchmark: the distillation fine-tune and QAT of `edgelr compress` in one process vs on tf.distribute.

Prepares once: the Fashion-MNIST reference CNN of bench_compress_fmnist.py trained briefly on a subset
(the teacher), factorized at ``--rank-policy`` (the student), the teacher's outputs, and the data splits.
Then runs the same job in fresh processes: one process (``single``), ``mirrored`` (MirroredStrategy over 2
logical CPU devices) and ``multiworker`` (two worker processes on loopback, MultiWorkerMirroredStrategy with
RING all-reduce). The job is :func:`edgelr.compress.distill.distill` (``--ft-epochs``, global batch
``--batch-size``) then QAT (:func:`edgelr.compress.qat.quantize_aware`, ``calibrate_ranges``, one epoch of
distill), as `edgelr compress` runs them.

Reports: wall time of each phase and of the whole process (TensorFlow import and strategy start included),
the max abs difference of every weight against the one-process run, after fine-tuning and after QAT, float
test accuracy, and whether the two workers end bitwise equal. On this 2-core host the distributed runs share
the same two cores, so they cannot be faster: they show the overhead and the closeness, not a speed-up.

Usage: .venv/bin/python tests/perf/bench_distribute.py [--train-samples 8000] [--ft-epochs 2]
       [--max-train 6000] [--batch-size 128]
Writes reports/distribute.md and reports/distribute.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def prepare(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Teacher, student and data in ``work``; returns what was prepared."""
    from bench_compress_fmnist import reference_cnn

    from edgelr.compress.distill import teacher_outputs
    from edgelr.data import load_data
    from edgelr.rewrite import factorize_model
    from edgelr.rewrite.cost import model_cost
    from edgelr.tfcompat import keras2

    k2 = keras2()
    k2.utils.set_random_seed(0)
    data = load_data("fashion-mnist").subset(train=args.train_samples)
    teacher = reference_cnn(k2)
    teacher.compile(k2.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    teacher.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=128, verbose=2)
    student, _ = factorize_model(teacher, rank_policy=args.rank_policy, target="host", progress=False)
    if args.no_dropout:  # dropout masks are drawn per replica: without it the runs can match to rounding
        for layer in student.layers:
            if isinstance(layer, k2.layers.Dropout):
                layer.rate = 0.0
    student.save(work / "student.keras")
    x_val, y_val = data.x_val[:args.val_samples], data.y_val[:args.val_samples]
    x_test, y_test = data.x_test[:args.test_samples], data.y_test[:args.test_samples]
    np.savez(work / "data.npz", x_train=data.x_train, y_train=data.y_train, x_val=x_val, y_val=y_val,
             x_test=x_test, y_test=y_test, teacher=teacher_outputs(teacher, data.x_train))
    return {"train": len(data.x_train), "val": len(x_val), "test": len(x_test),
            "teacher_params_macs": model_cost(teacher), "student_params_macs": model_cost(student)}


def run_job(role: str, work: Path, args: argparse.Namespace) -> None:
    """One process of the benchmark: ``role`` single | mirrored | multiworker (TF_CONFIG from the environment)."""
    t_proc = time.perf_counter()
    from edgelr.compress.distribute import parse_distribute, start

    dist = None if role == "single" else start(parse_distribute("mirrored:2" if role == "mirrored" else role, 300))
    t_started = time.perf_counter()
    from edgelr import load_model
    from edgelr.compress.distill import DistillConfig, distill
    from edgelr.compress.evaluate import detect_task, evaluate
    from edgelr.compress.qat import calibrate_ranges, quantize_aware

    d = dict(np.load(work / "data.npz"))
    student = load_model(work / "student.keras")
    task = detect_task(student, 10)
    cfg = DistillConfig(epochs=args.ft_epochs, batch_size=args.batch_size, learning_rate=1e-3, patience=args.ft_epochs,
                        max_train=args.max_train, seed=0)
    t0 = time.perf_counter()
    ft = distill(student, d["teacher"], d["x_train"], d["y_train"], d["x_val"], d["y_val"], task, cfg,
                 progress=False, distribution=dist)
    ft_s = time.perf_counter() - t0
    test_ft = evaluate(student, d["x_test"], d["y_test"], task)
    t1 = time.perf_counter()
    qat = quantize_aware(student)
    calibrate_ranges(qat.model, d["x_train"][:256], batch_size=args.batch_size)
    qcfg = DistillConfig(epochs=1, batch_size=args.batch_size, learning_rate=2e-4, patience=1,
                         max_train=args.max_train, seed=0)
    qft = distill(qat.model, d["teacher"], d["x_train"], d["y_train"], d["x_val"], d["y_val"], task, qcfg,
                  progress=False, distribution=dist)
    qat_s = time.perf_counter() - t1
    test_qat = evaluate(qat.model, d["x_test"], d["y_test"], task)
    name = role if dist is None or dist.spec.num_workers == 1 else f"{role}{dist.spec.worker}"
    arrays = {f"ft{i}": w for i, w in enumerate(student.get_weights())}
    arrays.update({f"qat{i}": w for i, w in enumerate(qat.model.get_weights())})
    np.savez(work / f"{name}.npz", **arrays)
    (work / f"{name}.json").write_text(json.dumps({
        "replicas": 1 if dist is None else dist.replicas, "start_s": t_started - t_proc, "ft_s": ft_s, "qat_s": qat_s,
        "val_ft": ft.best_val, "val_qat": qft.best_val, "test_ft": test_ft, "test_qat": test_qat,
        "ft_history": ft.history}))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _spawn(role: str, work: Path, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--role", role, "--work", str(work), *argv], env=env,
                            cwd=ROOT, start_new_session=True)


def _wait(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # a worker waiting for its cluster ignores SIGTERM
            p.wait()
        if p.returncode:
            raise SystemExit(f"bench_distribute: {p.args[3]} exited {p.returncode}")


def _weights(path: Path, prefix: str) -> list[np.ndarray]:
    z = np.load(path)
    keys = sorted((k for k in z.files if k.startswith(prefix) and k[len(prefix):].isdigit()),
                  key=lambda k: int(k[len(prefix):]))
    return [z[k] for k in keys]


def _max_abs(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b) if x.size)


def render(doc: dict[str, Any]) -> str:
    a, p = doc["args"], doc["prepared"]
    lines = [
        f"# Fine-tuning on tf.distribute: one process vs mirrored(2) vs multiworker(2)"
        f"{' (student Dropout off)' if a.get('no_dropout') else ''}", "",
        f"Generated by `tests/perf/bench_distribute.py` on {doc['host']} ({doc['cpus']} CPUs), {doc['date']}. "
        f"Load average (1 min) before / after: {doc['load_before']:.2f} / {doc['load_after']:.2f}.", "",
        f"Job: the Fashion-MNIST reference CNN (bench_compress_fmnist.py) trained {a['epochs']} epoch(s) on "
        f"{p['train']} samples, factorized at `{a['rank_policy']}` (params {p['teacher_params_macs'][0]:,} -> "
        f"{p['student_params_macs'][0]:,}, MACs {p['teacher_params_macs'][1]:,} -> {p['student_params_macs'][1]:,}); "
        f"distillation fine-tune {a['ft_epochs']} epoch(s) of {a['max_train']} samples, global batch "
        f"{a['batch_size']}, then QAT (1 epoch). Validation {p['val']}, test {p['test']} samples.", "",
        "| run | replicas | process s | start s | fine-tune s | QAT s | max abs dW fine-tune | max abs dW QAT "
        "| test acc fine-tuned % | test acc QAT (float) % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        lines.append(f"| {r['name']} | {r['replicas']} | {r['process_s']:.1f} | {r['start_s']:.1f} | {r['ft_s']:.1f} "
                     f"| {r['qat_s']:.1f} | {r['dw_ft']:.2g} | {r['dw_qat']:.2g} | {r['test_ft']:.2f} "
                     f"| {r['test_qat']:.2f} |")
    lines += ["", f"Workers bitwise equal after fine-tuning and after QAT: **{doc['workers_equal']}**.", ""]
    return "\n".join(lines) + "\n"


def render_all(out: Path) -> str:
    """distribute.md: the run with the model as it is, then (when there) the one with Dropout off, then notes."""
    docs = [json.loads((out / n).read_text()) for n in ("distribute.json", "distribute_no_dropout.json")
            if (out / n).exists()]
    notes = [n for d in docs for n in d.pop("notes", [])]
    text = "\n".join(render(d) for d in docs)
    return text + ("\n## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1, help="training epochs of the reference CNN (the teacher)")
    ap.add_argument("--train-samples", type=int, default=8000)
    ap.add_argument("--val-samples", type=int, default=1000)
    ap.add_argument("--test-samples", type=int, default=2000)
    ap.add_argument("--rank-policy", default="macs:0.5")
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--max-train", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--no-dropout", action="store_true",
                    help="fine-tune the student with its Dropout rate set to 0 (written to distribute_no_dropout.json)")
    ap.add_argument("--out", default=str(ROOT / "reports"))
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--render-only", action="store_true", help="rewrite distribute.md from distribute.json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.role == "prepare":
        (Path(args.work) / "prepared.json").write_text(json.dumps(prepare(Path(args.work), args)))
        return 0
    if args.role:
        run_job(args.role, Path(args.work), args)
        return 0
    if args.render_only:
        (out / "distribute.md").write_text(render_all(out))
        return 0
    passed = sys.argv[1:]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory(prefix="bench-distribute-") as tmp:
        work = Path(tmp)
        load_before = os.getloadavg()[0]
        _wait([_spawn("prepare", work, passed, env)], 3600)
        prepared = json.loads((work / "prepared.json").read_text())
        timings: dict[str, float] = {}
        for role in ("single", "mirrored"):
            t0 = time.perf_counter()
            _wait([_spawn(role, work, passed, env)], 3600)
            timings[role] = time.perf_counter() - t0
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        t0 = time.perf_counter()
        procs = [_spawn("multiworker", work, passed,
                        {**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
                 for i in range(2)]
        _wait(procs, 3600)
        timings["multiworker0"] = timings["multiworker1"] = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
        runs = []
        for name in ("single", "mirrored", "multiworker0", "multiworker1"):
            r = json.loads((work / f"{name}.json").read_text())
            r.update(name=name, process_s=timings[name],
                     dw_ft=_max_abs(_weights(work / f"{name}.npz", "ft"), _weights(work / "single.npz", "ft")),
                     dw_qat=_max_abs(_weights(work / f"{name}.npz", "qat"), _weights(work / "single.npz", "qat")))
            runs.append(r)
        equal = all(np.array_equal(x, y) for prefix in ("ft", "qat")
                    for x, y in zip(_weights(work / "multiworker0.npz", prefix),
                                    _weights(work / "multiworker1.npz", prefix)))
    doc = {"host": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_before": load_before, "load_after": load_after, "args": vars(args) | {"role": None, "work": None},
           "prepared": prepared, "runs": runs, "workers_equal": equal, "notes": []}
    out.mkdir(parents=True, exist_ok=True)
    name = "distribute_no_dropout.json" if args.no_dropout else "distribute.json"
    (out / name).write_text(json.dumps(doc, indent=1, default=float))
    (out / "distribute.md").write_text(render_all(out))
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
