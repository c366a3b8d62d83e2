"""Factorize many layers at once: one layer per worker thread, one BLAS thread per worker.

NumPy and LAPACK release the GIL, so plain threads run layers in parallel, while BLAS stays at one
thread (see :mod:`edgelr.factorize.blas` for why).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from edgelr.errors import FactorizeError
from edgelr.factorize.blas import single_blas_thread

T = TypeVar("T")
R = TypeVar("R")


def map_layers(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    desc: str | None = None,
) -> list[R]:
    """``[fn(item) for item in items]`` on ``workers`` threads, BLAS limited to one thread each.

    Parameters
    ----------
    fn
        Work for one layer, e.g. select ranks and decompose; must not share mutable state.
    items
        One entry per layer.
    workers
        Number of threads; ``None`` uses every core (``os.cpu_count()``), capped at ``len(items)``.
    desc
        If given, a tqdm progress bar with this label is shown on stderr.

    Returns
    -------
    list
        Results in the order of ``items``. The first exception raised by ``fn`` (in item order)
        propagates once the running calls finish.

    Raises
    ------
    FactorizeError
        ``workers`` is not a positive integer.
    """
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise FactorizeError(f"workers: got {workers!r}; expected an integer >= 1")
    workers = max(1, min(workers, len(items)))
    bar = None
    if desc is not None:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="layer", leave=False)

    def run(item: T) -> R:
        result = fn(item)
        if bar is not None:
            bar.update(1)
        return result

    try:
        with single_blas_thread():
            if workers == 1:
                return [run(item) for item in items]
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgelr-factorize") as pool:
                return list(pool.map(run, items))
    finally:
        if bar is not None:
            bar.close()
