"""Per-layer latency tables measured on the target device (``edgelr profile``).

MACs are not latency: a factorized chain writes more activations and runs more, smaller kernels, and
whether that pays depends on the device. :func:`profile_model` measures it: for every factorizable layer
of a model, micro-models (:mod:`edgelr.profile.micro`) of the layer as is and of its low-rank chain over a
ladder of ranks (both Tucker-2 modes), converted with the target's quantization and benchmarked on the
device with its thread count, K sessions each, the micro-models of a batch interleaved in a random order
per session (:mod:`edgelr.profile.measure`). Two whole models are measured in the same sessions: the
original, and a probe with every profiled layer at the ladder's :data:`PROBE_LEVEL`. A layer alone runs
faster than inside a model (hot caches; on a busy device, runs short enough to slip between other
processes); the two give the table's ``context_scale``, how a change of the layers' table sum shows in the
whole model (:meth:`edgelr.rewrite.cost.MeasuredLatency.calibrate`).

Results go to a cache (:mod:`edgelr.profile.cache`) keyed by (device, runtime version, layer signature,
ranks, quantization, threads): layers another model shares are not measured again, an interrupted or
``max_time_s``-bounded run keeps the batches it finished and the next run measures only the rest.

The result's :class:`~edgelr.rewrite.cost.MeasuredLatency` is what ``compress --latency-device`` hands to
the rank plan, the latency allocation and the accuracy search (``latency_table``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgelr.errors import Interrupted, UsageError
from edgelr.profile.cache import Context, Entry, LatencyCache
from edgelr.profile.micro import (LEVELS, MicroSpec, quiet_native_stderr, build_micro, layer_specs,
                                 profiled_layers)
from edgelr.rewrite.cost import MeasuredLatency, latency_estimate, layer_signature, ranks_key

__all__ = ["ProfileResult", "profile_model", "model_signature", "predict_model_ms"]

DEFAULT_SESSIONS = 5
"""K sessions per micro-model: the table entry is the median of K session medians."""
BATCH = 60
"""Micro-models measured together (one process per session measures them all); finished batches are kept."""
PROBE_LEVEL = 0.25
"""The probe model's ranks: this share of each full rank (one point of the ladder), every profiled layer."""


@dataclass
class ProfileResult:
    """What :func:`profile_model` measured and found in the cache.

    Attributes
    ----------
    table : MeasuredLatency
        Every entry of the model's layers (ms) and ``model_ms``, the whole model.
    rows : list of dict
        One per micro-model: layer, method, ranks, ms, spread, sessions, source (``measured``/``cached``).
    complete : bool
        False when ``max_time_s`` stopped the run before every micro-model was measured.
    missing : int
        Micro-models not measured (run again to continue).
    seconds : float
        Wall time of this call (building micro-models and measuring).
    """

    table: MeasuredLatency
    rows: list[dict[str, Any]]
    complete: bool
    missing: int
    seconds: float
    device: str
    runtime: str
    quantization: str
    threads: int
    cache: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    probe_ms: float = float("nan")


def model_signature(model: Any) -> str:
    """The whole model's table key: ``model-`` + a hash of its configuration and input shape."""
    doc = json.dumps([model.get_config(), [None if d is None else int(d) for d in model.inputs[0].shape[1:]]],
                     sort_keys=True, default=str)
    return "model-" + hashlib.sha256(doc.encode()).hexdigest()[:16]


def _estimates(layers: list[tuple[str, Any, Any]], specs: list[MicroSpec], output_cost: float
               ) -> dict[tuple[str, Any], float]:
    by_path = {p: (layer, rw) for p, layer, rw in layers}
    out = {}
    for s in specs:
        layer, rw = by_path[s.path]
        macs = rw.cost(layer, s.ranks)[1] if s.ranks is not None else None
        if macs is None:
            from edgelr.rewrite.cost import layer_cost

            macs = layer_cost(layer)[1]
        out[(s.signature, s.ranks)] = latency_estimate(macs, rw.outputs(layer, s.ranks), output_cost)
    return out


def _parse_ranks(text: str) -> tuple[int, ...] | None:
    return None if text == "whole" else tuple(int(x) for x in text.split("x"))


