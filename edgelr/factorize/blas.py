"""One BLAS thread while edgelr.factorize computes.

The decompositions are dominated by LAPACK tridiagonal reductions of small Gram matrices, which are
memory-bound and gain little from a second BLAS thread; OpenBLAS threads spin-wait, and on a shared
2-core machine (load ~9) they made the ResNet-50 benchmark 10x slower in wall time and CPU time
(21 s of CPU instead of 2.2 s). Every public function of this package therefore runs with BLAS
limited to one thread and restores the previous setting on return; use
:func:`edgelr.factorize.map_layers` to use several cores (one layer per worker).

The limit is process-wide (BLAS has no per-thread setting): nested and concurrent calls are counted
so that the first one in sets it and the last one out restores it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import scipy.linalg  # noqa: F401 - load scipy's own OpenBLAS before threadpoolctl looks for libraries

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_depth = 0
_limiter: Any = None
_controller: Any = None


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """Context in which every loaded BLAS library (NumPy's and SciPy's OpenBLAS) uses one thread."""
    global _depth, _limiter, _controller
    with _lock:
        if _depth == 0:
            if _controller is None:
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController()
            _limiter = _controller.limit(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


def one_blas_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run ``fn`` inside :func:`single_blas_thread`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with single_blas_thread():
            return fn(*args, **kwargs)

    return wrapper
