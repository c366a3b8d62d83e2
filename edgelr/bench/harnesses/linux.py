"""Linux harnesses: edgelr's on-device ``runner.py`` (``linux/runner``) and LiteRT's C++ ``benchmark_model``
binary (``linux/benchmark_model``), both run under edgelr's POSIX-sh wrapper (:mod:`device_agents.procs`),
pinned with ``taskset`` where the device has it."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import shlex
from pathlib import Path

from device_agents.procs import WRAPPER_NAME, leftover_messages, push_wrapper, wrap_command, wrapper_options
from device_agents.transport import RunResult, Transport
from edgelr.bench.harnesses.base import HARNESSES, Harness, HarnessOutput, ProgramInfo, benchmark_flags
from edgelr.bench.parse import parse_benchmark_output
from edgelr.errors import BenchmarkError

_VMHWM = re.compile(r"^EDGELR_VMHWM_KB=(\d+)\s*$", re.M)
# the wrapper's shell could not fork (dash: "Cannot fork", busybox/mksh: "can't fork"): a process limit hit
_FORK_FAILED = re.compile(rf"^.*{re.escape(WRAPPER_NAME)}.*(?:[Cc]annot fork|can't fork|fork failed).*$", re.M)


def litert_runner_path() -> Path:
    """``device_agents/runner.py`` (the on-device LiteRT runner) of this installation (package data)."""
    spec = importlib.util.find_spec("device_agents.runner")
    if spec is None or not spec.origin:
        raise BenchmarkError("device_agents/runner.py is missing from this installation; reinstall edgelr")
    return Path(spec.origin)


class LinuxHarness(Harness):
    """Common part of Linux harnesses: the wrapper, taskset, output parsing."""

    tool = "benchmark_model"

    def _prepare_common(self, t: Transport, workdir: str, timeout: float, prog: ProgramInfo) -> ProgramInfo:
        """Push the wrapper, stop leftovers; fill ``prog``'s taskset, messages and wrapper options."""
        push_wrapper(t, workdir, timeout)
        prog.messages += leftover_messages(t, self.device.name, workdir, timeout)
        prog.wrapper_options = wrapper_options(t, workdir)
        res = t.run("command -v taskset >/dev/null 2>&1 && echo yes", timeout=timeout)
        prog.taskset = res.stdout.strip() == "yes"
        return prog

    def command(self, prog: ProgramInfo, model: str, threads: int, runs: int, warmup: int, use_xnnpack: bool,
                affinity_mask: str, poll_s: float, workdir: str, profile_ops: bool = False) -> str:
        argv = [*prog.argv, *benchmark_flags(model, threads, runs, warmup, use_xnnpack, profile_ops)]
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


@HARNESSES.register("linux/runner")
class LitertRunnerHarness(LinuxHarness):
    """edgelr's ``device_agents/runner.py`` run by the device's python3 (needs ai-edge-litert there)."""

    tool = "litert_runner"

    def prepare(self, t: Transport, workdir: str, timeout: float) -> ProgramInfo:
        remote = f"{workdir}/runner.py"
        argv = [self.device.python, remote]
        prog = self._prepare_common(t, workdir, timeout, ProgramInfo(self.tool, "", argv))
        sent = t.push(litert_runner_path(), remote, timeout=timeout, mode=0o755)
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


@HARNESSES.register("linux/benchmark_model")
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
