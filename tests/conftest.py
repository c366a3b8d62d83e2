"""Test-session isolation and shared fixtures.

Nothing the tests run writes into the real user's config or data dirs: the session fixture points
``XDG_DATA_HOME`` and ``EDGELR_LOCK_DIR`` at a temporary directory and pins the target profiles, and
restores the environment when the session ends. ``tf_keras`` (Keras 2, what edgelr builds and trains
with) and ``keras3`` (Keras 3, only for files Keras 3 saved) are the two Keras modules, never a
fixture called ``keras`` that means one or the other.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(Path(home) / "data"))
        mp.setenv("EDGELR_LOCK_DIR", str(Path(home) / "locks"))
        # the host profile's rank multiple depends on the machine (16 on x86-64, 8 on arm64): pin it
        mp.setenv("EDGELR_TARGETS", str(Path(__file__).parent / "fixtures" / "targets" / "pinned_host.toml"))
        yield


@pytest.fixture(scope="session")
def tf_keras() -> ModuleType:
    """``tf_keras`` (Keras 2): the Keras edgelr builds, trains, rewrites and quantizes models with."""
    from edgelr.tfcompat import keras2

    return keras2()


@pytest.fixture(scope="session")
def keras3() -> ModuleType:
    """Keras 3, for reading and writing files in its format."""
    from edgelr.tfcompat import keras3 as load_keras3

    return load_keras3()
