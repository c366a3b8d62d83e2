"""The sha256 of a local file: one helper for the transports' push skip, the bench and the history.

Standard library only.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

_CHUNK = 1 << 20
_CACHE: dict[tuple[int, int, int, int], str] = {}
_CACHE_MAX = 256


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (never the whole file at once)."""
    with open(path, "rb") as fh:
        return _sha256_stream(fh)


def sha256_cached(fh: BinaryIO) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of an open file, cached by (device, inode, size, mtime_ns).

    Leaves ``fh`` at offset 0. The cache spares re-hashing a model every time it is pushed.
    """
    st = os.fstat(fh.fileno())
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _CACHE.get(key)
    if digest is None:
        fh.seek(0)
        digest = _sha256_stream(fh)
        if len(_CACHE) > _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = digest
    fh.seek(0)
    return digest, st.st_size


def _sha256_stream(fh: BinaryIO) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(_CHUNK), b""):
        h.update(block)
    return h.hexdigest()
