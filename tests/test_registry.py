"""device_agents.registry: the one registration pattern, and what each extension point holds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from device_agents.registry import Registry


def test_priority_order_registration_order_and_replacement() -> None:
    reg: Registry[str] = Registry("thing")
    reg.register("low", priority=-1)("L")
    reg.register("a")("A")
    reg.register("high", priority=5)("H")
    reg.register("b")("B")
    assert reg.names() == ["high", "a", "b", "low"] and list(reg) == reg.names()
    assert reg.values() == ["H", "A", "B", "L"] and reg.items()[0] == ("high", "H")
    reg.register("a", priority=9)("A2")  # a later registration under a name replaces the earlier one
    assert reg.names() == ["a", "high", "b", "low"] and reg["a"] == "A2" and len(reg) == 4


def test_dict_like_lookups_and_the_missing_name_message() -> None:
    reg: Registry[int] = Registry("energy probe")
    reg.add("rapl", 1)
    assert "rapl" in reg and "ina" not in reg and reg.get("ina") is None and reg.get("ina", 7) == 7
    with pytest.raises(KeyError, match="no energy probe named 'ina'; registered: rapl"):
        reg["ina"]
    assert reg.pop("rapl") == 1 and reg.pop("rapl", None) is None and len(reg) == 0
    with pytest.raises(ValueError, match="needs a non-empty name"):
        reg.add("", 2)
    with pytest.raises(ValueError, match="priority='x'; expected an integer"):
        reg.add("a", 2, priority="x")  # type: ignore[arg-type]


def test_name_attr_writes_the_registered_name_once() -> None:
    reg: Registry[type] = Registry("transport", name_attr="name")

    @reg.register("serialx")
    class Serial:
        name = "abstract"

    assert Serial.name == "serialx" and reg["serialx"] is Serial


def test_every_extension_point_holds_its_builtin_plugins() -> None:
    from device_agents.builtin import ENERGY_PROBES, THERMAL_PROBES, TRANSPORTS
    from edgelr.bench.harnesses import HARNESSES
    from edgelr.bench.parsers import LINE_PARSERS

    assert sorted(TRANSPORTS) == ["adb", "labgrid", "local", "ssh"]
    assert [c.name for c in TRANSPORTS.values()] == TRANSPORTS.names()
    assert ENERGY_PROBES.names() == ["rapl", "ina2xx", "pi5_pmic", "pixel_odpm", "android_battery"]
    assert THERMAL_PROBES.names() == ["thermal_zones", "vcgencmd"]
    assert sorted(HARNESSES) == ["android/benchmark_model", "linux/benchmark_model", "linux/runner"]
    assert all(h.key == k for k, h in HARNESSES.items())
    assert LINE_PARSERS.names()[:2] == ["stats_all_same", "stats"]
    assert LINE_PARSERS.names()[-1] == "edgelr_runner_json" and len(LINE_PARSERS) == 19
    assert {"op_profile_phase", "op_run_order_row"} <= set(LINE_PARSERS)


def test_device_agents_never_imports_the_bench_orchestration() -> None:
    """Layers point one way: the device side (every plugin loaded) imports nothing from edgelr.bench."""
    code = ("import sys, device_agents.inventory, device_agents.builtin, device_agents.procs, "
            "device_agents.files; print(sorted(m for m in sys.modules if m.startswith('edgelr.bench')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
