"""The ``local`` transport: this machine is the device.

Commands run in ``/bin/sh`` (an argv list is quoted word by word, see :func:`to_shell`) in their own
process group; on timeout the whole group is stopped (TERM, then KILL) and
:class:`edgelr.errors.DeviceError` raised. A command's stdin is a pipe this process holds open while it
waits (``heartbeat_s = 0``): when edgelr dies, even by ``kill -9``, the pipe ends and the benchmark
wrapper (:mod:`device_agents.procs`) stops the benchmark. :meth:`LocalTransport.close` stops every
command still running.
``push`` copies into the device's workdir and skips the copy when the destination's sha256 already
matches.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from device_agents.files import sha256_file
from device_agents.transport import TRANSPORTS, Command, RunResult, Transport, to_shell
from edgelr.errors import DeviceError


@TRANSPORTS.register("local")
class LocalTransport(Transport):
    """Run commands and copy files on this machine.

    Parameters
    ----------
    shell
        The POSIX shell commands run in (``/bin/sh``; tests use ``dash`` or ``busybox sh``).
    **_
        Other inventory fields (``host``, ``user``...) are accepted and ignored.
    """

    heartbeat_s = 0.0

    @classmethod
    def inventory_kwargs(cls, spec: Any) -> dict[str, Any]:
        return {"shell": spec.shell}

    @classmethod
    def address(cls, spec: Any) -> str:
        return "this machine"

    def __init__(self, shell: str = "/bin/sh", **_: object) -> None:
        self.shell = shell
        self._closed = False
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def run(self, cmd: Command, timeout: float, env: dict[str, str] | None = None) -> RunResult:
        """Run ``cmd`` in ``self.shell``; kill its process group and raise DeviceError after ``timeout`` s."""
        line = to_shell(cmd)
        full_env = None if env is None else {**os.environ, **env}
        t0 = time.monotonic()
        # stdin: the read end of a pipe whose write end only this process holds (os.pipe fds are not
        # inheritable), closed once the command ended, or by the kernel when this process dies
        r, w = os.pipe()
        try:
            proc = subprocess.Popen([self.shell, "-c", line], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=r, env=full_env, start_new_session=True)
        except OSError as exc:
            os.close(w)
            raise DeviceError(f"cannot start {self.shell} to run {line[:80]!r}: {exc}") from None
        finally:
            os.close(r)
        with self._lock:
            self._running.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
            raise DeviceError(f"local command timed out after {timeout:g} s and was killed: {line[:120]!r}; "
                              f"raise the timeout or check the command") from None
        except BaseException:
            self._kill_group(proc)
            raise
        finally:
            os.close(w)
            with self._lock:
                self._running.discard(proc)
        return RunResult(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                         time.monotonic() - t0)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes], grace_s: float = 0.7) -> None:
        """TERM the command's process group (the benchmark wrapper then stops its program), KILL what is
        left after ``grace_s`` s."""
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kernel-stuck child
            pass

    def push(self, local: Path, remote: str, timeout: float, mode: int = 0o644) -> bool:
        """Copy ``local`` to ``remote`` atomically; return False (no copy) when the sha256 already matches."""
        src = Path(local)
        if not src.is_file():
            raise DeviceError(f"cannot push {src}: no such file")
        dst = Path(remote)
        try:
            if dst.is_file() and sha256_file(dst) == sha256_file(src):
                if (dst.stat().st_mode & 0o777) != mode:
                    os.chmod(dst, mode)
                return False
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.chmod(tmp, mode)
                os.replace(tmp, dst)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise DeviceError(f"cannot copy {src} to {dst}: {exc}") from None
        return True

    def pull(self, remote: str, local: Path, timeout: float) -> None:
        """Copy ``remote`` to ``local``."""
        try:
            Path(local).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise DeviceError(f"cannot copy {remote} to {local}: {exc}") from None

    def close(self) -> None:
        """Stop every command still running (from other threads); safe to call twice."""
        self._closed = True
        with self._lock:
            running = list(self._running)
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
