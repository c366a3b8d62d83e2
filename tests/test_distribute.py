"""Fine-tuning on tf.distribute (``compress --distribute``, :mod:`edgelr.compress.distribute`).

Real parts: two worker processes on loopback (MultiWorkerMirroredStrategy, RING all-reduce, free ports) that
then run, in the same processes, the one-process reference (worker 0) and MirroredStrategy over 2 logical CPU
devices (worker 1); and a worker whose peer never comes, through the CLI. Each run is :func:`_fine_tune`
(distillation fine-tune of a tiny CNN on synthetic data labelled by its teacher, then QAT) and saves its
weights; the tests compare them. All processes start at once (module fixture).

Tolerances, measured here: the two workers end bitwise equal (they start from the chief's weights, worker 1
is given other ones to check it, and take the chief's after every epoch). Against one process the distributed runs see the same batches and the same mean loss per step, only
summed in another order: fine-tuned weights differ by 3e-8 (asserted < 1e-5). QAT weights differ by 2.6e-4:
tfmot's activation ranges are moving averages of each replica's batch min/max, and half a batch has other
extremes than the whole one (asserted < 1e-3). The same job with other batches (another seed) differs by 9e-3,
so both bounds catch a wrong split of the data. Validation accuracy: within one sample.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FT_TOL, QAT_TOL = 1e-5, 1e-3


def job(out: str) -> None:
    """One worker process of the tests (TF_CONFIG from the environment): the multiworker run, then in the same
    process worker 0 runs the one-process reference and worker 1 (its CPU split into 2 logical devices before
    any op) the mirrored run. Each run saves ``{run}.npz`` (weights after fine-tuning and after QAT, and the
    validation scores) in ``out``."""
    from edgelr.compress.distribute import Distribution, parse_distribute, start
    from edgelr.tfcompat import tf

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    if index == 1:
        tfm = tf()
        tfm.config.set_logical_device_configuration(tfm.config.list_physical_devices("CPU")[0],
                                                    [tfm.config.LogicalDeviceConfiguration()] * 2)
    multi = start(parse_distribute("multiworker", 60))
    np.savez(Path(out) / f"multiworker{index}.npz", **_fine_tune(multi))
    if index == 0:
        np.savez(Path(out) / "single.npz", **_fine_tune(None))
    else:
        tfm = tf()
        devices = [d.name for d in tfm.config.list_logical_devices("CPU") if "/task:1/" in d.name]
        assert len(devices) == 2, devices
        strategy = tfm.distribute.MirroredStrategy(devices=devices,  # as start() builds it on a CPU host
                                                   cross_device_ops=tfm.distribute.ReductionToOneDevice())
        mirrored = Distribution(parse_distribute("mirrored:2"), strategy)
        np.savez(Path(out) / "mirrored.npz", **_fine_tune(mirrored))


def _fine_tune(dist: Any) -> dict[str, np.ndarray]:
    """Distillation fine-tune (2 epochs) and QAT (1 epoch) of a tiny CNN on synthetic 8x8 inputs labelled by its
    teacher; the same seeds, data and batches every call."""
    from edgelr.compress.distill import DistillConfig, distill, teacher_outputs
    from edgelr.compress.evaluate import Task
    from edgelr.compress.qat import calibrate_ranges, quantize_aware
    from edgelr.tfcompat import keras2

    k2 = keras2()

    def cnn(seed: int) -> Any:
        k2.utils.set_random_seed(seed)
        inp = k2.Input((8, 8, 1))
        h = k2.layers.Conv2D(8, 3, activation="relu", padding="same")(inp)
        h = k2.layers.MaxPooling2D()(h)
        h = k2.layers.Flatten()(h)
        h = k2.layers.Dense(16, activation="relu")(h)
        return k2.Model(inp, k2.layers.Dense(10, activation="softmax")(h))

    teacher, student = cnn(1), cnn(2)
    if dist is not None and not dist.is_chief:  # a worker that starts elsewhere must end with the chief's model
        student.set_weights([w + 0.01 for w in student.get_weights()])
    x = np.random.default_rng(0).random((1600, 8, 8, 1), dtype=np.float32)
    y = teacher_outputs(teacher, x).argmax(-1)  # labels the teacher's: a task the student can learn
    x_train, y_train, x_val, y_val = x[:1000], y[:1000], x[1000:], y[1000:]
    t_out = teacher_outputs(teacher, x_train)
    task = Task(True, 10, "probs")
    cfg = DistillConfig(epochs=2, batch_size=64, learning_rate=1e-3, alpha=0.5, patience=5, max_train=900, seed=0)
    ft = distill(student, t_out, x_train, y_train, x_val, y_val, task, cfg, progress=False, distribution=dist)
    qat = quantize_aware(student)
    calibrate_ranges(qat.model, x_train[:256], batches=4)
    qcfg = DistillConfig(epochs=1, batch_size=64, learning_rate=2e-4, alpha=0.5, max_train=500, seed=1)
    qft = distill(qat.model, t_out, x_train, y_train, x_val, y_val, task, qcfg, progress=False, distribution=dist)
    out = {f"ft{i}": w for i, w in enumerate(student.get_weights())}
    out.update({f"qat{i}": w for i, w in enumerate(qat.model.get_weights())})
    out["val"] = np.array([ft.best_val, qft.best_val, *[h["val_score"] for h in ft.history]])
    return out


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(extra)
    return env


def _wait_all(procs: dict[str, subprocess.Popen[str]], deadline: float) -> dict[str, tuple[int, str]]:
    """Each process's (exit code, stderr); a process still running at ``deadline`` is killed (SIGKILL: a
    worker waiting for its cluster ignores SIGTERM)."""
    results = {}
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        results[name] = (proc.returncode, err)
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """All processes at once: the two workers of :func:`job`, and a worker whose peer never comes (through the
    CLI, 3 s timeout). Returns the saved arrays per run and each process's (code, stderr)."""
    out = tmp_path_factory.mktemp("distribute")
    ports, lonely = _free_ports(2), _free_ports(2)
    model = out / "m.keras"
    model.write_bytes(b"not read: the cluster fails first")
    procs = {
        "worker0": [sys.executable, __file__, str(out)], "worker1": [sys.executable, __file__, str(out)],
        "lonely": [sys.executable, "-m", "edgelr.cli.main", "compress", str(model), "--data", "digits",
                   "--out", str(out / "lonely"), "--distribute", "multiworker", "--worker-timeout", "3"],
    }
    envs = {"worker0": _env(TF_CONFIG=_tf_config(ports, 0)), "worker1": _env(TF_CONFIG=_tf_config(ports, 1)),
            "lonely": _env(TF_CONFIG=_tf_config(lonely, 0))}
    t0 = time.monotonic()
    started = {name: subprocess.Popen(args, env=envs[name], cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)
               for name, args in procs.items()}
    done = _wait_all(started, t0 + 300)
    loaded = {p.stem: dict(np.load(p)) for p in out.glob("*.npz")}
    return {"arrays": loaded, "procs": done, "seconds": time.monotonic() - t0}


