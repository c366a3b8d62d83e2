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
    # the host profile's rank multiple depends on the machine (16 on x86-64, 8 on arm64): pin it
    os.environ["EDGELR_TARGETS"] = str(Path(__file__).parent / "fixtures" / "targets" / "pinned_host.toml")
