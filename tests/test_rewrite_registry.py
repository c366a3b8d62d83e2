"""The rewriter registry: one decorator with explicit priorities; the CLI choices, the method check and the
messages all read it, so a new rewriter is offered everywhere once its module is registered."""

from __future__ import annotations

from typing import Any

import pytest

from edgelr.errors import FactorizeError
from edgelr.rewrite import registry
from edgelr.rewrite.registry import (
    Rewriter,
    applicable_methods,
    get_rewriter,
    methods,
    register_rewriter,
    rewriters,
    supported_layers,
)

BUILTIN = {"svd", "svd-recurrent", "tensor3", "tucker2", "cp", "spatial-svd"}


class DepthwiseConv2D:
    """A stand-in layer: rewriters decide ``supports`` from the layer's type and config."""

    name = "dw"


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations in a test go to a copy of the registry, dropped afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", list(registry._REGISTRY))


def _rewriter(layer_type: str) -> type[Rewriter]:
    class Fake(Rewriter):
        layers = (layer_type,)

        def supports(self, layer: Any) -> bool:
            return type(layer).__name__ == layer_type

    return Fake


def test_builtin_rewriters_and_cli_choices_come_from_the_registry() -> None:
    from edgelr.cli.compress import METHOD_CHOICES, compress

    assert set(methods()) == BUILTIN and len(methods()) == len(BUILTIN)
    assert METHOD_CHOICES == ["auto", *methods()]
    option = next(p for p in compress.params if p.name == "method")
    assert list(option.type.choices) == METHOD_CHOICES
    assert {"Dense", "Conv1D", "SeparableConv2D", "Embedding", "LSTM", "GRU"} <= set(supported_layers())
    assert all(r.layers for r in rewriters())


def test_reading_the_registry_does_not_import_tensorflow() -> None:
    """``edgelr compress --help`` builds its --method choices from the registry without TensorFlow."""
    import subprocess
    import sys

    code = "import sys, edgelr.cli.compress; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_a_registered_rewriter_is_offered_everywhere(scratch_registry: None) -> None:
    from edgelr.rewrite.options import plan_options

    register_rewriter("depthwise-svd")(_rewriter("DepthwiseConv2D"))
    assert "depthwise-svd" in methods()
    assert applicable_methods(DepthwiseConv2D()) == ["depthwise-svd"]
    assert get_rewriter(DepthwiseConv2D(), "auto").method == "depthwise-svd"
    assert "DepthwiseConv2D" in supported_layers()
    assert plan_options(method="depthwise-svd").method == "depthwise-svd"
    with pytest.raises(FactorizeError, match="'depthwise-svd'"):  # the method check lists it as a choice
        plan_options(method="no-such-method")


def test_priority_decides_between_rewriters_of_the_same_layer(scratch_registry: None) -> None:
    register_rewriter("dw-low", priority=5)(_rewriter("DepthwiseConv2D"))
    register_rewriter("dw-high", priority=50)(_rewriter("DepthwiseConv2D"))
    assert applicable_methods(DepthwiseConv2D()) == ["dw-high", "dw-low"]
    assert get_rewriter(DepthwiseConv2D(), "auto").method == "dw-high"
    assert get_rewriter(DepthwiseConv2D(), "dw-low").method == "dw-low"


def test_builtin_preferences() -> None:
    """The explicit priorities keep edgelr's preferences: tucker2 > cp > spatial-svd on k x k convs,
    stock-cell svd > svd-recurrent on LSTM/GRU; svd-recurrent falls back to svd."""
    order = [r.method for r in rewriters()]
    assert order.index("tucker2") < order.index("cp") < order.index("spatial-svd")
    assert order.index("svd") < order.index("svd-recurrent")
    assert registry.fallback_of("svd-recurrent") == "svd" and registry.fallback_of("tucker2") is None


def test_register_refuses_auto_and_a_rewriter_naming_no_layers(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="'auto'"):
        register_rewriter("auto")
    with pytest.raises(ValueError, match="names no layers"):
        register_rewriter("nameless")(Rewriter)
