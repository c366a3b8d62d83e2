"""Harnesses: how one OS/tool combination runs a benchmark program on a device (see :mod:`.base`).

This is the one module that imports the harness modules; importing one registers its harnesses in
:data:`~edgelr.bench.harnesses.base.HARNESSES` (``@HARNESSES.register("<os>/<tool>")``). Adding a harness
is one module plus one import line below.
"""

from __future__ import annotations

from device_agents.inventory import DeviceSpec
from edgelr.bench.harnesses import android, linux  # noqa: F401  (registers the harnesses)
from edgelr.bench.harnesses.base import HARNESSES, Harness, HarnessOutput, ProgramInfo
from edgelr.errors import BenchmarkError

__all__ = ["HARNESSES", "Harness", "HarnessOutput", "ProgramInfo", "harness_key", "select_harness"]


def harness_key(device: DeviceSpec) -> str:
    """``<os>/benchmark_model`` when the device names a benchmark binary, else ``<os>/runner``."""
    return f"{device.os}/{'benchmark_model' if device.benchmark_binary else 'runner'}"


def select_harness(device: DeviceSpec) -> Harness:
    """The registered harness for ``device``.

    Without ``benchmark_binary`` the ``<os>/runner`` harness is preferred and ``<os>/benchmark_model`` taken
    when the OS has no runner harness (Android: the harness finds or pushes the binary itself).

    Raises
    ------
    BenchmarkError
        No registered harness fits; the message lists the registered ones.
    """
    key = harness_key(device)
    keys = [key] if key.endswith("/benchmark_model") else [key, f"{device.os}/benchmark_model"]
    for k in keys:
        if k in HARNESSES:
            return HARNESSES[k](device)
    hint = ("set benchmark_binary to a LiteRT benchmark_model on the device"
            if key.endswith("/runner") else "drop benchmark_binary to use edgelr's runner.py")
    raise BenchmarkError(f"device '{device.name}' needs a '{key}' harness, which this edgelr does not have "
                         f"(available: {', '.join(sorted(HARNESSES))}); {hint}")
