"""Running and checking a ``.tflite`` model with ai-edge-litert (no TensorFlow needed).

Which ops XNNPACK takes: the interpreter is built twice, once without default delegates (the model's own
execution plan) and once with them (XNNPACK applied at ``allocate_tensors``). The delegated interpreter
lists the original nodes plus one ``DELEGATE`` node per partition; each partition's nodes are found by
walking back from the ``DELEGATE`` node's output tensors to its input tensors through the producers of
the original graph. Nodes in no partition run on the built-in (reference/optimized) CPU kernels.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgelr.errors import ConversionError

XNNPACK_METHOD = ("ai-edge-litert interpreter built with and without default delegates; nodes of each XNNPACK "
                  "DELEGATE partition found by walking back from its outputs to its inputs through the original "
                  "graph's producers (Interpreter._get_ops_details)")


@dataclass
class OpSummary:
    """The operators of a ``.tflite`` model.

    Attributes
    ----------
    ops : dict
        Builtin op name -> number of nodes (subgraph 0).
    delegated : dict
        Op name -> number of those nodes XNNPACK takes.
    not_delegated : dict
        Op name -> number of nodes left to the built-in kernels.
    partitions : int
        Number of XNNPACK partitions (DELEGATE nodes).
    custom_ops : list of str
        Non-builtin (custom / Flex) ops; empty for a deployable model.
    """

    ops: dict[str, int]
    delegated: dict[str, int]
    not_delegated: dict[str, int]
    partitions: int
    custom_ops: list[str] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return int(sum(self.ops.values()))

    @property
    def num_delegated(self) -> int:
        return int(sum(self.delegated.values()))


@dataclass
class TfliteValidation:
    """Result of running a ``.tflite`` on a labelled split.

    Attributes
    ----------
    size_bytes : int
        File size, bytes.
    n_samples : int
        Samples evaluated.
    accuracy : float or None
        Top-1 accuracy in % (classifiers), else None.
    loss : float or None
        Mean squared error against the labels for non-classifiers, else None.
    agreement : float or None
        % of samples where the argmax equals the reference (Keras) model's argmax (classifiers).
    max_abs_diff : float or None
        Largest absolute difference of the (dequantized) outputs against the reference outputs.
    input_dtype, output_dtype : str
        Dtypes of the model's input and output tensors.
    ops : OpSummary
    """

    size_bytes: int
    n_samples: int
    accuracy: float | None
    loss: float | None
    agreement: float | None
    max_abs_diff: float | None
    input_dtype: str
    output_dtype: str
    ops: OpSummary

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"]["num_nodes"] = self.ops.num_nodes
        d["ops"]["num_delegated"] = self.ops.num_delegated
        return d


def _interpreter(content: bytes, num_threads: int = 1, delegates: bool = True) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    rt = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        return Interpreter(model_content=content, num_threads=num_threads, experimental_op_resolver_type=rt)
    except (ValueError, RuntimeError) as exc:
        raise ConversionError(f"ai-edge-litert cannot load the model: {str(exc).splitlines()[0]}") from None


def op_summary(content: bytes) -> OpSummary:
    """Op counts of ``content`` and which of its nodes the default XNNPACK delegate takes."""
    plain = _interpreter(content, delegates=False)
    plain.allocate_tensors()
    nodes = plain._get_ops_details()  # noqa: SLF001 - the only op-level API LiteRT's Python wheel has
    ops = Counter(n["op_name"] for n in nodes)
    builtin = _builtin_names()
    custom = sorted({n["op_name"] for n in nodes if n["op_name"] not in builtin})
    deleg = _interpreter(content, delegates=True)
    deleg.allocate_tensors()
    dnodes = deleg._get_ops_details()  # noqa: SLF001
    n_orig = len(nodes)
    producer: dict[int, int] = {}
    for n in dnodes[:n_orig]:
        for t in n["outputs"]:
            producer[int(t)] = int(n["index"])
    taken: set[int] = set()
    partitions = 0
    for d in dnodes[n_orig:]:
        if d["op_name"] != "DELEGATE":
            continue
        partitions += 1
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in boundary or t not in producer:
                continue
            seen.add(t)
            idx = producer[t]
            if idx not in taken:
                taken.add(idx)
                stack.extend(int(x) for x in dnodes[idx]["inputs"] if int(x) >= 0)
    delegated = Counter(nodes[i]["op_name"] for i in taken)
    not_delegated = Counter(n["op_name"] for n in nodes if int(n["index"]) not in taken)
    return OpSummary(ops=dict(ops), delegated=dict(delegated), not_delegated=dict(not_delegated),
                     partitions=partitions, custom_ops=custom)


def _builtin_names() -> set[str]:
    from ai_edge_litert import schema_py_generated as schema

    return {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")} | {"DELEGATE"}


def run_tflite(content: bytes, x: np.ndarray, *, num_threads: int = 1, batch_size: int = 64,
               progress: Any = None) -> np.ndarray:
    """Outputs of the ``.tflite`` model on ``x``, dequantized to float32.

    Parameters
    ----------
    x : ndarray, shape (n, *input_shape)
        Float inputs; quantized with the input tensor's scale and zero point if the model has int8/uint8 I/O.
    batch_size : int
        Samples per invoke when the model has a dynamic batch dimension (fixed-batch models run their own).

    Returns
    -------
    ndarray, shape (n, *output_shape)
    """
    it = _interpreter(content, num_threads=num_threads)
    inp = it.get_input_details()[0]
    sig = inp.get("shape_signature", inp["shape"])
    fixed = int(sig[0]) if int(sig[0]) > 0 else None
    step = fixed or min(batch_size, len(x))
    if not fixed:
        it.resize_tensor_input(inp["index"], [step, *inp["shape"][1:]])
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    results = []
    n = len(x)
    for i in range(0, n, step):
        chunk = np.asarray(x[i:i + step], dtype=np.float32)
        real = len(chunk)
        if real < step:
            chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), np.float32)])
        it.reset_all_variables()  # fused LSTM/GRU ops keep their state in variable tensors across invokes
        it.set_tensor(inp["index"], _quantize(chunk, inp))
        it.invoke()
        results.append(_dequantize(it.get_tensor(out["index"]), out)[:real])
        if progress is not None:
            progress.update(real)
    return np.concatenate(results) if results else np.zeros((0,), np.float32)


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dt = detail["dtype"]
    if dt in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(dt)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dt)
    return x.astype(dt)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def validate_tflite(content: bytes, x: np.ndarray, y: np.ndarray | None = None, *,
                    reference: np.ndarray | None = None, classifier: bool = True, num_threads: int = 1,
                    progress: bool = False) -> TfliteValidation:
    """Accuracy, agreement with the Keras model, op list and size of a ``.tflite`` model.

    Parameters
    ----------
    x : ndarray, shape (n, *input_shape)
    y : ndarray, shape (n,) integer labels or (n, k) one-hot / targets
    reference : ndarray, shape (n, *output_shape), optional
        The Keras model's outputs on ``x``, for agreement and max_abs_diff.
    classifier : bool
        Accuracy/agreement by argmax if True, else mean squared error.
    """
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(x), desc="validate tflite", unit="sample", leave=False)
    try:
        pred = run_tflite(content, x, num_threads=num_threads, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    it = _interpreter(content, delegates=False)
    in_dt = np.dtype(it.get_input_details()[0]["dtype"]).name
    out_dt = np.dtype(it.get_output_details()[0]["dtype"]).name
    accuracy = loss = agreement = diff = None
    if y is not None:
        if classifier:
            accuracy = float(100.0 * np.mean(pred.argmax(-1) == labels_of(y)))
        else:
            loss = float(np.mean((pred.reshape(len(pred), -1) - np.asarray(y).reshape(len(pred), -1)) ** 2))
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float32)
        diff = float(np.max(np.abs(pred - ref))) if pred.size else 0.0
        if classifier:
            agreement = float(100.0 * np.mean(pred.argmax(-1) == ref.argmax(-1)))
    return TfliteValidation(size_bytes=len(content), n_samples=len(x), accuracy=accuracy, loss=loss,
                            agreement=agreement, max_abs_diff=diff, input_dtype=in_dt, output_dtype=out_dt,
                            ops=op_summary(content))


def labels_of(y: np.ndarray) -> np.ndarray:
    """Integer class labels from ``y`` of shape (n,) / (n, 1) integers or (n, k) one-hot."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(-1)
    return y.reshape(len(y)).astype(np.int64)


