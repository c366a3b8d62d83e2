"""A factorized model written by edgelr (low-rank LSTM cell included) loads back with edgelr.load_model
in a fresh process, with the same outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.mark.timeout(300)
def test_low_rank_lstm_file_loads_in_a_fresh_process(tmp_path: Path) -> None:
    import edgelr
    from edgelr.tfcompat import keras2

    k = keras2()
    k.utils.set_random_seed(0)
    m = k.Sequential([k.layers.Input((10, 8), batch_size=1), k.layers.LSTM(32, name="lstm"), k.layers.Dense(3)])
    fm, rep = edgelr.factorize_model(m, method="svd-recurrent", rank_policy="rank:8", min_reduction=0.0,
                                     progress=False)
    assert rep.set_index("layer").loc["lstm", "method"] == "svd-recurrent"
    path = tmp_path / "lr.keras"
    fm.save(path)
    x = np.random.default_rng(0).standard_normal((1, 10, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", fm.predict(x, verbose=0))
    code = ("import sys, numpy as np, edgelr\n"
            "d = sys.argv[1]\n"
            "m = edgelr.load_model(d + '/lr.keras')\n"
            "y = m.predict(np.load(d + '/x.npy'), verbose=0)\n"
            "print(float(np.abs(y - np.load(d + '/y.npy')).max()))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-6
