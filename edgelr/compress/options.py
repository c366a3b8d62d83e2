"""The options of a compress run (:class:`CompressOptions`), checked before any work, and the rank-plan
options they resolve to (:func:`resolve_plan_options`, once per run)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from edgelr.compress.distribute import DEFAULT_WORKER_TIMEOUT, parse_distribute
from edgelr.errors import EdgelrError, UsageError
from edgelr.rewrite.options import (
    PlanOptions,
    check_allocate,
    check_layer_policies,
    check_min_efficiency,
    check_min_saving,
    plan_options,
)
from edgelr.rewrite.plan import DEFAULT_MIN_SAVING
from edgelr.targets import Target


@dataclass
class CompressOptions:
    """Options of :func:`compress` (CLI flags in brackets).

    Attributes
    ----------
    max_accuracy_drop : float or None
        [--max-accuracy-drop] Accuracy budget in points for the final int8 model against the float
        original (test split); enables the rank search. None = factorize per the rank policy.
    method, rank_policy : str or None
        [--method, --rank-policy] Factorization method and rank policy; default from the target profile.
    layer_policies : dict of str -> str, or None
        [--layer-policy PATTERN=POLICY] Per-layer rank policies: fnmatch pattern on the layer name -> policy
        spec; the first matching pattern wins, other layers follow ``rank_policy`` (see
        :func:`edgelr.rewrite.plan_factorization`).
    epochs : int
        [--epochs] Distillation fine-tuning epochs (0 = none).
    qat : bool
        [--qat/--no-qat] Quantization-aware training before int8 conversion.
    qat_epochs : int
        Epochs of QAT fine-tuning.
    quantize : str or None
        [--quantize] int8 | float16 | dynamic | none; default the target's.
    batch_size, learning_rate, temperature, alpha : distillation settings (see DistillConfig)
    max_train : int or None
        Use at most this many training samples per epoch (a new random draw each epoch).
    calibration_samples : int
        Representative samples for int8 calibration (drawn from the training split).
    include, skip : list of str or None
        Layer names to factorize only / never.
    strip_names : bool
        [--keep-names sets False] Strip internal tensor names from both ``.tflite`` files (smaller files,
        same outputs; input/output names and signatures are kept).
    min_reduction : float
        A layer is factorized only if it saves at least this share of its MACs (or params).
    min_efficiency : float or None
        [--min-efficiency] Latency-aware skip: a layer is left as is when its estimated speed-up is below
        this share of its MAC reduction (see :func:`edgelr.rewrite.plan_factorization`). None: off.
    allocate : str
        [--allocate] ``layer`` (each layer meets the rank policy) or ``latency`` (the policy sets the total
        params and weight loss; ranks re-chosen model-wide for the least estimated latency, see
        :func:`edgelr.rewrite.plan_factorization`).
    min_saving : int or None
        [--min-saving] Absolute-saving rule: a layer stays whole when its split saves fewer than this many
        parameters and MACs, or it is a conv on <= 3 input channels that does not pay by the latency estimate
        (:func:`edgelr.rewrite.plan.saving_reason`). Default 1024 (``DEFAULT_MIN_SAVING``); 0 keeps only the
        small-input conv rule; None turns the rule off.
    data_aware : bool
        [--no-data-aware sets False] Data-aware factorization: the plan collects each layer's input statistics on
        the ``calibration_samples`` training inputs and minimises the layers' output error instead of their weight
        error, and ranks read the data-aware spectrum (:mod:`edgelr.factorize.whiten`); the rank search's
        candidates and sensitivities are built from those decompositions. Resolved by :func:`with_calibration`.
    latency_table : edgelr.rewrite.cost.MeasuredLatency or None
        [--latency-device NAME builds or reuses it, :func:`edgelr.profile.profile_model`] Per-layer latencies
        measured on the device: the plan, ``allocate="latency"`` and the rank search use them instead of the
        estimate, and layers whose chains do not pay on that device stay whole.
    max_latency_ms, min_speedup : float or None
        [--max-latency-ms, --min-speedup] With ``latency_table``: the rank search picks the least validation
        drop among the candidates predicted within this latency (or this speed-up over the measured original).
    search_subset : int
        Inputs the rank search scores candidates on (their top-1 agreement with the original): the validation
        inputs, topped up with training inputs when there are fewer (:func:`edgelr.compress.search.search_inputs`).
    max_trials : int
        [--max-trials] Fine-tune + convert + validate attempts of the rank search.
    history : str or None
        [--history] Results history directory; compress rows are appended there.
    targets_file : str or None
        [--targets] User target profiles.
    seed : int
        [--seed] Seeds Python, NumPy and TensorFlow (with op determinism on during the run) and every draw;
        same seed, same result (:func:`edgelr.compress.attempt.deterministic`).
    progress : bool
        Progress bars and messages on stderr.
    nuclear : float
        [--nuclear] Nuclear-norm (trace-norm) low-rank training before factorization: the shrinkage of each
        proximal singular-value thresholding step as a share of the matrix's mean singular value (e.g. 0.05;
        :mod:`edgelr.compress.lowrank_train`); 0 = off.
    nuclear_every : int
        [--nuclear-every] Training steps between two proximal steps.
    deeptwist_every : int or None
        [--deeptwist N] DeepTwist before factorization: every N training steps each layer's weights are
        replaced by their low-rank approximation at the plan's ranks; factorized exactly at the end. None = off.
    lowrank_epochs : int
        [--lowrank-epochs] Epochs of that low-rank training (distillation from the original, same settings
        as the fine-tuning).
    orthogonal : float
        [--orthogonal] Soft-orthogonality strength on the chains' input factors during fine-tuning
        (``lambda ||A^T A - I||^2``, factors first orthonormalized exactly); 0 = off.
    overparam_epochs : int
        [--overparam-epochs N] The flow of He, Jiang & Wu 2024 (needs ``orthogonal``): before rank selection,
        train N epochs over-parameterized (each svd/tucker2 layer as its full-rank factor chain) with soft
        orthogonality on the factors, merge back, then choose ranks (``vbmf`` in the paper), factorize and
        fine-tune. 0 = off.
    cv_folds : int or None
        [--cv-folds K] Choose the rank policy among ``cv_policies`` by K-fold cross-validation on the
        training split (fine-tune on K-1 folds, score the held-out fold; the most compressed candidate
        within one standard error of the best mean wins, :mod:`edgelr.compress.cv_ranks`). None = off.
    cv_policies : list of str or None
        [--cv-policy, repeatable] The candidate rank policies (default: ``rank_policy`` and
        ``params:0.5`` / ``params:0.25`` / ``params:0.125``).
    cv_epochs : int
        Fine-tuning epochs per fold.
    distribute : str, DistributeSpec or None
        [--distribute mirrored|mirrored:N|multiworker] Fine-tuning and QAT on tf.distribute (workers from
        ``TF_CONFIG``); resolved by :func:`check_options` to an :class:`edgelr.compress.distribute.DistributeSpec`.
        None = one process.
    worker_timeout : float
        [--worker-timeout] Seconds the workers of a ``multiworker`` run wait for each other at start.
    """

    max_accuracy_drop: float | None = None
    method: str | None = None
    rank_policy: str | None = None
    layer_policies: dict[str, str] | None = None
    epochs: int = 3
    qat: bool = True
    qat_epochs: int = 1
    quantize: str | None = None
    batch_size: int = 64
    learning_rate: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.7
    max_train: int | None = None
    calibration_samples: int = 256
    include: list[str] | None = None
    skip: list[str] | None = None
    strip_names: bool = True
    min_reduction: float = 0.1
    min_efficiency: float | None = None
    allocate: str = "layer"
    latency_table: Any = None
    max_latency_ms: float | None = None
    min_speedup: float | None = None
    data_aware: bool = True
    min_saving: int | None = DEFAULT_MIN_SAVING
    search_subset: int = 1000
    max_trials: int = 3
    history: str | None = None
    targets_file: str | None = None
    seed: int = 0
    progress: bool = True
    nuclear: float = 0.0
    nuclear_every: int = 10
    deeptwist_every: int | None = None
    lowrank_epochs: int = 1
    orthogonal: float = 0.0
    overparam_epochs: int = 0
    cv_folds: int | None = None
    cv_policies: list[str] | None = None
    cv_epochs: int = 2
    distribute: Any = None
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT


def check_options(options: dict[str, Any]) -> CompressOptions:
    """``options`` (keyword arguments of :func:`edgelr.compress.compress`) as :class:`CompressOptions`,
    each checked before any work; ``layer_policies`` normalised (:func:`edgelr.rewrite.check_layer_policies`).

    Raises
    ------
    UsageError
        An unknown option, or a bad value; the message names the CLI flag (``--rank-policy: ...``).
    """
    valid = sorted(f.name for f in fields(CompressOptions))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UsageError(f"compress: unknown option(s) {unknown}; valid: {valid}")
    opts = CompressOptions(**options)
    if opts.epochs < 0 or opts.qat_epochs < 0 or opts.batch_size < 1:
        raise UsageError(f"epochs={opts.epochs}, qat_epochs={opts.qat_epochs}, batch_size={opts.batch_size}; "
                         "expected epochs >= 0 and batch size >= 1")
    if opts.rank_policy is not None:
        from edgelr.factorize import parse_rank_policy

        try:
            parse_rank_policy(opts.rank_policy)
        except EdgelrError as exc:
            raise UsageError(f"--rank-policy: {exc}") from None
    if opts.layer_policies is not None:
        try:
            opts.layer_policies = check_layer_policies(opts.layer_policies)
        except EdgelrError as exc:
            raise UsageError(f"--layer-policy: {exc}") from None
    for flag, value in (("--max-latency-ms", opts.max_latency_ms), ("--min-speedup", opts.min_speedup)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise UsageError(f"{flag}: got {value!r}; expected a positive number")
        if value is not None and opts.latency_table is None:
            raise UsageError(f"{flag}: needs a latency table measured on the device; add --latency-device NAME")
    for flag, check, value in (("--min-efficiency", check_min_efficiency, opts.min_efficiency),
                               ("--allocate", check_allocate, opts.allocate),
                               ("--min-saving", check_min_saving, opts.min_saving)):
        try:
            check(value)
        except EdgelrError as exc:
            raise UsageError(f"{flag}: {exc}") from None
    _check_lowrank_training(opts)
    opts.distribute = parse_distribute(opts.distribute, opts.worker_timeout)
    if opts.distribute is not None:
        alone = [f for f, on in (("--nuclear", opts.nuclear > 0), ("--deeptwist", opts.deeptwist_every is not None),
                                 ("--orthogonal", opts.orthogonal > 0), ("--cv-folds", opts.cv_folds is not None))
                 if on]
        if alone:
            raise UsageError(f"--distribute: not combined with {', '.join(alone)} yet (their training steps act on "
                             "one process's model); drop one of them")
    return opts


def _check_lowrank_training(opts: CompressOptions) -> None:
    """The low-rank training and cross-validation options (:mod:`edgelr.compress.lowrank_train`,
    :mod:`edgelr.compress.cv_ranks`); raises :class:`UsageError` naming the flag."""
    for flag, value in (("--nuclear", opts.nuclear), ("--orthogonal", opts.orthogonal)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < float("inf"):
            raise UsageError(f"{flag}: got {value!r}; expected a strength >= 0 (0 = off)")
    for flag, value, allow_none in (("--nuclear-every", opts.nuclear_every, False),
                                    ("--deeptwist", opts.deeptwist_every, True),
                                    ("--lowrank-epochs", opts.lowrank_epochs, False),
                                    ("--cv-epochs", opts.cv_epochs, False)):
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{flag}: got {value!r}; expected a whole number >= 1")
    if opts.cv_folds is not None and (isinstance(opts.cv_folds, bool) or not isinstance(opts.cv_folds, int)
                                      or opts.cv_folds < 2):
        raise UsageError(f"--cv-folds: got {opts.cv_folds!r}; expected K >= 2 (or leave it off)")
    if opts.cv_policies is not None:
        from edgelr.factorize import parse_rank_policy

        if opts.cv_folds is None:
            raise UsageError("--cv-policy: given without --cv-folds K; add --cv-folds 3 (or drop --cv-policy)")
        for spec in opts.cv_policies:
            try:
                parse_rank_policy(spec)
            except EdgelrError as exc:
                raise UsageError(f"--cv-policy: {exc}") from None
    if isinstance(opts.overparam_epochs, bool) or not isinstance(opts.overparam_epochs, int) or opts.overparam_epochs < 0:
        raise UsageError(f"--overparam-epochs: got {opts.overparam_epochs!r}; expected a whole number >= 0")
    if opts.overparam_epochs and not opts.orthogonal:
        raise UsageError("--overparam-epochs: the over-parameterized training needs --orthogonal STRENGTH (e.g. 1e-3)")
    if opts.overparam_epochs and (opts.nuclear > 0 or opts.deeptwist_every is not None):
        raise UsageError("--overparam-epochs with --nuclear/--deeptwist: pick one training before factorization")
    pre = [f for f, on in (("--nuclear", opts.nuclear > 0), ("--deeptwist", opts.deeptwist_every is not None),
                           ("--cv-folds", opts.cv_folds is not None),
                           ("--overparam-epochs", opts.overparam_epochs > 0)) if on]
    if pre and opts.max_accuracy_drop is not None:
        raise UsageError(f"{', '.join(pre)}: not combined with --max-accuracy-drop yet (the rank search picks its "
                         "own ranks); drop one of them")
    if opts.nuclear > 0 and opts.deeptwist_every is not None:
        raise UsageError("--nuclear and --deeptwist: pick one low-rank training method per run")


def resolve_plan_options(opts: CompressOptions, target: Target) -> PlanOptions:
    """The rank-plan options of a run: ``opts``' plan fields through :func:`edgelr.rewrite.plan_options`,
    which applies ``target``'s method and rank-policy defaults (the one place that does)."""
    return plan_options(target, method=opts.method, rank_policy=opts.rank_policy,
                        layer_policies=opts.layer_policies, include=opts.include, skip=opts.skip,
                        min_reduction=opts.min_reduction, min_efficiency=opts.min_efficiency,
                        allocate=opts.allocate, min_saving=opts.min_saving,
                        latency_table=opts.latency_table)


def with_calibration(plan_options: PlanOptions, opts: CompressOptions, inputs: Any) -> PlanOptions:
    """The run's plan options with its calibration ``inputs`` (data-aware factorization) when ``opts.data_aware``,
    else unchanged: the one place a compress run decides it (once, after the data is loaded)."""
    return replace(plan_options, calibration=inputs) if opts.data_aware else plan_options