def measure_latency(content: bytes, x: np.ndarray, *, num_threads: int = 1, runs: int = 100,
                    warmup: int = 10) -> dict[str, float]:
    """Host latency of one batch-1 inference with ai-edge-litert (XNNPACK), ms.

    Parameters
    ----------
    x : ndarray, shape (m, *input_shape)
        Inputs cycled through; only batch-1 invokes are timed.

    Returns
    -------
    dict with ``latency_avg``, ``latency_median``, ``latency_min``, ``latency_std`` (ms) and ``runs``.
    """
    it = _interpreter(content, num_threads=num_threads)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]])
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    samples = [_quantize(np.asarray(x[i % len(x)][None], np.float32), inp) for i in range(min(len(x), 32))]
    for i in range(warmup):
        it.reset_all_variables()
        it.set_tensor(inp["index"], samples[i % len(samples)])
        it.invoke()
    times = []
    for i in range(runs):
        it.reset_all_variables()  # fresh recurrent state per inference, as in run_tflite (not timed)
        it.set_tensor(inp["index"], samples[i % len(samples)])
        t0 = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    arr = np.asarray(times)
    return {"latency_avg": float(arr.mean()), "latency_median": float(np.median(arr)),
            "latency_min": float(arr.min()), "latency_std": float(arr.std()), "runs": float(runs)}
