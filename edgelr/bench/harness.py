"""Harnesses: how one OS/tool combination runs a benchmark program on a device.

The orchestration (:mod:`edgelr.bench.run`) is transport- and OS-agnostic; everything that depends on
the device's OS or the benchmark tool sits behind :class:`Harness`:

* ``prepare``: push the program (and a small POSIX-sh wrapper), stop benchmarks an earlier run left
  running in the workdir (:func:`device_agents.procs.stop_leftovers`; said in ``ProgramInfo.messages``),
  find the program's version;
* ``command``: the shell line that runs one model with threads/runs/warm-up and CPU affinity;
* ``parse``: the program's output -> :class:`~edgelr.bench.parse.BenchOutput` plus the peak RSS.

Harnesses are registered under ``"<os>/<tool>"`` (``linux/runner``, ``linux/benchmark_model``; an Android
module adds ``android/benchmark_model``). :func:`select_harness` imports ``edgelr.bench.harness_<os>``,
then ``device_agents.<os>``, on first use when the key is not registered yet.

A harness may put into ``BenchOutput.extra``: ``override_rows`` ({metric: (value, note)}, replacing the
generic probes' aggregate for that metric, e.g. temperatures from ``dumpsys``) and ``extra_rows``
([(metric, value, note)], appended as further aggregate rows).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import hashlib
import shlex
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from device_agents.inventory import DeviceSpec
from device_agents.procs import RUNWRAP_SH, WRAPPER_NAME, leftover_messages, push_wrapper, wrap_command
from device_agents.procs import wrapper_options
from device_agents.transport import RunResult, Transport
from edgelr.bench.parse import BenchOutput, parse_benchmark_output
from edgelr.errors import BenchmarkError, DeviceError

MEMWRAP_NAME = WRAPPER_NAME
#: The on-device wrapper (POSIX sh): runs the program in its own process group with a pid file, stops it
#: when the host goes away, samples its VmHWM (see :mod:`device_agents.procs`).
MEMWRAP_SH = RUNWRAP_SH


def runner_path() -> Path:
    """``device_agents/runner.py`` of this installation (shipped as package data)."""
    spec = importlib.util.find_spec("device_agents.runner")
    if spec is None or not spec.origin:
        raise BenchmarkError("device_agents/runner.py is missing from this installation; reinstall edgelr")
    return Path(spec.origin)


_VMHWM = re.compile(r"^EDGELR_VMHWM_KB=(\d+)\s*$", re.M)
# the wrapper's shell could not fork (dash: "Cannot fork", busybox/mksh: "can't fork"): a process limit hit
_FORK_FAILED = re.compile(rf"^.*{re.escape(WRAPPER_NAME)}.*(?:[Cc]annot fork|can't fork|fork failed).*$", re.M)


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

    key: str = "abstract"

    def __init__(self, device: DeviceSpec) -> None:
        self.device = device

    @abstractmethod
    def prepare(self, t: Transport, workdir: str, timeout: float) -> ProgramInfo:
        """Push what the program needs into ``workdir``; return how to run it."""

    @abstractmethod
    def command(self, prog: ProgramInfo, model: str, threads: int, runs: int, warmup: int, use_xnnpack: bool,
                affinity_mask: str, poll_s: float, workdir: str) -> str:
        """The shell line that benchmarks ``model`` (a path on the device)."""

    @abstractmethod
    def parse(self, prog: ProgramInfo, result: RunResult) -> HarnessOutput:
        """The program's output -> typed result; BenchmarkError when it failed."""

    def temperatures(self, t: Transport, root: str = "", vcgencmd: str = "vcgencmd") -> dict[str, float]:
        """Device temperatures (degrees C) for cool-down and temp_before/after; sysfs thermal zones by
        default, an OS harness may read its own source (Android: ``dumpsys thermalservice``)."""
        from device_agents.probes import read_temperatures

        return read_temperatures(t, root, vcgencmd)


HARNESSES: dict[str, type[Harness]] = {}


def register_harness(key: str) -> Callable[[type[Harness]], type[Harness]]:
    """Class decorator: make a harness available for devices whose ``<os>/<tool>`` is ``key``."""

    def deco(cls: type[Harness]) -> type[Harness]:
        cls.key = key
        HARNESSES[key] = cls
        return cls

    return deco


