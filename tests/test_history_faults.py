"""A history that cannot take a run loses nothing: disk full, read-only media and a damaged store, each made
real (a small tmpfs filled up, a tmpfs remounted read-only, pages overwritten), with a real `edgelr bench`
of the shipped noise-probe model on the local device.

Mounting needs root (CI runs as root); elsewhere these tests skip and say so.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

from tests.local_device import write_local_inventory

from edgelr.report import history as H

PY = sys.executable
MODEL = Path(__file__).resolve().parents[1] / "edgelr" / "data" / "noise_probe.tflite"


def _edgelr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from edgelr.cli.main import main; sys.argv = ['edgelr', *sys.argv[1:]]; main()"
    return subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **(env or {})})


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "media"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture()
def inventory(tmp_path: Path) -> Path:
    return write_local_inventory(tmp_path / "inventory.toml", "box")


def _frame(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"device": "box", "model": "m", "metric": "latency", "value": [1.0 + i / 100 for i in range(n)],
                         "repeat": [i // 10 for i in range(n)], "sample": [i % 10 for i in range(n)]})


def _bench(history: Path, inventory: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return _edgelr("bench", f"probe={MODEL}", "--device", "box", "--inventory", str(inventory), "--sessions", "2",
                   "--runs", "5", "--warmup", "1", "--no-lock", "--history", str(history),
                   env={"XDG_STATE_HOME": str(tmp_path / "state")})


def _spooled(stderr: str) -> pd.DataFrame:
    line = next(ln for ln in stderr.splitlines() if "measured rows are kept in" in ln)
    path = Path(line.rsplit("kept in ", 1)[1].strip())
    assert path.is_file(), line
    return pd.read_csv(path)


@pytest.mark.timeout(240)
def test_full_disk_prints_the_summary_spools_the_rows_and_names_the_real_cause(tmpfs: Path, inventory: Path,
                                                                               tmp_path: Path) -> None:
    hist = tmpfs / "hist"
    H.append_run(_frame(), hist)
    filler = tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the medium to the last block
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    res = _bench(hist, inventory, tmp_path)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "probe" in res.stdout and "Traceback" not in res.stderr  # the summary still printed
    assert "disk holding it is full" in res.stderr and "cannot rollback" not in res.stderr, res.stderr
    rows = _spooled(res.stderr)
    assert set(rows["model"]) == {"probe"} and (rows["metric"] == "latency").sum() == 2 * 5
    filler.unlink()  # space again: the store is intact and holds only the first run
    assert len(H.runs(hist)) == 1 and len(H.load(hist)) == 40


@pytest.mark.timeout(240)
def test_read_only_media_report_reads_and_bench_spools(tmpfs: Path, inventory: Path, tmp_path: Path) -> None:
    hist = tmpfs / "hist"
    H.append_run(_frame(), hist)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    out = tmp_path / "report.md"
    rep = _edgelr("report", str(hist), "--md", str(out))
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert out.is_file() and not (tmpfs / "hist" / "history.sqlite-shm").exists()
    res = _bench(hist, inventory, tmp_path)
    assert res.returncode == 1 and "probe" in res.stdout
    assert "mounted read-only" in res.stderr and "Traceback" not in res.stderr
    assert len(_spooled(res.stderr)) > 0


@pytest.mark.timeout(240)
def test_damaged_store_one_line_no_write_rows_spooled(tmp_path: Path, inventory: Path) -> None:
    hist = tmp_path / "hist"
    H.append_run(_frame(3000), hist)
    db = H.store_path(hist)
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    size = db.stat().st_size
    with open(db, "r+b") as fh:  # overwrite the middle of some b-tree pages, keep the header
        for off in range(4096 * 3, size, 4096 * 5):
            fh.seek(off + 100)
            fh.write(bytes(range(256)) * 8)
    before = hashlib.sha256(db.read_bytes()).hexdigest()

    rep = _edgelr("report", str(hist))
    assert rep.returncode == 1
    (line,) = rep.stderr.strip().splitlines()
    assert "is damaged" in line and "SELECT" not in line

    res = _bench(hist, inventory, tmp_path)
    assert res.returncode == 1 and "probe" in res.stdout
    errs = [ln for ln in res.stderr.splitlines() if ln.startswith("edgelr:")]
    assert len(errs) == 1 and "is damaged" in errs[0] and "nothing was written" in errs[0]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert len(_spooled(res.stderr)) > 0
