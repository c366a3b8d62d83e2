"""The harness interface and its registry: how one OS/tool combination runs a benchmark program.

The orchestration (:mod:`edgelr.bench.run`) is transport- and OS-agnostic; everything that depends on
the device's OS or the benchmark tool sits behind :class:`Harness`:

* ``prepare``: push the program (and a small POSIX-sh wrapper), stop benchmarks an earlier run left
  running in the workdir (:func:`device_agents.procs.stop_leftovers`; said in ``ProgramInfo.messages``),
  find the program's version;
* ``command``: the shell line that runs one model with threads/runs/warm-up and CPU affinity;
* ``parse``: the program's output -> :class:`~edgelr.bench.output.BenchOutput` plus the peak RSS.

Harnesses are registered in :data:`HARNESSES` under ``"<os>/<tool>"`` with
``@HARNESSES.register("linux/runner")``; :mod:`edgelr.bench.harnesses` imports every harness module and
chooses one per device (:func:`edgelr.bench.harnesses.select_harness`).

A harness may put into ``BenchOutput.extra``: ``override_rows`` ({metric: (value, note)}, replacing the
generic probes' aggregate for that metric, e.g. temperatures from ``dumpsys``) and ``extra_rows``
([(metric, value, note)], appended as further aggregate rows).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from device_agents.inventory import DeviceSpec
from device_agents.probes import read_temperatures
from device_agents.registry import Registry
from device_agents.transport import RunResult, Transport
from edgelr.bench.output import BenchOutput


@dataclass
class ProgramInfo:
    """The benchmark program on the device, ready to run."""

    tool: str                  # frame column ``tool``: benchmark_model | litert_runner | android_bench
    version: str
    argv: list[str]            # how to start it, without model flags (e.g. [python3, /tmp/edgelr/runner.py])
    taskset: bool = False      # the device has taskset
    notes: list[str] = field(default_factory=list)     # go into the rows' notes
    messages: list[str] = field(default_factory=list)  # for the progress output (leftovers stopped...)
    wrapper_options: list[str] = field(default_factory=list)  # device_agents.procs.wrapper_options


@dataclass
class HarnessOutput:
    """Parsed output plus the wrapper's peak RSS sample (MB; NaN when not sampled)."""

    bench: BenchOutput
    vm_hwm_mb: float
    vm_hwm_note: str


class Harness(ABC):
    """How one OS/tool combination runs the benchmark program (see module docstring)."""

    key: str = "abstract"  # "<os>/<tool>", set by HARNESSES.register

    def __init__(self, device: DeviceSpec) -> None:
        self.device = device

    @abstractmethod
    def prepare(self, t: Transport, workdir: str, timeout: float) -> ProgramInfo:
        """Push what the program needs into ``workdir``; return how to run it."""

    @abstractmethod
    def command(self, prog: ProgramInfo, model: str, threads: int, runs: int, warmup: int, use_xnnpack: bool,
                affinity_mask: str, poll_s: float, workdir: str, profile_ops: bool = False) -> str:
        """The shell line that benchmarks ``model`` (a path on the device); ``profile_ops`` asks the program
        for per-op timings."""

    @abstractmethod
    def parse(self, prog: ProgramInfo, result: RunResult) -> HarnessOutput:
        """The program's output -> typed result; BenchmarkError when it failed."""

    def temperatures(self, t: Transport, root: str = "", vcgencmd: str = "vcgencmd") -> dict[str, float]:
        """Device temperatures (degrees C) for cool-down and temp_before/after; every registered thermal
        probe by default (:func:`device_agents.probes.read_temperatures`), an OS harness may read its own
        source."""
        return read_temperatures(t, root, vcgencmd)


#: Harness classes by ``"<os>/<tool>"``; filled by the modules :mod:`edgelr.bench.harnesses` imports.
HARNESSES: Registry[type[Harness]] = Registry("harness", name_attr="key")


def benchmark_flags(model: str, threads: int, runs: int, warmup: int, use_xnnpack: bool,
                    profile_ops: bool = False) -> list[str]:
    """``benchmark_model``'s flags for one run (edgelr's runner.py takes the same ones). ``profile_ops``
    adds ``--enable_op_profiling=true`` (per-node timings, see :mod:`edgelr.bench.parsers.op_profile`)."""
    flags = [f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}", f"--warmup_runs={warmup}",
             f"--use_xnnpack={'true' if use_xnnpack else 'false'}"]
    return flags + (["--enable_op_profiling=true"] if profile_ops else [])
