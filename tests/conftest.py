"""Test-session isolation: nothing the tests run writes into the real user's config or data dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("xdg")
    os.environ["XDG_DATA_HOME"] = str(Path(home) / "data")
    os.environ["EDGELR_LOCK_DIR"] = str(Path(home) / "locks")