def _weights(run: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [run[k] for k in sorted((k for k in run if k.startswith(prefix) and k[len(prefix):].isdigit()),
                                   key=lambda k: int(k[len(prefix):]))]


def _max_abs(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [w.shape for w in a] == [w.shape for w in b]
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b) if x.size)


def _ok(runs: dict[str, Any], *names: str) -> None:
    for name in names:
        code, err = runs["procs"][name]
        assert code == 0, f"{name} exited {code}: {err[-2000:]}"


def test_multiworker_workers_end_with_identical_weights(runs: dict[str, Any]) -> None:
    _ok(runs, "worker0", "worker1")
    w0, w1 = runs["arrays"]["multiworker0"], runs["arrays"]["multiworker1"]
    for prefix in ("ft", "qat"):
        a, b = _weights(w0, prefix), _weights(w1, prefix)
        assert len(a) == len(b) > 0
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), prefix
    assert np.array_equal(w0["val"], w1["val"])


@pytest.mark.parametrize("run", ["multiworker0", "mirrored"])
def test_distributed_fine_tune_matches_one_process(runs: dict[str, Any], run: str) -> None:
    _ok(runs, "worker0", "worker1")
    single, dist = runs["arrays"]["single"], runs["arrays"][run]
    assert _max_abs(_weights(dist, "ft"), _weights(single, "ft")) < FT_TOL
    assert _max_abs(_weights(dist, "qat"), _weights(single, "qat")) < QAT_TOL
    assert 0 < single["val"][0] <= 100
    # validation accuracy in % on 600 samples: within one sample
    assert np.max(np.abs(dist["val"] - single["val"])) <= 100 / 600 + 1e-9