def harness_key(device: DeviceSpec) -> str:
    """``<os>/benchmark_model`` when the device names a benchmark binary, else ``<os>/runner``."""
    return f"{device.os}/{'benchmark_model' if device.benchmark_binary else 'runner'}"


def select_harness(device: DeviceSpec) -> Harness:
    """The harness for ``device``; imports ``edgelr.bench.harness_<os>`` / ``device_agents.<os>`` when needed.

    Without ``benchmark_binary`` the ``<os>/runner`` harness is preferred and ``<os>/benchmark_model`` taken
    when the OS has no runner harness (Android: the harness finds or pushes the binary itself).
    """
    key = harness_key(device)
    keys = [key] if key.endswith("/benchmark_model") else [key, f"{device.os}/benchmark_model"]
    for module in (f"edgelr.bench.harness_{device.os}", f"device_agents.{device.os}"):
        if any(k in HARNESSES for k in keys):
            break
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    for k in keys:
        if k in HARNESSES:
            return HARNESSES[k](device)
    hint = ("set benchmark_binary to a LiteRT benchmark_model on the device"
            if key.endswith("/runner") else "drop benchmark_binary to use edgelr's runner.py")
    raise BenchmarkError(f"device '{device.name}' needs a '{key}' harness, which this edgelr does not have "
                         f"(available: {', '.join(sorted(HARNESSES))}); {hint}")


def push_text(t: Transport, text: str, remote: str, timeout: float, mode: int = 0o755) -> bool:
    """Push ``text`` as a file (sha256 skip as for any push)."""
    with tempfile.TemporaryDirectory(prefix="edgelr-push-") as tmp:
        local = Path(tmp) / Path(remote).name
        local.write_text(text)
        return t.push(local, remote, timeout=timeout, mode=mode)


def check_run(t: Transport, cmd: str, timeout: float, what: str) -> RunResult:
    """Run ``cmd``; DeviceError naming ``what`` when it exits non-zero."""
    res = t.run(cmd, timeout=timeout)
    if res.exit_code != 0:
        detail = (res.stderr.strip() or res.stdout.strip()).splitlines()
        raise DeviceError(f"{what} failed on the device (exit {res.exit_code}): "
                          f"{detail[-1] if detail else 'no output'}")
    return res


class LinuxHarness(Harness):
    """Common part of Linux harnesses: the memwrap wrapper, taskset, output parsing."""

    tool = "benchmark_model"

    def _prepare_common(self, t: Transport, workdir: str, timeout: float, prog: ProgramInfo) -> ProgramInfo:
        """Push the wrapper, stop leftovers; fill ``prog``'s taskset, messages and wrapper options."""
        push_wrapper(t, workdir, timeout)
        prog.messages += leftover_messages(t, self.device.name, workdir, timeout)
        prog.wrapper_options = wrapper_options(t, workdir)
        res = t.run("command -v taskset >/dev/null 2>&1 && echo yes", timeout=timeout)
        prog.taskset = res.stdout.strip() == "yes"
        return prog

    def _wrap(self, prog: ProgramInfo, argv: list[str], affinity_mask: str, poll_s: float, workdir: str) -> str:
        pinned = (["taskset", affinity_mask] if affinity_mask and prog.taskset else []) + argv
        return wrap_command(workdir, prog.wrapper_options, poll_s, pinned)

    def parse(self, prog: ProgramInfo, result: RunResult) -> HarnessOutput:
        fork = _FORK_FAILED.search(result.stderr)
        if result.exit_code != 0 and fork:
            raise BenchmarkError(f"{prog.tool}: the device ran out of processes while it ran (the benchmark "
                                 f"wrapper could not fork: {fork.group(0).strip()}); too many threads? lower "
                                 f"--threads or check the device's process limit")
        m = _VMHWM.search(result.stderr)
        stderr = _VMHWM.sub("", result.stderr)
        bench = parse_benchmark_output(result.stdout, stderr, result.exit_code, program=prog.tool)
        if prog.version and not bench.tool_version:
            bench.tool_version = prog.version
        hwm = int(m.group(1)) / 1024.0 if m and int(m.group(1)) > 0 else math.nan
        note = "" if m and math.isfinite(hwm) else "VmHWM not sampled (the program ended before the first sample)"
        return HarnessOutput(bench, hwm, note)


