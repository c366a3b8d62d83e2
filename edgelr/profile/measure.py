"""Measuring a batch of micro-models on a device, sessions as the unit.

A **session** is one fresh process on the device that measures every micro-model of the batch once
(``runs`` timed inferences after ``warmup``), in a random order drawn per session with
:func:`edgelr.bench.run.block_orders` (the bench's randomized blocks: drift hits every micro-model alike).
K sessions give each micro-model K session medians; its table entry is their median. One process per
session instead of one per micro-model keeps the overhead (starting Python and LiteRT, ~0.3 s) out of
hundreds of micro-models.

Devices with edgelr's runner (``linux/runner``) run :mod:`edgelr.profile.batch_runner` under the bench's
wrapper (:mod:`device_agents.procs`: nothing is left running on the device). Other devices (the C++
``benchmark_model`` binary, Android) are measured by :func:`edgelr.bench.run.benchmark` itself, one process
per micro-model and session, interleaved the same way.
"""

from __future__ import annotations

import json
import shlex
import statistics
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from device_agents.files import sha256_file
from device_agents.inventory import DeviceSpec
from device_agents.procs import push_wrapper, wrap_command, wrapper_options
from device_agents.transport import Transport
from edgelr.bench.harnesses import select_harness
from edgelr.bench.run import BenchModel, BenchSettings, benchmark, block_orders
from edgelr.errors import BenchmarkError

Progress = Callable[[str], None]
BATCH_SCRIPT = "profile_batch.py"


@dataclass
class Station:
    """A device ready to measure: how to start the batch runner (None: through ``bench.run``) and the runtime
    version that keys the table."""

    device: DeviceSpec
    transport: Transport
    runtime: str
    argv: list[str] | None
    wrapper: list[str]
    mask: str


def open_station(device: DeviceSpec, transport: Transport, mask: str, timeout: float = 120.0) -> Station:
    """Prepare ``device``: push the batch runner (runner devices) and read the runtime version."""
    harness = select_harness(device)
    workdir = device.remote_workdir
    transport.run(f"mkdir -p {shlex.quote(workdir)}/models", timeout=timeout)
    if harness.key != "linux/runner":
        prog = harness.prepare(transport, workdir, timeout=timeout)
        return Station(device, transport, f"{prog.tool} {prog.version}".strip(), None, [], mask)
    push_wrapper(transport, workdir, timeout)
    script = f"{workdir}/{BATCH_SCRIPT}"
    with resources.as_file(resources.files("edgelr.profile").joinpath("batch_runner.py")) as local:
        transport.push(Path(local), script, timeout=timeout, mode=0o755)
    res = transport.run(shlex.join([device.python, script, "--version"]), timeout=timeout)
    if res.exit_code != 0:
        detail = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
        raise BenchmarkError(f"device '{device.name}': cannot start the profile runner with {device.python} "
                             f"({detail}); install ai-edge-litert there: {device.python} -m pip install ai-edge-litert")
    taskset = transport.run("command -v taskset >/dev/null 2>&1 && echo yes", timeout=timeout).stdout.strip() == "yes"
    return Station(device, transport, res.stdout.strip(), [device.python, script],
                   wrapper_options(transport, workdir), mask if taskset else "")


def measure(station: Station, files: dict[str, Path], threads: int, sessions: int, runs: int, warmup: int,
            seed: int, progress: Progress) -> dict[str, list[float]]:
    """Session medians (ms) of every micro-model in ``files`` (key -> local ``.tflite``), K = ``sessions``.

    Raises
    ------
    BenchmarkError
        A session failed as a whole (the runner did not start); a micro-model that fails alone is left out.
    """
    if station.argv is None:
        return _measure_by_bench(station, files, threads, sessions, runs, warmup, seed, progress)
    t, dev = station.transport, station.device
    keys = list(files)
    remote: dict[str, str] = {}
    for k in keys:
        sha = sha256_file(files[k])
        remote[k] = f"{dev.remote_workdir}/models/{sha[:16]}.tflite"
        t.push(files[k], remote[k], timeout=max(dev.connect_timeout * 6, 120.0))
    by_remote = {v: k for k, v in remote.items()}
    out: dict[str, list[float]] = {k: [] for k in keys}
    for b, order in enumerate(block_orders(len(keys), sessions, seed)):
        argv = [*station.argv, "--threads", str(threads), "--runs", str(runs), "--warmup", str(warmup),
                "--seed", str(seed + b), *(remote[keys[i]] for i in order)]
        if station.mask:
            argv = ["taskset", station.mask, *argv]
        res = t.run(wrap_command(dev.remote_workdir, station.wrapper, 0, argv),
                    timeout=max(dev.command_timeout, 30.0 + 0.05 * runs * len(keys)))
        got = 0
        for line in res.stdout.splitlines():
            if not line.startswith("EDGELR_PROFILE_JSON "):
                continue
            rec = json.loads(line.split(" ", 1)[1])
            key = by_remote.get(rec.get("graph", ""))
            if key is not None and "median_us" in rec:
                out[key].append(float(rec["median_us"]) / 1000.0)
                got += 1
            elif key is not None:
                progress(f"  {key}: failed on the device ({rec.get('error', 'no result')})")
        if got == 0:
            detail = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
            raise BenchmarkError(f"device '{dev.name}': the profile session failed (exit {res.exit_code}: {detail})")
        progress(f"  session {b + 1}/{sessions}: {got} micro-model(s)")
    return {k: v for k, v in out.items() if v}


def _measure_by_bench(station: Station, files: dict[str, Path], threads: int, sessions: int, runs: int,
                      warmup: int, seed: int, progress: Progress) -> dict[str, list[float]]:
    names = {f"m{i}": k for i, k in enumerate(files)}
    settings = BenchSettings(threads=threads, runs=runs, warmup=warmup, sessions=sessions, seed=seed, canary=False,
                             affinity_mask=station.mask or None)
    frame = benchmark(station.device, station.transport, [BenchModel(n, files[k]) for n, k in names.items()],
                      settings, progress=progress)
    med = frame[(frame["metric"] == "latency_median") & frame["value"].notna()]
    return {names[n]: [float(v) for v in g["value"]] for n, g in med.groupby("model")}


def summarize(medians: list[float]) -> tuple[float, float]:
    """(median, relative spread (max - min) / median) of session medians."""
    mid = statistics.median(medians)
    return mid, (max(medians) - min(medians)) / mid if mid > 0 else 0.0
