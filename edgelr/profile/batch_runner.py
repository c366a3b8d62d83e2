#!/usr/bin/env python3
"""On-device batch runner of ``edgelr profile``: one session (one process) measures many micro-models.

Pushed to the device beside edgelr's ``runner.py`` and run by the device's python3; needs only the standard
library, numpy and ai-edge-litert (no TensorFlow, no edgelr). For each ``.tflite`` given, in the order given
(the host draws a random order per session), it loads the model, runs ``--warmup`` untimed and ``--runs``
timed inferences on random inputs and prints one line::

    EDGELR_PROFILE_JSON {"graph": "...", "samples_us": [...], "median_us": 123.4}

A model that fails prints ``EDGELR_PROFILE_JSON {"graph": "...", "error": "..."}`` and the batch goes on.
``--version`` prints the ai-edge-litert version. Exit codes: 0 ok; 2 bad flags; 3 no ai-edge-litert.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _runtime() -> tuple[object, str]:
    try:
        import ai_edge_litert  # noqa: PLC0415
        from ai_edge_litert import interpreter as litert  # noqa: PLC0415
    except ImportError as exc:
        print(f"ERROR: ai-edge-litert is not installed for {sys.executable} ({exc})", file=sys.stderr)
        sys.exit(3)
    version = str(getattr(ai_edge_litert, "__version__", "") or "")
    if not version:
        from importlib.metadata import version as dist_version  # noqa: PLC0415

        version = dist_version("ai-edge-litert")
    return litert, version


def _fill(interp: object, rng: object) -> None:
    import numpy as np  # noqa: PLC0415

    for d in interp.get_input_details():  # type: ignore[attr-defined]
        shape = [int(x) if int(x) > 0 else 1 for x in d["shape"]]
        dtype = np.dtype(d["dtype"])
        if np.issubdtype(dtype, np.integer):
            value = rng.integers(-128, 127, size=shape, endpoint=True).astype(dtype)  # type: ignore[attr-defined]
        else:
            value = rng.random(size=shape, dtype=np.float32).astype(dtype)  # type: ignore[attr-defined]
        interp.set_tensor(d["index"], value)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batch_runner.py", description=__doc__.splitlines()[0])
    p.add_argument("graphs", nargs="*", help=".tflite files, measured in this order")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", action="store_true")
    args = p.parse_args(argv)
    litert, version = _runtime()
    if args.version:
        print(f"ai-edge-litert {version}")
        return 0
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(args.seed)
    for graph in args.graphs:
        try:
            interp = litert.Interpreter(model_path=graph, num_threads=args.threads)  # type: ignore[attr-defined]
            interp.allocate_tensors()
            _fill(interp, rng)
            for _ in range(args.warmup):
                interp.invoke()
            samples = []
            for _ in range(args.runs):
                t = time.perf_counter()
                interp.invoke()
                samples.append((time.perf_counter() - t) * 1e6)
            rec = {"graph": graph, "samples_us": [round(x, 2) for x in samples],
                   "median_us": statistics.median(samples)}
            del interp
        except Exception as exc:  # noqa: BLE001 - report and go on with the batch
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            rec = {"graph": graph, "error": f"{type(exc).__name__}: {first}"}
        print("EDGELR_PROFILE_JSON " + json.dumps(rec, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
