"""The per-device lock: one edgelr process measures a device at a time (``bench`` and ``regress``)."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from edgelr.errors import DeviceError


def lock_dir() -> Path:
    """Where device lock files live: ``$EDGELR_LOCK_DIR``, else ``~/.cache/edgelr/locks``."""
    env = os.environ.get("EDGELR_LOCK_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgelr" / "locks"
    return base.expanduser()


def lock_for(spec: Any, on_wait: Any = None, enabled: bool = True) -> Any:
    """The lock a measurement of ``spec`` (a DeviceSpec) holds: its :func:`device_lock`, or none when
    ``enabled`` is False (``--no-lock``) or its transport reserves the device itself (``Transport.reserves``:
    a labgrid place, which the coordinator keeps for one run at a time across hosts and waits for when busy)."""
    from contextlib import nullcontext

    from device_agents.transport import TRANSPORTS

    cls = TRANSPORTS.get(spec.transport)
    if not enabled or (cls is not None and cls.reserves):
        return nullcontext()
    return device_lock(spec.name, on_wait=on_wait)


@contextmanager
def device_lock(device: str, timeout_s: float = 3600.0, poll_s: float = 0.2,
                on_wait: Any = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``device`` (``flock`` on ``<lock_dir>/<device>.lock``).

    Any edgelr process benchmarking the device holds it, so two runs never share a device. Waits up to
    ``timeout_s`` seconds, then raises DeviceError. ``on_wait(msg)`` is told once when it has to wait.
    """
    d = lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in device)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    on_wait(f"device {device}: busy (lock {path}); waiting up to {timeout_s:.0f} s")
                    told = True
                if time.monotonic() > deadline:
                    raise DeviceError(f"device {device} stayed locked by another run for {timeout_s:.0f} s "
                                      f"({path}); try again later") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)   # closing the descriptor releases the flock
