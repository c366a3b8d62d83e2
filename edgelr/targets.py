"""Target device profiles: shipped as data (``edgelr/data/targets.toml``), overridable by users.

A user file (``--targets FILE`` or ``EDGELR_TARGETS``) has the same ``[targets.NAME]`` tables; a table
with a built-in name overrides the fields it sets, a new name adds a profile (it may say
``base = "rpi4"`` to start from a built-in one).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edgelr.errors import TargetError

QUANTIZATIONS = ("int8", "dynamic", "float16", "none")
IO_DTYPES = ("int8", "uint8", "float32")
DELEGATES = ("xnnpack", "gpu", "nnapi", "none")
OSES = ("linux", "android")
DEFAULT_OUTPUT_COST = {"int8": 16.0, "dynamic": 2.0, "float16": 2.0, "none": 2.0}
"""MAC-equivalents one written activation element costs in the latency estimate, by quantization (fitted
on an x86-64 AVX2 host with XNNPACK: int8 15-28, 16 chosen; float32 1-2; reports/resnet50_layer_profile.md).
A profile without its own ``output_cost`` (field 0.0) uses this value for its quantization
(:attr:`Target.effective_output_cost`, shown by ``edgelr targets``)."""


@dataclass(frozen=True)
class Target:
    """One device profile: what the pipeline needs to know about where a model will run."""

    name: str
    description: str
    os: str
    abi: str
    arch: str
    cpu: str
    cores: int
    threads: int
    affinity_mask: str
    quantization: str
    io_dtype: str
    delegate: str
    rank_multiple: int
    memory_budget_mb: int
    method: str = "auto"
    rank_policy: str = "vbmf"
    output_cost: float = 0.0

    @property
    def effective_output_cost(self) -> float:
        """The ``output_cost`` the latency estimate uses: the profile's own when > 0, else
        :data:`DEFAULT_OUTPUT_COST` for its quantization (16 for int8, 2 otherwise)."""
        own = float(self.output_cost or 0.0)
        return own if own > 0 else DEFAULT_OUTPUT_COST.get(self.quantization, DEFAULT_OUTPUT_COST["int8"])

    def to_dict(self) -> dict[str, Any]:
        """The profile's fields, ``output_cost`` as the estimate uses it (:attr:`effective_output_cost`)."""
        return {**dataclasses.asdict(self), "output_cost": self.effective_output_cost}


_FIELDS = {f.name: f for f in dataclasses.fields(Target)}


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise TargetError(f"target file {path} does not exist; pass an existing TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target file {path} is not valid TOML ({exc}); fix the syntax") from None
    tables = doc.get("targets")
    if not isinstance(tables, dict):
        raise TargetError(f"target file {path} has no [targets.NAME] tables; see edgelr/data/targets.toml")
    return tables


def _builtin() -> dict[str, dict[str, Any]]:
    text = resources.files("edgelr").joinpath("data/targets.toml").read_bytes()
    return tomllib.loads(text.decode())["targets"]


def _validate(name: str, raw: dict[str, Any], source: str) -> Target:
    unknown = sorted(set(raw) - set(_FIELDS) - {"base"})
    if unknown:
        raise TargetError(f"target '{name}' in {source} has unknown field(s) {unknown}; "
                          f"valid fields are {sorted(set(_FIELDS) - {'name'})}")
    missing = [f for f, spec in _FIELDS.items()
               if f not in raw and f != "name" and spec.default is dataclasses.MISSING]
    if missing:
        raise TargetError(f"target '{name}' in {source} lacks field(s) {missing}; "
                          f"set them or start from a built-in profile with base = \"rpi4\"")
    choices = {"quantization": QUANTIZATIONS, "io_dtype": IO_DTYPES, "delegate": DELEGATES, "os": OSES}
    for field, allowed in choices.items():
        if raw[field] not in allowed:
            raise TargetError(f"target '{name}': {field}={raw[field]!r}; expected one of {list(allowed)}")
    for field in ("cores", "threads", "rank_multiple", "memory_budget_mb"):
        zero_ok = field in ("cores", "rank_multiple")
        if not isinstance(raw[field], int) or raw[field] < 0 or (not zero_ok and raw[field] == 0):
            raise TargetError(f"target '{name}': {field}={raw[field]!r}; expected a positive integer"
                              + (" (or 0 = this machine's)" if zero_ok else ""))
    cost = raw.get("output_cost", 0.0)
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0:
        raise TargetError(f"target '{name}': output_cost={cost!r}; expected a number >= 0 (MAC-equivalents per "
                          "output element; 0 = the default for the quantization)")
    mask = raw["affinity_mask"]
    if mask:
        try:
            int(mask, 16)
        except (TypeError, ValueError):
            raise TargetError(f"target '{name}': affinity_mask={mask!r}; expected a hex CPU mask such as 'f0'") from None
    values = {k: v for k, v in raw.items() if k != "base"}
    if values["rank_multiple"] == 0:
        values["rank_multiple"] = native_rank_multiple(quantization=values["quantization"])
    return Target(name=name, **values)


def native_rank_multiple(machine: str | None = None, quantization: str = "int8") -> int:
    """Channel multiple that suits XNNPACK's GEMM kernels on this machine for this quantization.

    x86-64 float kernels (AVX2/FMA3) compute 16 output channels per tile: measured on ResNet-50's 1x1
    convs, rank 104 ran 2.3x faster than the original for 3.9x fewer MACs, rank 112 3.7x for 3.7x.
    x86-64 int8 kernels (AVX2 ``c8``) and arm64 NEON kernels tile 8 channels. So: 16 for a float
    target on x86-64, else 8."""
    import platform

    arch = (machine or platform.machine()).lower()
    return 16 if arch in ("x86_64", "amd64", "x64") and quantization != "int8" else 8


def load_targets(user_file: str | os.PathLike[str] | None = None) -> dict[str, Target]:
    """All target profiles: the built-in ones plus/overridden by ``user_file`` (or ``$EDGELR_TARGETS``)."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in _builtin().items()}
    sources = {k: "built-in targets" for k in merged}
    path = user_file or os.environ.get("EDGELR_TARGETS")
    if path:
        for name, table in _read_toml(Path(path)).items():
            if not isinstance(table, dict):
                raise TargetError(f"target '{name}' in {path} is not a table; write [targets.{name}]")
            base_name = table.get("base", name if name in merged else None)
            if base_name is not None and base_name not in merged:
                raise TargetError(f"target '{name}' in {path} has base={base_name!r}, which is not a known "
                                  f"target; valid: {', '.join(sorted(merged))}")
            base = dict(merged[base_name]) if base_name else {}
            base.pop("description", None) if base_name != name else None
            base.setdefault("description", f"user profile {name}")
            merged[name] = {**base, **table}
            sources[name] = str(path)
    return {name: _validate(name, raw, sources[name]) for name, raw in merged.items()}


def get_target(name: str, user_file: str | os.PathLike[str] | None = None) -> Target:
    """The profile called ``name``; an unknown name raises :class:`TargetError` listing the valid ones."""
    targets = load_targets(user_file)
    if name not in targets:
        raise TargetError(f"unknown target '{name}'; valid targets: {', '.join(sorted(targets))} "
                          f"(add your own with --targets FILE)")
    return targets[name]
