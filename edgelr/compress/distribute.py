"""Fine-tuning on tf.distribute (``compress --distribute mirrored|multiworker``): the one place that reads
``TF_CONFIG``, creates the strategy and moves data and weights between replicas.

- ``mirrored`` (``mirrored:N``): one process, every GPU (or the first N); on a host without GPU the CPU is
  split into N logical devices (default 2), which exercises the distributed path but does not train faster.
- ``multiworker``: one process per worker, the cluster and this worker's task read from ``TF_CONFIG``;
  ``MultiWorkerMirroredStrategy`` with RING all-reduce (works on CPU hosts). Every worker runs the whole
  compress job; the chief (the ``chief`` task, else worker 0) writes the outputs and the history, the
  others write to a temporary directory that is removed.

Same model as one process, up to numerical noise: the global batch stays ``--batch-size`` (each global
batch is split over the replicas: per-replica batch x replicas = global batch), the batches are the ones a
single process draws (same seed, same order; ``AutoShardPolicy.DATA`` gives each worker its slice of every
batch), the loss of each replica is its examples' sum divided by the global batch size and the gradients
are summed over replicas, so one step sees the mean over the same examples. What differs: the summation
order, and BatchNormalization, which normalises each replica's slice (not synchronised).

After every epoch the workers take the chief's weights (one all-reduce in which only the chief contributes):
the trainable weights are equal anyway, but per-replica state such as QAT's input range (min/max) is
updated from each worker's own slice and would differ. Early stopping follows the chief's validation score,
so the workers take the same decisions and stay in step.

Failures are one line: a bad ``TF_CONFIG`` (``UsageError``, before TensorFlow is imported), a worker that
does not join within ``--worker-timeout`` seconds (TensorFlow's coordination service gives up at the
deadline instead of waiting for ever), a worker lost during training.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from edgelr.errors import EdgelrError, UsageError

KINDS = ("mirrored", "multiworker")
"""``--distribute`` choices (``mirrored`` also as ``mirrored:N``)."""
DEFAULT_CPU_REPLICAS = 2
"""Logical CPU devices of ``mirrored`` on a host without GPU."""
DEFAULT_WORKER_TIMEOUT = 120.0
"""Seconds the workers wait for each other at start (``--worker-timeout``)."""
_TASK_TYPES = ("chief", "worker")
_TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}\'')


class DistributeError(EdgelrError):
    """A distributed run could not start or lost a worker."""


@dataclass(frozen=True)
class DistributeSpec:
    """``--distribute`` resolved (no TensorFlow needed): what to start, and this process's place in it.

    Attributes
    ----------
    kind : str
        ``mirrored`` or ``multiworker``.
    replicas : int or None
        ``mirrored:N``: local replicas (None = every GPU, or ``DEFAULT_CPU_REPLICAS`` logical CPUs).
    tasks : tuple of (str, str)
        ``multiworker``: the cluster's (task type, ``host:port``), chief first, then workers by index.
    task : tuple of (str, int)
        ``multiworker``: this process's task type and index.
    timeout : float
        Seconds to wait for every worker to join (``multiworker``).
    """

    kind: str
    replicas: int | None = None
    tasks: tuple[tuple[str, str], ...] = ()
    task: tuple[str, int] = ("worker", 0)
    timeout: float = DEFAULT_WORKER_TIMEOUT

    @property
    def num_workers(self) -> int:
        return len(self.tasks) if self.kind == "multiworker" else 1

    @property
    def worker(self) -> int:
        """This process's rank among the workers (0 = the chief)."""
        if self.kind != "multiworker":
            return 0
        kind, index = self.task
        return [i for i, (t, _) in enumerate(self.tasks) if t == kind][index]

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the outputs (the chief task, else worker 0)."""
        return self.worker == 0

    def describe(self) -> str:
        if self.kind == "mirrored":
            return f"mirrored ({self.replicas or 'all'} local replicas)"
        return f"multiworker (worker {self.worker} of {self.num_workers}{', chief' if self.is_chief else ''})"


def parse_distribute(value: str | None, timeout: float = DEFAULT_WORKER_TIMEOUT,
                     environ: Mapping[str, str] | None = None) -> DistributeSpec | None:
    """``--distribute`` (and for ``multiworker`` the ``TF_CONFIG`` of ``environ``) as a :class:`DistributeSpec`.

    Raises
    ------
    UsageError
        An unknown kind, a bad ``mirrored:N``, a timeout <= 0, or a missing or malformed ``TF_CONFIG``.
    """
    if value is None or isinstance(value, DistributeSpec):
        return value
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise UsageError(f"--worker-timeout: got {timeout!r}; expected seconds > 0")
    kind, _, count = str(value).strip().partition(":")
    if kind not in KINDS or (count and kind != "mirrored"):
        raise UsageError(f"--distribute: got {value!r}; expected one of {list(KINDS)} (or mirrored:N)")
    if kind == "mirrored":
        if count and (not count.isdigit() or int(count) < 1):
            raise UsageError(f"--distribute: got {value!r}; expected mirrored:N with N >= 1 local replicas")
        return DistributeSpec("mirrored", int(count) if count else None, timeout=float(timeout))
    tasks, task = read_tf_config((os.environ if environ is None else environ).get("TF_CONFIG"))
    return DistributeSpec("multiworker", None, tasks, task, float(timeout))


def read_tf_config(text: str | None) -> tuple[tuple[tuple[str, str], ...], tuple[str, int]]:
    """The cluster (task type, address) pairs, chief first, and this task, from ``TF_CONFIG``'s text.

    Raises
    ------
    UsageError
        Unset, not JSON, no ``cluster``/``task``, a task type other than chief/worker, an address that is
        not ``host:port``, an address given twice, or a task index outside the cluster.
    """

    def bad(why: str) -> UsageError:
        return UsageError(f"--distribute multiworker: TF_CONFIG {why}; set it on every worker, e.g. "
                          f"{_TF_CONFIG_EXAMPLE} (index 1 on the second)")

    if not text or not text.strip():
        raise bad("is not set")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or not config["cluster"]:
        raise bad("has no \"cluster\" object")
    cluster = config["cluster"]
    other = sorted(set(cluster) - set(_TASK_TYPES))
    if other:
        raise bad(f"has task type(s) {other}; edgelr trains with chief/worker tasks only "
                  "(MultiWorkerMirroredStrategy: no parameter servers or evaluators)")
    tasks: list[tuple[str, str]] = []
    for kind in _TASK_TYPES:
        addresses = cluster.get(kind, [])
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise bad(f"cluster.{kind} is {addresses!r}, not a list of \"host:port\" strings")
        if kind == "chief" and len(addresses) > 1:
            raise bad(f"has {len(addresses)} chief tasks; at most one")
        for address in addresses:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise bad(f"has address {address!r} in cluster.{kind}; expected host:port")
            tasks.append((kind, address))
    dup = sorted({a for _, a in tasks if [b for _, b in tasks].count(a) > 1})
    if dup:
        raise bad(f"lists {dup} twice; every task needs its own host:port")
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in _TASK_TYPES or isinstance(task.get("index", 0), bool) \
            or not isinstance(task.get("index", 0), int):
        raise bad(f"has task {task!r}; expected {{\"type\": \"worker\", \"index\": N}}")
    kind, index = str(task["type"]), int(task.get("index", 0))
    count = len(cluster.get(kind, []))
    if not 0 <= index < count:
        raise bad(f"has task {kind} index {index} but cluster.{kind} lists {count} task(s)")
    return tuple(tasks), (kind, index)


@contextmanager
def _tf_log_to_file(prefix: str) -> Iterator[str]:
    """TensorFlow's C++ log (file descriptor 2) goes to a temporary file for the duration; its path is yielded.

    On success the lines are passed on to stderr. On an error the log stays in the file and, since the failed
    cluster keeps logging until the process exits, descriptor 2 stays on it while Python's ``sys.stderr`` is
    moved to the original stream: the user sees one line, and the error names the file.
    """
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield path
    except BaseException:
        sys.stderr.flush()
        sys.stderr = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
        os.close(fd)
        raise
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(fd)
    with open(path, encoding="utf-8", errors="replace") as log:
        text = log.read()
    os.unlink(path)
    if text.strip():
        sys.stderr.write(text)


@dataclass
class Distribution:
    """A started strategy and what distill needs from it.

    Attributes
    ----------
    spec : DistributeSpec
    strategy : tf.distribute.Strategy
    """

    spec: DistributeSpec
    strategy: Any

    @property
    def replicas(self) -> int:
        """Replicas in sync (all workers' devices)."""
        return int(self.strategy.num_replicas_in_sync)

    @property
    def is_chief(self) -> bool:
        return self.spec.is_chief

    def describe(self) -> str:
        return f"{self.spec.describe()}, {self.replicas} replicas in sync"

    def scope(self) -> Any:
        return self.strategy.scope()

    def replicate(self, model: Any) -> Any:
        """A copy of ``model`` (tf_keras; QAT wrappers allowed) whose variables live in the strategy's scope,
        with ``model``'s weights; ``model`` itself is not touched."""
        from edgelr.tfcompat import keras2

        k2 = keras2()
        with self.scope(), _quantize_scope(model):
            copy = k2.models.clone_model(model)
            copy.set_weights(model.get_weights())
        return copy

    def epoch_batches(self, arrays: Sequence[np.ndarray], order: np.ndarray, batch_size: int,
                      steps: int) -> Iterator[tuple[Any, ...]]:
        """The epoch's global batches as distributed values, one tuple per step: a per-replica slice of each
        array in ``arrays`` and the global batch size (float32 scalar).

        Parameters
        ----------
        arrays : sequence of ndarray, each shape (n_train, ...)
        order : ndarray of int, shape (m,)
            The epoch's sample order; global batch ``i`` is ``sort(order[i*batch_size:(i+1)*batch_size])``,
            as in a single process.
        """
        from edgelr.tfcompat import tf

        tfm = tf()
        batches = [np.sort(order[i * batch_size:(i + 1) * batch_size]) for i in range(steps)]
        batches = [b for b in batches if len(b)]
        sizes = [np.float32(len(b)) for b in batches]
        dtypes = [tfm.as_dtype(a.dtype) for a in arrays]

        def gather(idx: np.ndarray) -> list[np.ndarray]:
            return [a[idx] for a in arrays]

        def fetch(idx: Any) -> tuple[Any, ...]:
            out = tfm.numpy_function(gather, [idx], dtypes, stateful=False)
            for tensor, a in zip(out, arrays):
                tensor.set_shape([None, *a.shape[1:]])
            return tuple(out)

        ds = tfm.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(batch_size).map(fetch)
        options = tfm.data.Options()
        options.experimental_distribute.auto_shard_policy = tfm.data.experimental.AutoShardPolicy.DATA
        options.deterministic = True
        ds = ds.with_options(options)
        with lost_worker_errors(self.spec):  # the workers agree on every batch through a collective
            for size, values in zip(sizes, self.strategy.experimental_distribute_dataset(ds)):
                yield (*values, tfm.constant(size))

    def step(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (one replica's training step returning its loss) as one compiled step run on every replica;
        returns the summed loss (``fn``'s losses are shares of the global batch's mean). A lost worker raises
        :class:`DistributeError`."""
        from edgelr.tfcompat import tf

        tfm = tf()
        strategy = self.strategy

        @tfm.function(reduce_retracing=True)
        def run(*args: Any) -> Any:
            return strategy.reduce(tfm.distribute.ReduceOp.SUM, strategy.run(fn, args=args), axis=None)

        def call(*args: Any) -> Any:
            with lost_worker_errors(self.spec):
                return run(*args)

        return call

    def from_chief(self, arrays: Sequence[Any]) -> list[np.ndarray]:
        """The chief's value of each array (weights, scores), on every worker: one all-reduce in which only the
        chief's first replica contributes (values go through float64, exact for float32 and int32 weights).
        One process: ``arrays`` as they are."""
        arrays = [np.asarray(a) for a in arrays]
        if self.spec.num_workers <= 1:
            return arrays
        from edgelr.tfcompat import tf

        tfm = tf()
        flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
        zeros = np.zeros_like(flat)
        chief = self.is_chief
        local = max(1, len(self.strategy.extended.worker_devices))

        def value(ctx: Any) -> Any:  # the chief's first local replica contributes, every other one zeros
            return tfm.constant(flat if chief and ctx.replica_id_in_sync_group % local == 0 else zeros)

        with lost_worker_errors(self.spec):
            shared = self.strategy.reduce(tfm.distribute.ReduceOp.SUM,
                                          self.strategy.experimental_distribute_values_from_function(value),
                                          axis=None).numpy()
        out, at = [], 0
        for a in arrays:
            out.append(shared[at:at + a.size].reshape(a.shape).astype(a.dtype))
            at += a.size
        return out


@contextmanager
def _quantize_scope(model: Any) -> Iterator[None]:
    """tfmot's custom objects in scope when ``model`` has QAT wrappers (cloning needs them)."""
    if not any(type(layer).__module__.startswith("tensorflow_model_optimization") for layer in model.layers):
        yield
        return
    import tensorflow_model_optimization as tfmot

    with tfmot.quantization.keras.quantize_scope():
        yield


@contextmanager
def lost_worker_errors(spec: DistributeSpec) -> Iterator[None]:
    """TensorFlow's errors of a lost peer (unavailable, aborted, deadline) as one-line :class:`DistributeError`."""
    from edgelr.tfcompat import tf

    errors = tf().errors
    try:
        yield
    except (errors.UnavailableError, errors.AbortedError, errors.DeadlineExceededError,
            errors.CancelledError) as exc:
        raise DistributeError(f"--distribute {spec.kind}: a worker was lost during training ({type(exc).__name__} "
                              "in an all-reduce); restart every worker (the outputs are written only at the end)"
                              ) from None


def start(spec: DistributeSpec) -> Distribution:
    """Create the strategy of ``spec``. Call it before TensorFlow runs any op in this process (collective ops
    and logical devices are configured at start-up); every worker of a ``multiworker`` cluster calls it.

    Raises
    ------
    DistributeError
        TensorFlow already initialised, too few devices, or a worker that did not join within ``spec.timeout``.
    """
    from edgelr.tfcompat import tf

    tfm = tf()
    if spec.kind == "mirrored":
        return Distribution(spec, _mirrored(tfm, spec))
    from tensorflow.python.eager import context  # the coordination service's deadline has no public API

    if context.context()._context_handle is not None:  # noqa: SLF001
        raise DistributeError("--distribute multiworker: TensorFlow is already running in this process; start "
                              "the distributed run first (e.g. `edgelr compress MODEL_FILE ...` in a new process)")
    _configure_coordination(tfm, spec)
    comm = tfm.distribute.experimental.CommunicationOptions(
        implementation=tfm.distribute.experimental.CommunicationImplementation.RING)
    try:
        with _tf_log_to_file("edgelr-distribute-") as log_path:
            strategy = tfm.distribute.MultiWorkerMirroredStrategy(communication_options=comm)
    except (tfm.errors.DeadlineExceededError, tfm.errors.UnavailableError, tfm.errors.InternalError,
            tfm.errors.AbortedError) as exc:
        others = [a for i, (_, a) in enumerate(spec.tasks) if i != spec.worker]
        raise DistributeError(
            f"--distribute multiworker: the cluster did not assemble within {spec.timeout:g} s (worker "
            f"{spec.worker} of {spec.num_workers}, {type(exc).__name__}; waiting for {', '.join(others)}); start "
            f"every worker with the same TF_CONFIG cluster and its own task index, or raise --worker-timeout "
            f"(TensorFlow's log: {log_path})") from None
    if spec.is_chief:  # this process hosts TensorFlow's coordination service: outlive the other workers
        atexit.register(_wait_for_workers_to_exit, [a for i, (_, a) in enumerate(spec.tasks) if i != spec.worker])
    return Distribution(spec, strategy)


def _wait_for_workers_to_exit(addresses: list[str], timeout: float = 20.0) -> None:
    """At the chief's exit: wait (up to ``timeout`` s) until no other worker's server accepts connections. The
    chief hosts the coordination service; a worker that outlives it logs a screen of gRPC errors at its exit."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    pending = list(addresses)
    while pending and time.monotonic() < deadline:
        host, _, port = pending[0].rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                time.sleep(0.2)
        except OSError:
            pending.pop(0)


def _configure_coordination(tfm: Any, spec: DistributeSpec) -> None:
    """TensorFlow's coordination service as MultiWorkerMirroredStrategy configures it, plus a registration
    barrier with ``spec.timeout``: without it a missing worker blocks the strategy's constructor for ever
    (and the constructor holds the GIL, so no Python-side timer can step in)."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    cluster_spec = tfm.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in _TASK_TYPES if job in cluster_spec.jobs]
    ctx = context.context()
    ctx.configure_coordination_service(service_type="standalone",
                                       service_leader=multi_worker_util.coordination_leader(cluster_spec),
                                       coordinated_jobs=jobs,
                                       cluster_register_timeout_in_ms=int(spec.timeout * 1000))
    ctx.coordination_service.cluster_register_with_barrier = True


def _mirrored(tfm: Any, spec: DistributeSpec) -> Any:
    """MirroredStrategy over the GPUs, or over ``spec.replicas`` (default 2) logical CPU devices."""
    gpus = tfm.config.list_physical_devices("GPU")
    if gpus:
        names = [f"/gpu:{i}" for i in range(len(gpus))][:spec.replicas or len(gpus)]
        if spec.replicas and spec.replicas > len(gpus):
            raise DistributeError(f"--distribute mirrored:{spec.replicas}: this host has {len(gpus)} GPU(s)")
        return tfm.distribute.MirroredStrategy(devices=names)
    want = spec.replicas or DEFAULT_CPU_REPLICAS
    cpu = tfm.config.list_physical_devices("CPU")[0]
    current = tfm.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != want:
        try:
            tfm.config.set_logical_device_configuration(cpu, [tfm.config.LogicalDeviceConfiguration()] * want)
        except RuntimeError:
            have = len(tfm.config.list_logical_devices("CPU"))
            if have < want:
                raise DistributeError(
                    f"--distribute mirrored: TensorFlow is already running with {have} CPU device(s) and cannot "
                    f"split the CPU into {want} now; start the distributed run first (in a new process)") from None
    names = [d.name for d in tfm.config.list_logical_devices("CPU")][:want]
    # sums on one device: no collective ops, which logical CPUs do not need (and which a process that is also
    # a multiworker worker keeps for its cluster)
    return tfm.distribute.MirroredStrategy(devices=names, cross_device_ops=tfm.distribute.ReductionToOneDevice())