def probe_ranks(layers: list[tuple[str, Any, Any]], multiple: int, level: float = PROBE_LEVEL
                ) -> dict[str, tuple[int, ...]]:
    """The probe model's ranks: each profiled layer at ``level`` of its full ranks (a point of the ladder)."""
    from edgelr.profile.micro import rank_levels

    return {p: rank_levels(tuple(int(f) for f in rw.full_ranks(layer)), multiple, (level,))[0]
            for p, layer, rw in layers}


def _probe_model(model: Any, method: str, ranks: dict[str, tuple[int, ...]]) -> Any:
    """``model`` with every layer of ``ranks`` rewritten at its ranks (cheap decompositions: timing only)."""
    from edgelr.rewrite import build_factorized, plan_factorization

    plan = plan_factorization(model, method=method, rank_policy="rank:1", min_reduction=None, progress=False)
    return build_factorized(model, plan, {p: ranks.get(p) for p in plan.layers}, exact=False, progress=False)[0]


def profile_model(model: Any, device: str, *, target: str | None = None, method: str = "auto",
                  threads: int | None = None, quantization: str | None = None, sessions: int = DEFAULT_SESSIONS,
                  runs: int = 20, warmup: int = 2, max_time_s: float | None = None,
                  cache: str | os.PathLike[str] | None = None, inventory: str | None = None, seed: int = 0,
                  include_model: bool = True, levels: tuple[float, ...] = LEVELS, targets_file: str | None = None,
                  trust_new_host: bool = False, lock: bool = True,
                  progress: Callable[[str], None] | None = None) -> ProfileResult:
    """Build (or complete, or just read) the latency table of ``model``'s layers on ``device``.

    Parameters
    ----------
    model : str, path or tf_keras.Model
        What :func:`edgelr.load_model` reads, or a built tf_keras model (read only).
    device : str
        An inventory device (``local`` always exists).
    target : str, optional
        Target profile for quantization, threads and rank multiple; default the device's.
    method : str
        ``auto`` (each layer's preferred rewriter, as ``compress`` uses) or a registered method.
    threads, quantization : optional
        Default the target's (threads 0 -> 1).
    sessions, runs, warmup : int
        K sessions, N timed inferences per micro-model and session, untimed warm-up inferences.
    max_time_s : float, optional
        No new batch starts that would end after this many seconds (the rest stays for the next call).
    cache : path, optional
        The table's SQLite file (default :func:`edgelr.profile.cache.default_cache`).
    include_model : bool
        Measure the whole model too (``table.model_ms``: the unfactorized remainder).
    levels : tuple of float
        Shares of each full rank profiled (:data:`edgelr.profile.micro.LEVELS`).
    progress : callable, optional
        Receives one-line progress messages (the CLI prints them on stderr).

    Raises
    ------
    UsageError, InventoryError, DeviceError, BenchmarkError
    Interrupted
        Ctrl-C: the batches finished so far are in the cache (the message says how many rows).
    """
    from device_agents.inventory import get_device, open_transport
    from edgelr.bench.lock import lock_for
    from edgelr.profile.measure import measure, open_station, summarize
    from edgelr.rewrite.options import check_method
    from edgelr.targets import get_target

    say = progress or (lambda _m: None)
    if sessions < 1 or runs < 1 or warmup < 0:
        raise UsageError(f"sessions={sessions}, runs={runs}, warmup={warmup}; expected sessions, runs >= 1, warmup >= 0")
    if max_time_s is not None and not max_time_s > 0:
        raise UsageError(f"--max-time {max_time_s!r}: expected a positive number of seconds")
    from edgelr.errors import FactorizeError

    try:
        check_method(method)
    except FactorizeError as exc:
        raise UsageError(f"--method: {exc}") from None
    t0 = time.monotonic()
    spec = get_device(device, inventory)
    tgt = get_target(target or spec.target, targets_file)
    quant = quantization or tgt.quantization
    nthreads = int(threads or (tgt.threads if tgt.threads > 0 else 1))
    store = LatencyCache(cache)
    if isinstance(model, (str, os.PathLike)):
        from edgelr import load_model

        model = load_model(model)
    layers = profiled_layers(model, method)
    specs = layer_specs(layers, int(tgt.rank_multiple), tuple(levels))
    by_path = {p: layer for p, layer, _ in layers}
    msig = model_signature(model) if include_model else None
    probe = probe_ranks(layers, int(tgt.rank_multiple)) if include_model else {}
    probe_key = f"probe-{PROBE_LEVEL:g}"
    overrides: dict[str, Any] = {"trust_new_host": True} if trust_new_host and spec.transport == "ssh" else {}
    rows: list[dict[str, Any]] = []
    todo_total = 0
    with lock_for(spec, on_wait=say, enabled=lock):
        transport = open_transport(spec, **overrides)
        try:
            station = open_station(spec, transport, spec.affinity_mask if spec.affinity_mask is not None
                                   else tgt.affinity_mask)
            ctx = Context(spec.name, station.runtime, quant, nthreads)
            sigs = {s.signature for s in specs} | ({msig} if msig else set())
            have = store.get(ctx, sigs)
            todo = [s for s in specs if (s.signature, ranks_key(s.ranks)) not in have]
            want_model = msig is not None and not {(msig, "whole"), (msig, probe_key)} <= set(have)
            todo_total = len(todo) + (1 + int(bool(layers))) * int(want_model)  # the original + the probe
            say(f"profile: {len(layers)} layer(s), {len(specs)} micro-model(s) ({len(specs) - len(todo)} cached), "
                f"device {spec.name} ({station.runtime}), {quant}, {nthreads} thread(s), K={sessions}")
            batches: list[list[MicroSpec]] = []
            for s in todo:
                if not batches or (len(batches[-1]) >= BATCH and s.path != batches[-1][-1].path):
                    batches.append([])
                batches[-1].append(s)
            if want_model and not batches:
                batches.append([])
            last_s, done = 0.0, 0
            micro_dir = store.path.parent / "micro"  # converted micro-models, reused by other thread counts/devices
            micro_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="edgelr-profile-") as tmp:
                for i, batch in enumerate(batches):
                    elapsed = time.monotonic() - t0
                    if max_time_s is not None and i > 0 and elapsed + last_s > max_time_s:
                        say(f"--max-time {max_time_s:g} s: stopping after {i} of {len(batches)} batch(es) "
                            f"({elapsed:.0f} s spent); run again to measure the rest")
                        break
                    tb = time.monotonic()
                    files: dict[str, Path] = {}
                    meta: dict[str, tuple[str, str, str, str]] = {}
                    for path in dict.fromkeys(s.path for s in batch):
                        mine = [s for s in batch if s.path == path]
                        kept = {s.key: micro_dir / f"{s.signature}-{ranks_key(s.ranks)}-{quant}-{tgt.io_dtype}.tflite"
                                for s in mine}
                        new = [s for s in mine if not kept[s.key].is_file()]
                        if new:
                            say(f"profile: converting {len(new)} micro-model(s) of {path} ({quant})")
                        for key, content in (build_micro(new, by_path[path], quant, tgt.io_dtype) if new else {}).items():
                            tmp_file = kept[key].with_suffix(".part")
                            tmp_file.write_bytes(content)
                            os.replace(tmp_file, kept[key])
                        for s in mine:
                            files[s.key] = kept[s.key]
                            meta[s.key] = (s.signature, ranks_key(s.ranks), s.method, path)
                    if i == 0 and want_model:
                        from edgelr.compress.convert import convert
                        import numpy as np

                        shape = tuple(int(d) for d in model.inputs[0].shape[1:])
                        calib = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
                        f = Path(tmp) / "model.tflite"
                        f.write_bytes(convert(model, quant, io_dtype=tgt.io_dtype, representative=calib).content)
                        files[f"{msig}/whole"] = f
                        meta[f"{msig}/whole"] = (str(msig), "whole", "", "(model)")
                        if layers:
                            say(f"profile: converting the probe model (every layer at {PROBE_LEVEL:g} of its ranks)")
                            f = Path(tmp) / "probe.tflite"
                            with quiet_native_stderr():
                                f.write_bytes(convert(_probe_model(model, method, probe), quant, io_dtype=tgt.io_dtype,
                                                      representative=calib).content)
                            files[f"{msig}/{probe_key}"] = f
                            meta[f"{msig}/{probe_key}"] = (str(msig), probe_key, "", "(probe)")
                    say(f"profile: batch {i + 1}/{len(batches)}: {len(files)} micro-model(s) built, measuring")
                    medians = measure(station, files, nthreads, sessions, runs, warmup, seed + 1000 * i, say)
                    entries = []
                    for key, ms_list in medians.items():
                        sig, rk, meth, path = meta[key]
                        mid, spread = summarize(ms_list)
                        entries.append(Entry(sig, rk, meth, path, mid, spread, tuple(ms_list)))
                    store.put(ctx, entries)
                    done += len(entries)
                    last_s = time.monotonic() - tb
                    say(f"profile: batch {i + 1}/{len(batches)} stored ({done}/{todo_total} new rows, "
                        f"{time.monotonic() - t0:.0f} s)")
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; the finished batches are kept in {store.path} "
                              f"(run again to measure the rest)") from None
        finally:
            transport.close()
    have = store.get(ctx, sigs)
    entries_by_sig: dict[str, dict[Any, float]] = {}
    for (sig, rk), e in have.items():
        if not sig.startswith("model-"):
            entries_by_sig.setdefault(sig, {})[_parse_ranks(rk)] = e.ms
    model_ms = have[(msig, "whole")].ms if msig and (msig, "whole") in have else float("nan")
    probe_ms = have[(msig, probe_key)].ms if msig and (msig, probe_key) in have else float("nan")
    table = MeasuredLatency(entries_by_sig, device=spec.name, model_ms=model_ms)
    table.fit_scale(_estimates(layers, specs, tgt.effective_output_cost))
    if msig:
        def layers_sum(ranks: dict[str, Any]) -> float:
            return sum(table.latency_ms(layer, rw.method, ranks.get(p), 0.0) for p, layer, rw in layers)

        table.calibrate(model_ms, probe_ms, layers_sum({}), layers_sum(probe))
    for s in specs:
        e = have.get((s.signature, ranks_key(s.ranks)))
        rows.append({"layer": s.path, "method": s.method, "ranks": ranks_key(s.ranks),
                     "ms": None if e is None else e.ms, "spread": None if e is None else e.spread,
                     "sessions": 0 if e is None else len(e.sessions)})
    missing = (sum(1 for r in rows if r["ms"] is None) + int(bool(msig) and math.isnan(model_ms))
               + int(bool(msig and layers) and math.isnan(probe_ms)))
    layer_rows = _layer_summary(layers, table)
    return ProfileResult(table, rows, missing == 0, missing, time.monotonic() - t0, spec.name, station.runtime,
                         quant, nthreads, str(store.path), layer_rows, probe_ms)