@register_harness("linux/runner")
class RunnerHarness(LinuxHarness):
    """edgelr's ``device_agents/runner.py`` run by the device's python3 (needs ai-edge-litert there)."""

    tool = "litert_runner"

    def prepare(self, t: Transport, workdir: str, timeout: float) -> ProgramInfo:
        remote = f"{workdir}/runner.py"
        argv = [self.device.python, remote]
        prog = self._prepare_common(t, workdir, timeout, ProgramInfo(self.tool, "", argv))
        sent = t.push(runner_path(), remote, timeout=timeout, mode=0o755)
        # Starting python + ai-edge-litert just for --version costs ~0.25 s per call: keep the answer on the
        # device, keyed by interpreter, and ask again only when runner.py changed. (The run's own JSON
        # record carries the live runtime version, which takes precedence in the results.)
        cache = f"{workdir}/.runner-version-{hashlib.sha256(self.device.python.encode()).hexdigest()[:12]}"
        if not sent:
            cached = t.run(shlex.join(["cat", cache]), timeout=timeout)
            if cached.exit_code == 0 and cached.stdout.strip():
                prog.version = cached.stdout.strip()
                return prog
        res = t.run(shlex.join([*argv, "--version"]), timeout=timeout)
        if res.exit_code != 0:
            detail = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
            if res.exit_code == 3 or "ai-edge-litert is not installed" in detail:
                raise BenchmarkError(f"device '{self.device.name}' has no ai-edge-litert for "
                                     f"{self.device.python}; install it on the device: "
                                     f"{self.device.python} -m pip install ai-edge-litert "
                                     f"(or set benchmark_binary in the inventory)")
            raise BenchmarkError(f"cannot run {self.device.python} on device '{self.device.name}' "
                                 f"(exit {res.exit_code}: {detail}); install python3 or set python = \"...\" "
                                 f"in the inventory")
        t.run(f"printf '%s\\n' {shlex.quote(res.stdout.strip())} > {shlex.quote(cache)}", timeout=timeout)
        prog.version = res.stdout.strip()
        return prog

    def command(self, prog: ProgramInfo, model: str, threads: int, runs: int, warmup: int, use_xnnpack: bool,
                affinity_mask: str, poll_s: float, workdir: str) -> str:
        argv = [*prog.argv, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}",
                f"--warmup_runs={warmup}", f"--use_xnnpack={'true' if use_xnnpack else 'false'}"]
        return self._wrap(prog, argv, affinity_mask, poll_s, workdir)


@register_harness("linux/benchmark_model")
class BenchmarkModelHarness(LinuxHarness):
    """LiteRT's C++ ``benchmark_model`` binary at ``benchmark_binary`` (pushed from ``benchmark_binary_local``)."""

    tool = "benchmark_model"

    def prepare(self, t: Transport, workdir: str, timeout: float) -> ProgramInfo:
        binary = self.device.benchmark_binary
        prog = self._prepare_common(t, workdir, timeout, ProgramInfo(self.tool, f"benchmark_model at {binary}",
                                                                     [binary]))
        if self.device.benchmark_binary_local:
            local = Path(self.device.benchmark_binary_local).expanduser()
            if not local.is_file():
                raise BenchmarkError(f"benchmark_binary_local {local} does not exist; fix the inventory entry "
                                     f"of device '{self.device.name}'")
            t.push(local, binary, timeout=timeout, mode=0o755)
        res = t.run(f"test -x {shlex.quote(binary)} && echo ok", timeout=timeout)
        if res.stdout.strip() != "ok":
            raise BenchmarkError(f"benchmark_binary {binary} is missing or not executable on device "
                                 f"'{self.device.name}'; copy a LiteRT benchmark_model there and chmod +x it")
        # benchmark_model has no --version; its STARTING! banner carries none either. Record the path.
        return prog

    def command(self, prog: ProgramInfo, model: str, threads: int, runs: int, warmup: int, use_xnnpack: bool,
                affinity_mask: str, poll_s: float, workdir: str) -> str:
        argv = [*prog.argv, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}",
                f"--warmup_runs={warmup}", f"--use_xnnpack={'true' if use_xnnpack else 'false'}"]
        return self._wrap(prog, argv, affinity_mask, poll_s, workdir)
