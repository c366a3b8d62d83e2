"""``edgelr compress``: factorize, fine-tune with distillation, QAT, convert to TFLite and validate."""

from __future__ import annotations

from typing import Any

import click

from edgelr.cli._common import echo_json, info, table
from edgelr.compress.distribute import DEFAULT_WORKER_TIMEOUT
from edgelr.rewrite import methods
from edgelr.rewrite.options import ALLOCATIONS

METHOD_CHOICES = ["auto", *methods()]
"""``--method``: ``auto`` (each layer's preferred rewriter) or any registered method."""
QUANT_CHOICES = ["int8", "float16", "dynamic", "none", "float32"]


@click.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--data", required=True, help="digits | fashion-mnist | file.npz | module:function")
@click.option("--target", default="host", show_default=True, help="Target profile (see `edgelr targets`).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="Accuracy budget in points for the final quantized model; enables the rank search.")
@click.option("--method", type=click.Choice(METHOD_CHOICES), default=None,
              help="Factorization method (default: the target's).")
@click.option("--rank-policy", default=None, help="vbmf | energy:F | params:F | macs:F | rank:N (default: the target's).")
@click.option("--layer-policy", "layer_policy", multiple=True, metavar="PATTERN=POLICY",
              help="Rank policy for the layers matching PATTERN, e.g. 'dense=params:0.2' (repeatable; the first "
                   "matching pattern wins, other layers follow --rank-policy).")
@click.option("--min-efficiency", type=float, default=None,
              help="Leave a layer as is when its estimated speed-up is below this share of its MAC reduction "
                   "(output-bound layers; e.g. 0.8). Default: off.")
@click.option("--allocate", type=click.Choice(list(ALLOCATIONS)), default="layer", show_default=True,
              help="layer: each layer meets the rank policy on its own. latency: the policy only sets the total "
                   "params and weight loss; ranks are re-chosen model-wide for the least estimated latency.")
@click.option("--min-saving", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Leave a layer whole when its split saves fewer than N parameters and fewer than N MACs, or it "
                   "is a conv on <= 3 input channels that does not pay by the latency estimate (0: only the latter).")
@click.option("--data-aware/--no-data-aware", default=True, show_default=True,
              help="Factorize each layer to keep its OUTPUT on calibration inputs (training samples) instead of its "
                   "weights; ranks read the data-aware spectrum.")
@click.option("--latency-device", default=None, metavar="NAME",
              help="Optimize latency measured on this inventory device: builds or reuses its per-layer latency table "
                   "(`edgelr profile`) for the plan, --allocate latency and the rank search; layers whose chains "
                   "do not pay there stay whole. Default: the MAC-based estimate.")
@click.option("--max-latency-ms", type=float, default=None,
              help="With --latency-device: least accuracy loss among configurations predicted within this latency.")
@click.option("--min-speedup", type=float, default=None,
              help="With --latency-device: least accuracy loss among configurations predicted at least this much "
                   "faster than the measured original.")
@click.option("--profile-max-time", type=float, default=None,
              help="Time budget (s) for building the latency table; unmeasured layers use the scaled estimate.")
@click.option("--inventory", type=click.Path(dir_okay=False), default=None, help="Inventory TOML file (--latency-device).")
@click.option("--epochs", type=int, default=3, show_default=True, help="Distillation fine-tuning epochs (0 = none).")
@click.option("--nuclear", type=float, default=0.0, show_default=True,
              help="Low-rank training before factorization: nuclear-norm proximal steps (singular-value "
                   "thresholding every --nuclear-every steps) shrinking by this share of the mean singular "
                   "value (e.g. 0.05). 0 = off.")
@click.option("--nuclear-every", type=int, default=10, show_default=True, help="Steps between proximal steps.")
@click.option("--deeptwist", "deeptwist_every", type=int, default=None, metavar="N",
              help="Low-rank training before factorization: DeepTwist, weights projected to the plan's ranks "
                   "every N steps, then factorized exactly.")
@click.option("--lowrank-epochs", type=int, default=1, show_default=True,
              help="Epochs of --nuclear / --deeptwist training.")
@click.option("--orthogonal", type=float, default=0.0, show_default=True,
              help="Soft orthogonality of the factors during fine-tuning (lambda ||A^T A - I||^2; e.g. 1e-3). 0 = off.")
@click.option("--overparam-epochs", type=int, default=0, show_default=True,
              help="With --orthogonal: first train N epochs over-parameterized (full-rank factor chains, soft "
                   "orthogonality), merge back, then choose ranks and factorize (He, Jiang & Wu 2024).")
@click.option("--cv-folds", type=int, default=None, metavar="K",
              help="Choose the rank policy by K-fold cross-validation (small data sets): the most compressed "
                   "candidate within one standard error of the best.")
@click.option("--cv-policy", "cv_policies", multiple=True, metavar="POLICY",
              help="A candidate rank policy for --cv-folds (repeatable; default: --rank-policy and "
                   "params:0.5/0.25/0.125).")
@click.option("--qat/--no-qat", default=True, show_default=True, help="Quantization-aware training before int8.")
@click.option("--distribute", default=None, metavar="mirrored|mirrored:N|multiworker",
              help="Fine-tune and QAT on tf.distribute: mirrored (this host's GPUs, or N logical CPUs, default 2) "
                   "or multiworker (run the same command on every worker; cluster and task from TF_CONFIG; the "
                   "chief writes the outputs). Same model as one process up to numerical noise.")
@click.option("--worker-timeout", type=float, default=DEFAULT_WORKER_TIMEOUT, show_default=True,
              help="Seconds multiworker workers wait for each other at start before giving up.")
@click.option("--quantize", type=click.Choice(QUANT_CHOICES), default=None,
              help="TFLite quantization (default: the target's).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=5e-4, show_default=True, help="Fine-tuning learning rate.")
@click.option("--max-train", type=int, default=None, help="Use at most N training samples per epoch.")
@click.option("--include", multiple=True, help="Only factorize layers matching this pattern (repeatable).")
@click.option("--skip", multiple=True, help="Never factorize layers matching this pattern (repeatable).")
@click.option("--keep-names", is_flag=True,
              help="Keep internal tensor names in the .tflite files (bigger; for reading the graph in Netron).")
@click.option("--history", default=None, type=click.Path(), help="Append accuracy/size/params/MACs to this history.")
@click.option("--targets", "targets_file", default=None, type=click.Path(dir_okay=False),
              help="User target profiles (TOML).")
@click.option("--max-trials", type=click.IntRange(min=1), default=3, show_default=True,
              help="With --max-accuracy-drop: most candidates fine-tuned, converted and validated.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of everything random in the run (same seed, same result on the same machine).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def compress(ctx: click.Context, model: str, data: str, target: str, out_dir: str, max_accuracy_drop: float | None,
             method: str | None, rank_policy: str | None, layer_policy: tuple[str, ...],
             min_efficiency: float | None, allocate: str, data_aware: bool,
             min_saving: int, epochs: int, nuclear: float, nuclear_every: int,
             deeptwist_every: int | None, lowrank_epochs: int, orthogonal: float, overparam_epochs: int,
             cv_folds: int | None,
             cv_policies: tuple[str, ...], qat: bool, distribute: str | None, worker_timeout: float,
             quantize: str | None, batch_size: int, learning_rate: float, max_train: int | None,
             include: tuple[str, ...], skip: tuple[str, ...], keep_names: bool, history: str | None,
             latency_device: str | None, max_latency_ms: float | None, min_speedup: float | None,
             profile_max_time: float | None, inventory: str | None,
             targets_file: str | None, max_trials: int, seed: int, force: bool, as_json: bool) -> None:
    """Compress MODEL for a target device: low-rank factorization, distillation fine-tuning,
    quantization-aware training, TFLite conversion and validation with ai-edge-litert.

    Writes OUT/model.tflite, OUT/model.keras (factorized float model), OUT/baseline.tflite (the original,
    same quantization), OUT/report.json, OUT/layers.csv and OUT/summary.md (+ search.csv/search.png with
    --max-accuracy-drop). Exit code 1 when the accuracy budget cannot be met (the best configuration
    found is still written). Internal tensor names are stripped from both .tflite files (input/output
    names and signatures stay); --keep-names keeps them.

    \b
    Examples:
      edgelr compress model.keras --data fashion-mnist --target rpi4 --out out/
      edgelr compress model.keras --data digits --out out/ --max-accuracy-drop 1.0 --json
      edgelr compress model.keras --data data.npz --rank-policy macs:0.5 --quantize float16 --out out/
      edgelr compress model.keras --data digits --rank-policy macs:0.45 --layer-policy 'dense*=params:0.2' --out out/
      edgelr compress model.keras --data digits --rank-policy macs:0.25 --deeptwist 20 --lowrank-epochs 2 --out out/
      edgelr compress lstm.keras --data vowels.npz --method tensor3 --cv-folds 3 --out out/
      export TF_CONFIG='{"cluster": {"worker": ["h0:2222", "h1:2222"]}, "task": {"type": "worker", "index": 0}}'
      edgelr compress model.keras --data fashion-mnist --distribute multiworker --out out/   # index 1 on h1
    """
    from edgelr.compress.pipeline import compress as run

    latency_table = None
    if latency_device is not None:
        from edgelr.profile import profile_model

        prof = profile_model(model, latency_device, target=target, method=method or "auto",
                             quantization={"float32": "none"}.get(quantize or "", quantize), inventory=inventory,
                             max_time_s=profile_max_time, targets_file=targets_file, progress=info)
        if not prof.complete:
            info(f"edgelr compress: latency table incomplete ({prof.missing} micro-model(s) not measured): those "
                 "layers use the estimate, scaled to ms")
        latency_table = prof.table

    policies = parse_layer_policies(layer_policy)

    result = run(model, data, target, out_dir, force=force, max_accuracy_drop=max_accuracy_drop, method=method,
                 rank_policy=rank_policy, layer_policies=policies, min_efficiency=min_efficiency, allocate=allocate,
                 data_aware=data_aware,
                 min_saving=min_saving,
                 epochs=epochs, nuclear=nuclear, nuclear_every=nuclear_every, deeptwist_every=deeptwist_every,
                 lowrank_epochs=lowrank_epochs, orthogonal=orthogonal, overparam_epochs=overparam_epochs,
                 cv_folds=cv_folds,
                 cv_policies=list(cv_policies) or None,
                 qat=qat, quantize=quantize, distribute=distribute, worker_timeout=worker_timeout,
                 batch_size=batch_size, learning_rate=learning_rate, max_train=max_train, include=list(include) or None,
                 skip=list(skip) or None, strip_names=not keep_names, history=history, targets_file=targets_file,
                 max_trials=max_trials, seed=seed,
                 latency_table=latency_table, max_latency_ms=max_latency_ms, min_speedup=min_speedup,
                 progress=True)
    if as_json:
        echo_json(result.summary)
    else:
        click.echo(_text(result.summary))
    if result.exit_code:
        info(f"edgelr: error: {result.message}")
        ctx.exit(result.exit_code)


def parse_layer_policies(values: tuple[str, ...] | list[str]) -> dict[str, str] | None:
    """``--layer-policy PATTERN=POLICY`` values as an ordered pattern -> policy dict (None when none given).

    Raises
    ------
    UsageError
        A value without '=' (or with an empty side), or a pattern given twice.
    """
    from edgelr.errors import UsageError

    policies: dict[str, str] = {}
    for value in values:
        pattern, sep, policy = value.rpartition("=")
        if not sep or not pattern.strip() or not policy.strip():
            raise UsageError(f"--layer-policy: got {value!r}; expected PATTERN=POLICY, e.g. 'dense=params:0.2'")
        pattern = pattern.strip()
        if pattern in policies:
            raise UsageError(f"--layer-policy: pattern {pattern!r} given twice ({policies[pattern]!r} and "
                             f"{policy.strip()!r}); give each pattern once")
        policies[pattern] = policy.strip()
    return policies or None


def _text(s: dict[str, Any]) -> str:
    metric = s["metric"]
    rows = [
        {"": "params", "original": s["original"]["params"], "compressed": s["compressed"]["params"],
         "ratio": f"{s['reduction']['params_x']:.2f}x"},
        {"": "MACs", "original": s["original"]["macs"], "compressed": s["compressed"]["macs"],
         "ratio": f"{s['reduction']['macs_x']:.2f}x"},
        {"": f"{metric} float", "original": s["original"]["score"], "compressed": s["compressed"]["score_float"],
         "ratio": ""},
        {"": f"{metric} {s['quantization']} tflite", "original": s["original"]["tflite_score"],
         "compressed": s["compressed"]["tflite_score"], "ratio": ""},
        {"": "tflite bytes", "original": s["original"]["tflite_bytes"], "compressed": s["compressed"]["tflite_bytes"],
         "ratio": f"{s['reduction']['tflite_size_x']:.2f}x"},
    ]
    out = [table(rows)]
    for name, path in (s.get("outputs") or {}).items():
        out.append(f"{name}: {path}")
    return "\n".join(out)