def _layer_summary(layers: list[tuple[str, Any, Any]], table: MeasuredLatency) -> list[dict[str, Any]]:
    """Per layer: its measured time as is, and its fastest measured chain (ranks, ms, speed-up)."""
    out = []
    for path, layer, rw in layers:
        entry = table.entries.get(layer_signature(layer, rw.method), {})
        whole = entry.get(None)
        chains = {r: v for r, v in entry.items() if r is not None}
        best = min(chains.items(), key=lambda kv: kv[1]) if chains else None
        out.append({"layer": path, "method": rw.method, "whole_ms": whole,
                    "fastest_ranks": ranks_key(best[0]) if best else "", "fastest_ms": best[1] if best else None,
                    "fastest_speedup": (whole / best[1]) if best and whole else None,
                    "micro_models": len(entry)})
    return out


def predict_model_ms(plan: Any, ranks: dict[str, Any]) -> float:
    """Predicted latency (ms) of ``plan``'s model (made with ``latency_table``) with layers rewritten at
    ``ranks``: the measured whole model minus its profiled layers as is plus each layer's table entry at its
    ranks (:func:`edgelr.rewrite.allocate.model_latency`). NaN without a measured whole model."""
    from edgelr.rewrite.allocate import model_latency

    return model_latency(plan, ranks)
