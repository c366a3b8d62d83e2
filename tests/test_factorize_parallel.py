"""map_layers runs per-layer work in order on worker threads with one BLAS thread; limits are restored."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from edgelr.errors import FactorizeError
from edgelr.factorize import map_layers, truncated_svd, tucker2


def blas_threads() -> list[int]:
    return [int(info["num_threads"]) for info in threadpool_info() if info["user_api"] == "blas"]


def test_map_layers_keeps_order_and_matches_serial_results() -> None:
    rng = np.random.default_rng(0)
    kernels = [rng.standard_normal((3, 3, 8 + i, 12)) for i in range(6)]
    serial = [tucker2(k, (4, 5)).rel_error for k in kernels]
    names: set[str] = set()

    def work(k: np.ndarray) -> float:
        names.add(threading.current_thread().name)
        assert set(blas_threads()) == {1}
        return tucker2(k, (4, 5)).rel_error

    assert map_layers(work, kernels, workers=2) == pytest.approx(serial, rel=1e-12)
    assert all(name.startswith("edgelr-factorize") for name in names)


def test_blas_thread_limit_is_restored_after_calls() -> None:
    before = blas_threads()
    truncated_svd(np.ones((20, 30)), 3)
    map_layers(lambda m: truncated_svd(m, 2).rank, [np.eye(5)] * 4, workers=2)
    assert blas_threads() == before


def test_map_layers_propagates_the_first_error_and_rejects_bad_workers() -> None:
    items = [np.ones((4, 4)), np.ones((4, 4)), np.full((4, 4), np.nan)]
    with pytest.raises(FactorizeError, match="NaN or Inf"):
        map_layers(lambda m: truncated_svd(m, 2), items, workers=2)
    with pytest.raises(FactorizeError, match="workers: got 0"):
        map_layers(lambda m: m, items, workers=0)
    assert map_layers(lambda m: m, [], workers=2) == []