def test_missing_worker_is_one_line_within_the_deadline(runs: dict[str, Any]) -> None:
    code, err = runs["procs"]["lonely"]
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err[-2000:]
    assert lines[-1].startswith("edgelr: error: --distribute multiworker: the cluster did not assemble within 3 s")
    assert "127.0.0.1:" in lines[-1] and "--worker-timeout" in lines[-1]
    assert not any("E0000" in line or "Traceback" in line for line in lines), err[-2000:]


@pytest.mark.parametrize("tf_config, expected", [
    (None, "TF_CONFIG is not set"),
    ("{'cluster': 1}", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}',
     "lists ['127.0.0.1:1'] twice"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     "has task worker index 3 but cluster.worker lists 1 task(s)"),
    ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}',
     "has address '127.0.0.1' in cluster.worker; expected host:port"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "has task type(s) ['ps']"),
])
def test_bad_tf_config_is_one_clear_line(tf_config: str | None, expected: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from edgelr.cli.main import main

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(model), "--data", "digits", "--out", str(tmp_path / "o"), "--distribute", "multiworker"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert len(err) == 1 and err[0].startswith("edgelr: error: --distribute multiworker: TF_CONFIG "), err
    assert expected in err[0] and "set it on every worker" in err[0]


def test_distribute_spec_and_usage_errors() -> None:
    from edgelr.compress.distribute import parse_distribute
    from edgelr.compress.options import check_options
    from edgelr.errors import UsageError

    env = {"TF_CONFIG": '{"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"]}, "task": {"type": "worker", '
                        '"index": 1}}'}
    spec = parse_distribute("multiworker", 5, env)
    assert (spec.num_workers, spec.worker, spec.is_chief) == (3, 2, False)
    chief = parse_distribute("multiworker", 5, {"TF_CONFIG": env["TF_CONFIG"].replace('"worker", "index": 1',
                                                                                     '"chief", "index": 0')})
    assert (chief.worker, chief.is_chief) == (0, True)
    assert parse_distribute("mirrored:3").replicas == 3 and parse_distribute("mirrored").replicas is None
    for bad, msg in (("mirror", "--distribute: got 'mirror'"), ("mirrored:0", "mirrored:N with N >= 1"),
                     ("multiworker:2", "--distribute: got 'multiworker:2'")):
        with pytest.raises(UsageError, match=msg.replace("(", r"\(")):
            parse_distribute(bad, 5, env)
    with pytest.raises(UsageError, match="--worker-timeout: got 0"):
        parse_distribute("mirrored", 0)
    with pytest.raises(UsageError, match="--distribute: not combined with --nuclear"):
        check_options({"distribute": "mirrored", "nuclear": 0.05})
    assert check_options({"distribute": "mirrored:2"}).distribute.replicas == 2


if __name__ == "__main__":  # a worker process of the `runs` fixture: OUT_DIR
    job(sys.argv[1])
